"""The fused step (``fused=True``): building our compiled CPU kernels,
choosing a fused step's kernel (:func:`fused_kernel`) and each
parameter's (:func:`route`, the one eligibility rule).

On CUDA (and wherever a GradScaler passes ``grad_scale`` / ``found_inf``)
a fused step runs torch's own fused kernels of the family on centralized
gradients; on the CPU, our compiled kernels:

:func:`~mmdet_gc.optim.sgd._fused_sgd_gc` updates every centralized CPU
parameter in one call of a C++ kernel (``csrc/sgd_gc_fused.cpp``, parallel over
weight rows): per row, one pass reads the gradient and the parameter and sums
the decayed gradient, and a second one, from cache, writes the new momentum
buffer and the new parameter; memory sees five passes instead of the eleven or
so of the Python kernels. Its arithmetic rounds as
:func:`mmdet_gc.optim.sgd._single_tensor_sgd_gc` does, except for the last bits
of each row mean, and does not depend on the thread count; the state stays
``momentum_buffer``, so a state dict moves freely between the fused, the
foreach and the single-tensor kernels.

:func:`~mmdet_gc.optim.adam._fused_adam_gc` does the same for Adam / AdamW with
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

from ..utils.messages import first_line
from .gc import centralized_grads, cuda_paths_on_cpu, grad_copies, take

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


def _build_failure(exc: BaseException) -> str:
    """A failed build in one line: the exception's first line and the
    compiler's first error line."""
    text = first_line(exc, limit=160)
    for ln in str(exc).strip().splitlines()[1:]:
        if 'error' in ln.lower() or 'not found' in ln.lower():
            return f'{text} | {first_line(Exception(ln), False, 160)}'
    return text


def _build() -> Any:
    from mmengine.logging import print_log
    from torch.utils.cpp_extension import _get_build_directory, load

    name = extension_name()
    folder = _get_build_directory(name, verbose=False)
    if not os.path.exists(os.path.join(folder, f'{name}.so')):
        # The first step waits for the compiler: say so, once.
        print_log(
            'mmdet_gc: compiling the fused GC kernels for fused=True (once: '
            f'about half a minute; cached in {folder})',
            logger='current',
            level=logging.INFO)
    # torch logs its own compiler warnings; a failure is reported in one
    # line by the caller instead.
    torch_log = logging.getLogger('torch.utils.cpp_extension')
    level = torch_log.level
    torch_log.setLevel(logging.ERROR)
    try:
        return load(
            name=name,
            sources=_SOURCES,
            extra_include_paths=[_CSRC],
            extra_cflags=_cflags(),
            extra_ldflags=_ldflags(),
            verbose=False)
    finally:
        torch_log.setLevel(level)


def module() -> Optional[Any]:
    """The compiled module (built on the first call), or None."""
    if os.environ.get(NO_BUILD_ENV, '0') not in ('', '0'):
        return None
    if not _state['tried']:
        with _lock:
            if not _state['tried']:
                try:
                    _state['module'] = _build()
                except Exception as exc:  # no compiler, no ninja, ...
                    _state['reason'] = _build_failure(exc)
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
    if module() is None:
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
    built = module()
    if built is None:
        log_once(fused_unavailable_reason() or 'not built', fallback, what)
    return built


def log_once(reason: str,
             fallback: str,
             what: str = 'fused=True',
             unavailable: bool = True) -> None:
    """One warning per reason and process: ``what`` runs ``fallback``
    instead, because the fused GC kernels are unavailable (``reason``) or,
    with ``unavailable=False``, because of ``reason``."""
    if (reason, what) in _logged:
        return
    _logged.add((reason, what))
    from mmengine.logging import print_log
    why = f'fused GC kernels unavailable ({reason})' if unavailable else \
        reason
    print_log(
        f'mmdet_gc: {why}; {what} runs {fallback} instead',
        logger='current',
        level=logging.WARNING)


def fused_kernel(params: Sequence[Tensor],
                 grad_scale: Optional[Tensor] = None,
                 found_inf: Optional[Tensor] = None) -> str:
    """Which kernel a fused step (``fused=True``) over ``params`` runs.

    Args:
        params (Sequence[Tensor]): The step's parameters.
        grad_scale (Tensor, optional): A GradScaler's scale, to unscale by
            inside the kernel.
        found_inf (Tensor, optional): A GradScaler's inf flag, to skip on
            inside the kernel.

    Returns:
        str: ``'gc'``: our compiled kernel (CPU tensors, no GradScaler
        tensors, the extension built); ``'torch'``: torch's own fused
        kernel of the family on centralized gradients (other devices, a
        GradScaler's tensors, which only torch's kernels take, or
        ``MMDET_GC_CUDA_PATHS=1``); ``'spec'``: the single-tensor kernel
        (CPU tensors and no extension: one line is logged).
    """
    on_cpu = all(p.device.type == 'cpu' for p in params)
    if not on_cpu or grad_scale is not None or found_inf is not None or \
            cuda_paths_on_cpu():
        return 'torch'
    if module() is None:
        log_once(fused_unavailable_reason() or 'not built',
                 'the single-tensor Python kernels')
        return 'spec'
    return 'gc'


#: torch's fused kernels by family: the devices (torch's own list) and the
#: dtypes each steps correctly. torch 2.13's CPU SGD kernel leaves float16
#: and bfloat16 parameters unchanged (but for a few tail elements), so
#: those take the single-tensor kernel there; its Adagrad kernel is CPU
#: only.
_TORCH_FUSED = {
    'sgd': {
        'cpu': (torch.float32, torch.float64),
        None: _DTYPES
    },
    'adam': {
        None: _DTYPES
    },
    'adagrad': {
        'cpu': _DTYPES
    },
}


