"""Fused CPU kernels of SGD and Adam with Gradient Centralization
(``fused=True``).

Yong et al., "Gradient Centralization: A New Optimization Technique for Deep
Neural Networks", ECCV 2020 (arXiv:2004.01461).

:func:`~mmdet_gc.optim.sgd.fused_sgd_gc` updates every centralized CPU
parameter in one call of a C++ kernel (``csrc/sgd_gc_fused.cpp``, parallel over
weight rows): per row, one pass reads the gradient and the parameter and sums
the decayed gradient, and a second one, from cache, writes the new momentum
buffer and the new parameter; memory sees five passes instead of the eleven or
so of the Python kernels. Its arithmetic rounds as
:func:`mmdet_gc.optim.sgd._single_tensor_sgd_gc` does, except for the last bits
of each row mean, and does not depend on the thread count; the state stays
``momentum_buffer``, so a state dict moves freely between the fused, the
foreach and the single-tensor kernels.

:func:`~mmdet_gc.optim.adam.fused_adam_gc` does the same for Adam / AdamW with
GC on the gradient or on the update (``csrc/adam_gc_fused.cpp``): memory sees
the gradient, the parameter and each moment about once; it rounds as
:func:`mmdet_gc.optim.adam._single_tensor_adam_gc2` and torch's single-tensor
Adam do, but for the last bits of each row mean; the state keeps
torch.optim.Adam's keys and float ``step`` tensors.

Both kernels are one extension, compiled with
:func:`torch.utils.cpp_extension.load` on first use and cached under
``TORCH_EXTENSIONS_DIR`` (torch's default: ``~/.cache/torch_extensions``);
its name carries a hash of the sources (``csrc/gc_fused_common.h``
included), the compiler flags and the torch version, so a stale build is
never loaded. Nothing is downloaded. Where it cannot be built (no
compiler, no ninja, or ``MMDET_GC_NO_BUILD=1``), one line is logged and
``fused=True`` runs the single-tensor Python kernels instead, with the
same results as ``fused=False, foreach=False``.
"""
import hashlib
import logging
import math
import os
import platform
import threading
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import torch
from torch import Tensor

from .gc import partition

#: Set to ``1`` to never build or load the kernel (``fused=True`` then
#: falls back to the Python kernels).
NO_BUILD_ENV = 'MMDET_GC_NO_BUILD'

_CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'csrc')

_SOURCES = [
    os.path.join(_CSRC, name)
    for name in ('sgd_gc_fused.cpp', 'adam_gc_fused.cpp',
                 'update_gc_fused.cpp')
]

# Included by the sources: hashed with them, so that an edit rebuilds.
_HEADERS = [os.path.join(_CSRC, 'gc_fused_common.h')]

_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

# The loaded module, or why there is none; filled once per process.
_state: Dict[str, Any] = dict(tried=False, module=None, reason=None)

# The reasons already logged (one line each per process).
_logged: Set[Tuple[str, str]] = set()

_lock = threading.Lock()


def _cflags() -> List[str]:
    """Compiler flags: -O3, no implicit FMA, OpenMP (``at::parallel_for``
    is inline: without it the kernel runs on one thread), and AVX2 / FMA /
    F16C where torch itself runs its AVX2 or AVX-512 kernels on this CPU.
    """
    if os.name == 'nt':  # MSVC
        return ['/O2', '/fp:precise', '/openmp']
    # -fno-math-errno lets sqrt vectorize; it changes no result.
    flags = ['-O3', '-ffp-contract=off', '-fno-math-errno', '-fopenmp']
    machine = platform.machine().lower()
    if machine in ('x86_64', 'amd64') and \
            torch.backends.cpu.get_cpu_capability() in ('AVX2', 'AVX512'):
        flags += ['-mavx2', '-mfma', '-mf16c']
    return flags


def _ldflags() -> List[str]:
    # The OpenMP runtime resolves to the one torch has loaded (same soname).
    return [] if os.name == 'nt' else ['-fopenmp']


def extension_name() -> str:
    """The name the kernel is built and cached under.

    It ends in a hash of the sources (headers included), the compiler
    flags and the torch version, so an edit, another instruction set or
    another torch gets a build of its own.

    Returns:
        str: E.g. ``'mmdet_gc_fused_0123456789ab'``.
    """
    digest = hashlib.sha256()
    for source in _SOURCES + _HEADERS:
        with open(source, 'rb') as f:
            digest.update(f.read())
    digest.update(' '.join(_cflags() + _ldflags()).encode())
    digest.update(torch.__version__.encode())
    return f'mmdet_gc_fused_{digest.hexdigest()[:12]}'