def _torch_fused_dtypes(family: str, device: torch.device) -> tuple:
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    table = _TORCH_FUSED[family]
    if device.type in table:
        return table[device.type]
    if None in table and \
            device.type in _get_fused_kernels_supported_devices():
        return table[None]
    return ()


def route(family: str,
          kernel: str,
          params: Sequence[Tensor],
          states: Sequence[Sequence[Any]] = (),
          centralized: Optional[Sequence[bool]] = None,
          scalars: Sequence[float] = (),
          steps: Optional[Sequence[Any]] = None) -> List[str]:
    """Per parameter, the kernel that steps it in a fused step: the one
    eligibility rule of every fused path.

    A parameter goes to a fused kernel only where it and its tensors
    (``states``: its gradient, momentum buffer or moments; None: made by
    the kernel) read as values (contiguous, without the negative or
    conjugate bit: the kernels walk memory from ``data_ptr()``), with the
    parameter's shape, dtype and device, and share no written memory with
    another tensor of the step (checked by the caller,
    :func:`shares_written_memory`).

    Args:
        family (str): ``'sgd'``, ``'adam'``, ``'adagrad'`` or ``'update'``
            (GC on the update of any optimizer: parameters only).
        kernel (str): What :func:`fused_kernel` chose, ``'gc'`` or
            ``'torch'``.
        params (Sequence[Tensor]): The parameters.
        states (Sequence[Sequence]): Per state list, one entry per
            parameter.
        centralized (Sequence[bool], optional): Whether GC applies to
            each parameter (default: all).
        scalars (Sequence[float]): The hyper-parameters our kernel rounds
            to a float16 parameter's dtype (a value beyond float16's range
            sends it to the specification, which says what is wrong).
        steps (Sequence, optional): Adam's step counts: CPU float scalars
            that read as values.

    Returns:
        list[str]: ``'gc'`` (our compiled kernel), ``'torch'`` (torch's
        fused kernel of the family; with ``kernel='torch'`` centralized
        parameters too, on centralized gradients) or ``'spec'`` (the
        single-tensor kernel).
    """
    centralized = [True] * len(params) if centralized is None else \
        centralized
    if kernel == 'gc':
        takes = module().fused_takes(
            list(params), [_tensors(s) for s in states])
    else:
        # The parameter itself too: a channels_last weight with a
        # contiguous gradient would be read in the wrong order.
        takes = [
            _reads_as_values(p) and all(
                _reads_as_values(t) and t.shape == p.shape
                and t.dtype == p.dtype and t.device == p.device
                for t in ts if t is not None)
            for p, *ts in zip(params, *states)
        ] if states else [_reads_as_values(p) for p in params]
    half_ok = _half_safe(*scalars)
    out = []
    for i, p in enumerate(params):
        step_ok = steps is None or (
            _reads_as_values(steps[i]) and steps[i].numel() == 1
            and steps[i].dtype in (torch.float32, torch.float64) and
            (kernel == 'torch' or steps[i].device.type == 'cpu'))
        ours = kernel == 'gc' and bool(centralized[i])
        if not (takes[i] and step_ok):
            out.append('spec')
        elif ours:
            ok = p.dtype in _DTYPES and p.dim() >= 2 and p.numel() > 0 and \
                (p.dtype != torch.float16 or half_ok)
            out.append('gc' if ok else 'spec')
        else:
            ok = family != 'update' and \
                p.dtype in _torch_fused_dtypes(family, p.device)
            out.append('torch' if ok else 'spec')
    return out


def torch_fused_grads(params: Sequence[Tensor], grads: Sequence[Tensor],
                      how: Sequence[str], centralized: Sequence[bool],
                      weight_decay: float, maximize: bool,
                      grad_scale: Optional[Tensor]) -> List[Tensor]:
    """The gradients a ``'torch'`` fused step hands torch's kernel: for the
    centralized parameters :func:`route` gave it,
    ``GC((-)g + weight_decay * s * p)`` in one scratch buffer per device
    and dtype (``s``: the GradScaler's scale); under a GradScaler, copies
    of the others' (torch's kernels unscale them in place); the rest as
    they are. ``p.grad`` is never modified."""
    grads = list(grads)
    if grad_scale is not None:
        # torch's fused kernels write the unscaled gradient back: they get
        # copies (x * 1 is exact) of the gradients that are not centralized.
        plain = [
            i for i, h in enumerate(how) if h == 'torch' and not centralized[i]
        ]
        if plain:
            copies = grad_copies(take(grads, plain))
            for i, copy in zip(plain, copies):
                grads[i] = copy
    idx = [i for i, h in enumerate(how) if h == 'torch' and centralized[i]]
    if not idx:
        return grads
    grouped = torch.optim.Optimizer._group_tensors_by_device_and_dtype(
        [take(params, idx), take(grads, idx)], with_indices=True)
    for (dev_params, dev_grads), indices in grouped.values():
        scratch = centralized_grads(dev_params, dev_grads, weight_decay,
                                    maximize, True, grad_scale)
        for j, t in zip(indices, scratch):
            grads[idx[j]] = t
    return grads


def shares_written_memory(written: Sequence[Optional[Tensor]],
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
    return module().shares_written_memory(_tensors(written), _tensors(read))


def host_unscale(grads: List[Tensor], grad_scale: Optional[Tensor],
                 found_inf: Optional[Tensor]) -> Optional[List[Tensor]]:
    """The unscaled gradients for tensors no fused kernel takes under a
    GradScaler (e.g. complex ones), or None when the step is to be skipped.

    ``found_inf`` is read on the host: the one host read of a fused step,
    and only for such tensors.
    """
    if found_inf is not None and bool(found_inf):
        return None
    if grad_scale is None:
        return grads
    return list(torch._foreach_div(grads, grad_scale))


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