def _one_line(exc: BaseException) -> str:
    """A short, single-line reason for a failed build."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    if len(text) > 160:
        text = text[:157] + '...'
    for ln in lines[1:]:
        low = ln.lower()
        if 'error' in low or 'not found' in low:
            text += ' | ' + (ln if len(ln) <= 160 else ln[:157] + '...')
            break
    return f'{type(exc).__name__}: {text}'


def _build() -> Any:
    from torch.utils.cpp_extension import load

    # torch logs its own compiler warnings; a failure is reported in one
    # line by the caller instead.
    torch_log = logging.getLogger('torch.utils.cpp_extension')
    level = torch_log.level
    torch_log.setLevel(logging.ERROR)
    try:
        return load(
            name=extension_name(),
            sources=_SOURCES,
            extra_include_paths=[_CSRC],
            extra_cflags=_cflags(),
            extra_ldflags=_ldflags(),
            verbose=False)
    finally:
        torch_log.setLevel(level)


def _module() -> Optional[Any]:
    """The compiled module (built on the first call), or None."""
    if os.environ.get(NO_BUILD_ENV, '0') not in ('', '0'):
        return None
    if not _state['tried']:
        with _lock:
            if not _state['tried']:
                try:
                    _state['module'] = _build()
                except Exception as exc:  # no compiler, no ninja, ...
                    _state['reason'] = _one_line(exc)
                _state['tried'] = True
    return _state['module']


def fused_unavailable_reason() -> Optional[str]:
    """Why the fused kernel cannot run here, or None when it can.

    Builds the kernel on the first call (see :func:`fused_available`).

    Returns:
        str | None: The reason, e.g. that ``MMDET_GC_NO_BUILD`` is set or
        the compiler's first error.
    """
    if os.environ.get(NO_BUILD_ENV, '0') not in ('', '0'):
        return f'{NO_BUILD_ENV} is set'
    if _module() is None:
        return _state['reason']
    return None


def fused_available() -> bool:
    """Whether ``fused=True`` runs the compiled kernel in this process.

    The first call compiles the kernel (tens of seconds) unless a build of
    the same source, flags and torch version is cached.

    Returns:
        bool: True when the kernel is loaded.
    """
    return fused_unavailable_reason() is None


def module_or_log(what: str, fallback: str) -> Optional[Any]:
    """The compiled module for CPU tensors, or None, with one line per
    reason and process that says ``what`` runs ``fallback`` instead."""
    module = _module()
    if module is None:
        _log_once(fused_unavailable_reason() or 'not built', fallback, what)
    return module


def _log_once(reason: str, fallback: str, what: str = 'fused=True') -> None:
    if (reason, what) in _logged:
        return
    _logged.add((reason, what))
    from mmengine.logging import print_log
    print_log(
        f'mmdet_gc: fused GC kernels unavailable ({reason}); '
        f'{what} runs {fallback} instead',
        logger='current',
        level=logging.WARNING)


def _module_for(params: Sequence[Tensor]) -> Tuple[Optional[Any], bool]:
    """The compiled module for a step over ``params`` and whether they are
    all on the CPU. Without a module (no build, or tensors elsewhere) one
    line per reason and process says what runs instead: the single-tensor
    Python kernels on the CPU, the foreach kernels on other devices."""
    on_cpu = all(p.device.type == 'cpu' for p in params)
    module = _module() if on_cpu else None
    if module is None:
        if on_cpu:
            _log_once(fused_unavailable_reason() or 'not built',
                      'the single-tensor Python kernels')
        else:
            devices = sorted({p.device.type for p in params} - {'cpu'})
            _log_once(
                f'parameters on {", ".join(devices)}: it runs on CPU '
                'tensors only', 'the foreach kernels')
    return module, on_cpu


#: What a state entry that is no tensor (e.g. a number loaded into
#: ``momentum_buffer``) counts as: a tensor no kernel takes, so that the
#: specification handles it (and says what is wrong).
_NOT_A_TENSOR = torch.empty(0, dtype=torch.bool)


def _tensors(values: Sequence[Any]) -> List[Optional[Tensor]]:
    """``values`` for the compiled checks: tensors and None as they are,
    anything else as :data:`_NOT_A_TENSOR`."""
    return [
        v if v is None or isinstance(v, Tensor) else _NOT_A_TENSOR
        for v in values
    ]


def _shares_written_memory(module: Any, written: Sequence[Optional[Tensor]],
                           read: Sequence[Tensor]) -> bool:
    """Whether a tensor the step writes (``written``: parameters and state)
    overlaps the memory of any other tensor of the step (``written`` or
    ``read``: the gradients); one call of the compiled module.

    The kernels read each row before they write it and update the rows of
    all parameters in parallel, the specification one tensor after the
    other; where tensors share memory (a gradient that is its parameter or
    another one, views of one tensor) the order matters, so such a step
    runs the specification. Tensors that are only read, or that share a
    storage without overlapping (DDP's bucket views), do not count; a
    contiguous tensor spans its bytes, any other its whole storage.
    """
    return module.shares_written_memory(_tensors(written), _tensors(read))


def _half_safe(*values: float) -> bool:
    """Whether every hyper-parameter value fits float16: a kernel rounds
    its scalars to a float16 tensor's dtype where ATen does, and ATen
    refuses one that overflows; the specification then says so."""
    return all(
        abs(v) <= torch.finfo(torch.float16).max for v in values
        if math.isfinite(v))


def _reads_as_values(t: Any) -> bool:
    """Whether a fused kernel may take the memory of ``t`` (a tensor) for
    its values.

    The kernels, ours and torch's fused CPU SGD / Adam alike, walk a
    tensor's memory from ``data_ptr()`` in row-major order: they need it
    contiguous (torch 2.13's read a transposed, strided or expanded tensor
    in the wrong order) and without the negative or conjugate bit, which
    only ATen's ops apply (a ``torch._neg_view``, kept by ``torch.load``
    and ``load_state_dict``, would be read negated; torch's kernels refuse
    it). Any other tensor takes the specification, which steps it as the
    plain tensor of its values.
    """
    return (torch.is_tensor(t) and t.layout == torch.strided
            and t.is_contiguous() and not t.is_neg() and not t.is_conj())


def _fused_takes(module: Any, params: Sequence[Tensor], *others:
                 Sequence[Optional[Tensor]]) -> List[bool]:
    """Per parameter, whether a fused kernel may take it with its tensors
    in ``others`` (its gradient and state; None: made by the kernel): every
    one reads as values (:func:`_reads_as_values`), with the shape, dtype
    and device of the parameter. One call of the compiled module for the
    whole step. Memory they share: :func:`_shares_written_memory`."""
    return module.fused_takes(list(params), [_tensors(o) for o in others])


def _kernel_takes(p: Tensor, takes: bool) -> bool:
    """Whether a C++ kernel handles this centralized tensor: of a supported
    dtype, with rows, and taken with its gradient and state
    (``takes``: :func:`_fused_takes`)."""
    return takes and p.dtype in _DTYPES and p.dim() >= 2 and p.numel() > 0


def _torch_fused_takes(p: Tensor, takes: bool) -> bool:
    """Whether torch's fused SGD kernel handles this plain tensor, taken
    with its gradient and buffer (``takes``: :func:`_fused_takes`).

    float32 / float64 only: torch 2.13's CPU kernel leaves float16 and
    bfloat16 parameters unchanged (but for a few tail elements), so those
    take torch's single-tensor kernel.
    """
    return takes and p.dtype in (torch.float32, torch.float64)


def _mul_(tensors: List[Tensor], scale: float) -> None:
    """``t *= scale`` for each tensor (SGDW's decay): one foreach call for
    those that read as values; torch's foreach ops refuse a negative or
    conjugate bit in a list they write, so the others take ``mul_``."""
    (_, (plain, )), (_, (others, )) = partition(
        [_reads_as_values(t) for t in tensors], tensors)
    if plain:
        torch._foreach_mul_(plain, scale)
    for t in others:
        t.mul_(scale)


def _take(lst: Sequence, idx: Sequence[int]) -> list:
    return [lst[i] for i in idx]


def _adam_kernel_takes(p: Tensor, takes: bool, step: Any) -> bool:
    """:func:`_kernel_takes` with the moments as state, and a float CPU
    step count that reads as values."""
    return (_kernel_takes(p, takes) and _reads_as_values(step)
            and step.device.type == 'cpu' and step.numel() == 1
            and step.dtype in (torch.float32, torch.float64))


def _torch_fused_adam_takes(p: Tensor, takes: bool, step: Any) -> bool:
    """Whether torch's fused Adam kernel handles this plain tensor, taken
    with its gradient and moments (``takes``: :func:`_fused_takes`), with a
    step count that reads as values; real floating dtypes: torch 2.13's CPU
    kernel updates all four correctly."""
    return takes and p.dtype in _DTYPES and _reads_as_values(step)


def use_fused(fused: Optional[bool], foreach: Optional[bool]) -> bool:
    """Whether to run the compiled kernel (this module); it is
    opt-in, and exclusive with ``foreach`` as torch's fused kernels are."""
    if fused and foreach:
        raise ValueError('`fused` and `foreach` cannot be `True` together')
    return bool(fused)
