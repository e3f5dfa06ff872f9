"""Checkpoints that torch's default ``weights_only=True`` loader accepts.

A checkpoint is untrusted input. Since torch 2.6, ``torch.load`` unpickles
with ``weights_only=True``: only tensors, Python numbers, strings and
containers, and no other global unless it is allow-listed. MMEngine 0.10
checkpoints hold more than that: the message hub's ``HistoryBuffer``
objects, the numpy arrays inside them, and references to its statistics
methods. Allow-listing those is unsafe (``HistoryBuffer.__setstate__``
updates class-level state, and numpy's ``dtype.__setstate__`` accepts
contradictory layouts), so this module never touches torch's allow-list.
Instead:

- :class:`PlainCheckpointHook` makes the checkpoints of our runs plain data
  before they are saved (``before_save_checkpoint``) and turns them back
  after they are loaded (``after_load_checkpoint``), so they load with stock
  ``torch.load`` and resume bit for bit;
- :func:`inspect_checkpoint` is the tools' check of a checkpoint before the
  runner is built: a cheap structural check, then a guarded
  ``weights_only=True`` load; every failure is one line that names the file;
- a foreign checkpoint (e.g. written by stock MMEngine) loads only with the
  user's explicit per-file consent: :func:`trust_checkpoint`
  (``--trust-checkpoint``) or :func:`convert_checkpoint`
  (``tools/convert_checkpoint.py IN OUT --trust``).

(Gradient Centralization: Yong et al., ECCV 2020, arXiv:2004.01461; this
module only makes the package's runs safe to resume and test.)
"""
import math
import os
import os.path as osp
import pickle
import re
import tempfile
import zipfile
from collections import OrderedDict
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from mmengine.hooks import Hook

# The key that marks a dict standing for a non-plain object.
TAG = '__mmdet_gc__'

# Deeper than any checkpoint MMEngine writes; a crafted file could nest
# until Python's recursion limit, inside the runner.
MAX_DEPTH = 64

# MMEngine 0.10's Runner.resume executes ``meta['config']`` (a string) as a
# Python config file, to read ``gpu_ids``: code in plain data. MMEngine
# itself writes the config as ``meta['cfg']``, which is only text.
EXECUTED_META = 'config'

# numpy dtypes written as tensors; from_plain accepts no other dtype name.
_NUMPY_DTYPES = ('bool', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16',
                 'uint32', 'uint64', 'float16', 'float32', 'float64',
                 'complex64', 'complex128')

# What torch's default weights_only unpickler rebuilds (no allow-list).
_PLAIN_SCALARS = (str, bytes, bytearray, bool, int, float, complex, type(None),
                  torch.dtype, torch.device, torch.Size)


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded safely; the message is one line
    that names the file."""


class ForeignCheckpointError(CheckpointError):
    """A readable checkpoint that needs globals torch's ``weights_only``
    loader refuses (``names``), e.g. one written by stock MMEngine."""

    def __init__(self, message: str, names: List[str]):
        super().__init__(message)
        self.names = names


def _np_to_plain(arr: np.ndarray) -> Dict[str, Any]:
    name = arr.dtype.name
    if name not in _NUMPY_DTYPES:
        raise TypeError(f'numpy dtype {arr.dtype} cannot be saved as plain '
                        'data')
    return {TAG: 'ndarray', 'data': torch.from_numpy(np.array(arr))}


def _np_from_plain(obj: dict, where: str) -> np.ndarray:
    data = obj.get('data')
    if type(data) is not torch.Tensor or data.layout != torch.strided:
        raise ValueError(f'{where}: an array without tensor data')
    # What to_plain writes: a plain, contiguous tensor inside its storage
    # (a crafted one could declare terabytes over one element, or carry
    # conjugate / negative bits numpy cannot read).
    if data.is_conj() or data.is_neg() or data.is_quantized or \
            not data.is_contiguous() or data.untyped_storage().nbytes() < \
            (data.storage_offset() + data.numel()) * data.element_size():
        raise ValueError(f'{where}: an array whose tensor is not a plain, '
                         'contiguous one inside its storage')
    arr = data.detach().cpu().numpy().copy()
    if arr.dtype.name not in _NUMPY_DTYPES:
        raise ValueError(f'{where}: an array of dtype {arr.dtype}')
    return arr


def to_plain(obj: Any, where: str = 'checkpoint') -> Any:
    """``obj`` with every ``HistoryBuffer`` and numpy value made plain data.

    A ``HistoryBuffer`` becomes a dict of its history arrays and
    ``max_length`` (its statistics methods are class-level and come from
    code, not from the file); a numpy array or scalar becomes a dict holding
    a tensor of the same dtype, so :func:`from_plain` restores it bit for
    bit. Dicts that hold the key :data:`TAG` themselves are escaped.

    Args:
        obj: A checkpoint, or any part of one.
        where (str): The key path, for error messages.

    Raises:
        TypeError: An object torch's ``weights_only=True`` loader would
            refuse and that has no plain form; the message names its path.
    """
    from mmengine.logging import HistoryBuffer
    if isinstance(obj, torch.Tensor):
        # A Parameter or other subclass is saved as the plain tensor.
        return obj if type(obj) is torch.Tensor else \
            obj.detach().as_subclass(torch.Tensor)
    if type(obj) in _PLAIN_SCALARS:
        return obj
    if isinstance(obj, HistoryBuffer):
        return {
            TAG: 'HistoryBuffer',
            'log_history': _np_to_plain(np.asarray(obj._log_history)),
            'count_history': _np_to_plain(np.asarray(obj._count_history)),
            'max_length': int(obj.max_length),
        }
    if isinstance(obj, (np.str_, np.bytes_)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return _np_to_plain(obj)
    if isinstance(obj, np.generic):
        return {**_np_to_plain(np.asarray(obj)), TAG: 'numpy_scalar'}
    if isinstance(obj, dict):  # ConfigDict, defaultdict... become dicts
        out = (OrderedDict if isinstance(obj, OrderedDict) else dict)(
            (k, to_plain(v, f'{where}.{k}')) for k, v in obj.items())
        return {TAG: 'dict', 'items': out} if TAG in out else out
    if isinstance(obj, (list, tuple, set)) and not hasattr(obj, '_fields'):
        base = next(t for t in (list, tuple, set) if isinstance(obj, t))
        return base(to_plain(v, f'{where}[{i}]') for i, v in enumerate(obj))
    raise TypeError(
        f'{where} is a {type(obj).__module__}.{type(obj).__qualname__}, '
        "which torch.load(weights_only=True) does not load; keep a "
        "checkpoint's contents to tensors, numbers, strings, lists, tuples "
        'and dicts')


def from_plain(obj: Any, where: str = 'checkpoint', depth: int = 0) -> Any:
    """Undo :func:`to_plain`; safe on untrusted input.

    Only the three marked forms are rebuilt, from tensors of a numeric dtype
    through ``HistoryBuffer``'s own constructor: no class is looked up by a
    name taken from the file.

    Raises:
        ValueError: A malformed marked dict, or nesting deeper than
            :data:`MAX_DEPTH`; the message names its path.
    """
    if depth > MAX_DEPTH:
        raise ValueError(f'{where}: nested deeper than {MAX_DEPTH} levels')
    if isinstance(obj, dict):
        kind = obj.get(TAG)
        if kind is None:
            return _from_plain_items(obj, where, depth)
        if kind == 'dict' and isinstance(obj.get('items'), dict):
            return _from_plain_items(obj['items'], where, depth)
        if kind == 'ndarray':
            return _np_from_plain(obj, where)
        if kind == 'numpy_scalar':
            arr = _np_from_plain(obj, where)
            if arr.ndim != 0:
                raise ValueError(f'{where}: a numpy scalar of shape '
                                 f'{arr.shape}')
            return arr[()]
        if kind == 'HistoryBuffer':
            return _history_buffer(obj, where)
        raise ValueError(f'{where}: unknown marked object {kind!r}')
    if type(obj) in (list, tuple, set):
        return type(obj)(from_plain(v, f'{where}[{i}]', depth + 1)
                         for i, v in enumerate(obj))
    return obj


def _from_plain_items(obj: dict, where: str, depth: int) -> dict:
    # dict, OrderedDict or Counter: what torch rebuilds. Attributes a
    # pickle's BUILD may have set on it are not carried over.
    out = type(obj)()
    for k, v in obj.items():
        out[k] = from_plain(v, f'{where}.{k}', depth + 1)
    return out


def _history_buffer(obj: dict, where: str) -> Any:
    from mmengine.logging import HistoryBuffer
    logs, counts, max_length = (
        obj.get(k) for k in ('log_history', 'count_history', 'max_length'))
    if not (isinstance(logs, dict) and isinstance(counts, dict)
            and type(max_length) is int and max_length > 0):
        raise ValueError(f'{where}: a malformed HistoryBuffer')
    logs = _np_from_plain(logs, where + '.log_history')
    counts = _np_from_plain(counts, where + '.count_history')
    if logs.ndim != 1 or logs.shape != counts.shape \
            or len(logs) > max_length:
        raise ValueError(f'{where}: a HistoryBuffer whose histories do not '
                         'match')
    buffer = HistoryBuffer(max_length=max_length)
    buffer._log_history, buffer._count_history = logs, counts
    return buffer


class PlainCheckpointHook(Hook):
    """Save checkpoints as plain data; restore them after loading.

    ``before_save_checkpoint`` rewrites the checkpoint dict in place with
    :func:`to_plain`, so the file holds only what ``torch.load`` with
    ``weights_only=True`` accepts without any allow-list.
    ``after_load_checkpoint`` applies :func:`from_plain` before the runner
    hands the message hub its ``HistoryBuffer``s, so ``--resume`` restores
    the logged history (smoothed losses, ``save_best``) bit for bit.

    Its priority is ``LOWEST`` so that it sees what every other hook added
    to the checkpoint. The tools add it to any config that lacks it.
    """

    priority = 'LOWEST'

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        optimizer = _optimizer_type(runner)
        if optimizer is not None:  # for the resume check below
            checkpoint.setdefault('meta', {})['optimizer_type'] = optimizer
        plain = to_plain(checkpoint)
        checkpoint.clear()
        checkpoint.update(plain)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        try:
            restored = from_plain(checkpoint)
        except ValueError as e:
            raise CheckpointError(f'checkpoint is malformed: {e}') from None
        meta = restored.get('meta')
        if isinstance(meta, dict) and EXECUTED_META in meta:
            # Runner.resume would exec this string as a config file.
            del meta[EXECUTED_META]
            runner.logger.warning(
                'dropped meta.config from the loaded checkpoint: MMEngine '
                'would execute it as Python on resume')
        if getattr(runner, '_resume', False):
            _warn_on_other_optimizer(runner, restored)
            _confine_checkpoint_paths(runner, restored)
        checkpoint.clear()
        checkpoint.update(restored)


def _confine_checkpoint_paths(runner: Any, checkpoint: dict) -> None:
    """Keep MMEngine's CheckpointHook to this run's own files on resume.

    It removes ``runtime_info['best_ckpt*']`` when a better one comes, and
    ``iter_<id>.pth`` for the oldest ``keep_ckpt_ids``: paths and ids taken
    from the file. A best checkpoint outside the work dir is forgotten (not
    removed), and ids after the checkpoint's own step are dropped.
    """
    hub = checkpoint.get('message_hub') or {}
    info, resumed = hub.get('runtime_info'), hub.get('resumed_keys')
    if not isinstance(info, dict):
        return
    root = osp.realpath(runner.work_dir)
    for key in [k for k in info if k.startswith('best_ckpt')]:
        path = info[key]
        if not (isinstance(path, str)
                and osp.dirname(osp.realpath(path)) == root):
            del info[key]
            if isinstance(resumed, dict):
                resumed.pop(key, None)
            runner.logger.warning(
                f'forgot runtime_info.{key}={path!r} from the checkpoint: '
                f'it is not in this run\'s work dir {root}, so it will not '
                'be removed when a better checkpoint comes')
    ids = info.get('keep_ckpt_ids')
    if isinstance(ids, list):
        meta = checkpoint.get('meta') or {}
        last = max(meta.get('iter', 0), meta.get('epoch', 0))
        kept = sorted({i for i in ids if type(i) is int and 0 < i <= last})
        if kept != ids:
            runner.logger.warning(
                'keep_ckpt_ids from the checkpoint trimmed to the steps it '
                f'had reached: {kept}')
            info['keep_ckpt_ids'] = kept


def _optimizer_type(runner: Any) -> Optional[str]:
    """The class name of the runner's (single) optimizer, once built."""
    optimizer = getattr(
        getattr(runner, 'optim_wrapper', None), 'optimizer', None)
    return type(optimizer).__name__ if optimizer is not None else None


def _warn_on_other_optimizer(runner: Any, checkpoint: dict) -> None:
    """One warning when a run resumes another optimizer's state (SGD to
    SGD_GC or back, SGD_GC to SGD_GCC): the state carries over, and the
    config's optimizer and GC switches are used from then on."""
    current = _optimizer_type(runner)
    meta = checkpoint.get('meta') or {}
    saved = meta.get('optimizer_type')
    if current is None or saved == current:
        return
    if saved is None:  # a stock MMEngine checkpoint: ask its param groups
        groups = (checkpoint.get('optimizer') or {}).get('param_groups')
        if not isinstance(groups, list) or not groups:
            return
        was_gc = all(isinstance(g, dict) and 'gc' in g for g in groups)
        from .optim import GCOptimizer
        if was_gc == isinstance(runner.optim_wrapper.optimizer, GCOptimizer):
            return
        saved = 'a GC optimizer' if was_gc else 'a non-GC optimizer'
    runner.logger.warning(
        f'resuming a checkpoint trained with {saved} under {current}: its '
        f'optimizer state (momentum buffers...) carries over, and {current} '
        'with the GC switches of this config is used from here')


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f'{type(e).__name__}: {text[0] if text else ""}'.rstrip(': ')


def _unsupported_globals(path: str, error: BaseException) -> List[str]:
    """The globals that made torch's weights_only loader refuse ``path``."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # an unreadable pickle: use torch's message
        found = []
    return found or re.findall(r'GLOBAL ([\w.]+)', str(error))[:1]


def check_structure(path: str) -> None:
    """The cheap check: a file that is a torch zip archive with a non-empty
    ``data.pkl``, or a legacy (torch < 1.6) pickle.

    Raises:
        CheckpointError: Naming ``path`` and what is wrong with it.
    """
    if osp.isdir(path):
        raise CheckpointError(f'checkpoint {path} is a directory, not a '
                              'checkpoint file')
    if not osp.isfile(path):
        raise CheckpointError(f'checkpoint not found: {path}')
    with open(path, 'rb') as f:
        head = f.read(4)
    if not head:
        raise CheckpointError(f'checkpoint {path} is an empty file')
    if head.startswith(b'PK'):
        try:
            with zipfile.ZipFile(path) as z:
                pkl = [
                    i for i in z.infolist() if i.filename.endswith('data.pkl')
                ]
        except Exception as e:  # BadZipFile, NotImplementedError, EOFError
            raise CheckpointError(
                f'checkpoint {path} is a truncated or corrupt zip archive '
                f'({_first_line(e)})') from None
        if len(pkl) != 1:
            raise CheckpointError(f'checkpoint {path} is a zip archive but '
                                  'not a PyTorch checkpoint (no data.pkl)')
        if pkl[0].file_size == 0:
            raise CheckpointError(f'checkpoint {path} has an empty data.pkl')
    elif head[:1] != b'\x80':  # pickle protocol >= 2: torch's legacy format
        raise CheckpointError(
            f'checkpoint {path} is not a PyTorch checkpoint (neither a zip '
            'archive nor a pickle)')


def _refuse_foreign(path: str, error: BaseException) -> ForeignCheckpointError:
    names = _unsupported_globals(path, error)
    return ForeignCheckpointError(
        f'checkpoint {path} is refused: it holds objects that '
        'torch.load(weights_only=True) does not load '
        f'({", ".join(names) or "unknown"}), as checkpoints written by stock '
        'MMEngine do. Only if you trust this file: pass --trust-checkpoint '
        'to load it with weights_only=False, or convert it once: python '
        f'tools/convert_checkpoint.py {path} OUT.pth --trust', names)


def read_checkpoint(path: str, trust: bool = False) -> dict:
    """Load ``path`` on the CPU, refusing anything unsafe or malformed.

    Without ``trust`` this is ``torch.load(weights_only=True)`` with no
    allow-list, then :func:`from_plain`. With ``trust`` the file is loaded
    with ``weights_only=False``: it can run any code, so the caller must
    have the user's consent for this one file.

    Returns:
        dict: The checkpoint as MMEngine would see it (our plain form
        restored).

    Raises:
        CheckpointError: One line naming the file and the problem.
    """
    check_structure(path)
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=not trust)
    except pickle.UnpicklingError as e:
        if not trust and 'weights_only' in str(e) and 'GLOBAL' in str(e):
            raise _refuse_foreign(path, e) from None
        raise CheckpointError(f'checkpoint {path} is corrupt: '
                              f'{_first_line(e)}') from None
    except MemoryError:
        raise CheckpointError(f'checkpoint {path} is corrupt: it asks for '
                              'more memory than there is') from None
    except Exception as e:  # torch's zip reader, truncated pickles...
        raise CheckpointError(f'checkpoint {path} is truncated or corrupt: '
                              f'{_first_line(e)}') from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f'checkpoint {path} holds a '
                              f'{type(ckpt).__name__}, not a dict')
    _check_module_versions(ckpt, path)
    try:
        return from_plain(to_plain(ckpt) if trust else ckpt)
    except RecursionError:
        raise CheckpointError(f'checkpoint {path} is malformed: nested too '
                              'deeply') from None
    except (TypeError, ValueError) as e:  # ours, naming the key path
        raise CheckpointError(f'checkpoint {path} is malformed: '
                              f'{str(e).splitlines()[0]}') from None
    except (RuntimeError, MemoryError) as e:  # torch / numpy on odd data
        raise CheckpointError(f'checkpoint {path} is malformed: '
                              f'{_first_line(e)}') from None


def _check_weights(weights: Any, path: str) -> None:
    if not (isinstance(weights, dict) and weights and all(
            isinstance(k, str) and isinstance(v, torch.Tensor)
            for k, v in weights.items())):
        raise CheckpointError(
            f'checkpoint {path} has no model weights (a "state_dict" of '
            'tensors by name)')


def _check_module_versions(ckpt: dict, path: str) -> None:
    """torch keeps module versions in a ``_metadata`` attribute of a state
    dict, which a pickle can set to anything and ``load_state_dict``
    reads. Checked on the file as loaded, before anything is rebuilt."""
    weights = ckpt.get('state_dict', ckpt)
    meta = getattr(weights, '_metadata', None)
    if meta is not None and not (isinstance(meta, dict) and all(
            isinstance(k, str) and isinstance(v, dict) and all(
                isinstance(vk, str) and (vk != 'version' or type(vv) is int)
                for vk, vv in v.items()) for k, v in meta.items())):
        raise CheckpointError(f'checkpoint {path} has malformed module '
                              'version metadata in its weights')


def _scheduler_methods() -> set:
    """Names MMEngine's parameter schedulers must keep as methods: their
    ``load_state_dict`` is ``__dict__.update(state)``."""
    from mmengine.registry import PARAM_SCHEDULERS
    names = set()
    for cls in PARAM_SCHEDULERS.module_dict.values():
        names.update(n for n in dir(cls) if callable(getattr(cls, n, None)))
    return names


def _check_resume_parts(ckpt: dict, path: str) -> None:
    """What Runner.resume and its hooks act on, beyond the counters."""
    bad = f'checkpoint {path} cannot be resumed: its '
    seed = ckpt['meta'].get('seed')
    if seed is not None and not (type(seed) is int and 0 <= seed < 2**32):
        raise CheckpointError(bad + f'meta.seed {seed!r} is not a seed')
    optimizer = ckpt.get('optimizer')
    if optimizer is not None:
        groups = optimizer.get('param_groups') \
            if isinstance(optimizer, dict) else None
        if not (isinstance(groups, list) and groups and all(
                isinstance(g, dict) and isinstance(g.get('params'), list)
                for g in groups) and isinstance(optimizer.get('state'), dict)):
            raise CheckpointError(bad + 'optimizer state is malformed')
        for i, group in enumerate(groups):
            for key, value in group.items():
                values = value if key == 'betas' and isinstance(
                    value, (list, tuple)) else [value]
                if any(
                        type(v) is float and not math.isfinite(v)
                        for v in values):
                    raise CheckpointError(
                        bad + f'optimizer param group {i} has {key}='
                        f'{value!r}, not a finite number')
    schedulers = ckpt.get('param_schedulers')
    if schedulers is not None:
        lists = schedulers.values() if isinstance(schedulers, dict) \
            else [schedulers]
        methods = _scheduler_methods()
        for states in lists:
            if not (isinstance(states, list)
                    and all(isinstance(st, dict) for st in states)):
                raise CheckpointError(bad + 'param_schedulers are malformed')
            for st in states:
                clash = sorted(
                    k for k in st if not isinstance(k, str) or k in methods)
                if clash:
                    raise CheckpointError(bad +
                                          'param_schedulers would replace the '
                                          f'scheduler methods {clash}')
    info = ckpt['message_hub']['runtime_info']
    for key, value in info.items():
        # A number; +-inf is CheckpointHook's own start value, nan is not.
        if key.startswith('best_score') and (type(value) not in (int, float)
                                             or math.isnan(value)):
            raise CheckpointError(bad + f'runtime_info.{key} is not a number')
        if key.startswith('best_ckpt') and not isinstance(value, str):
            raise CheckpointError(bad + f'runtime_info.{key} is not a path')
    ids = info.get('keep_ckpt_ids')
    if ids is not None and not (isinstance(ids, list)
                                and all(type(i) is int for i in ids)):
        raise CheckpointError(bad + 'runtime_info.keep_ckpt_ids is not a '
                              'list of ints')


def check_contents(ckpt: dict, path: str, resume: bool) -> None:
    """What MMEngine will read: model weights, and for ``resume`` the
    iteration counters, the seed, the optimizer and scheduler states and
    the message hub.

    Raises:
        CheckpointError: Naming the file and the missing or malformed part.
    """
    _check_weights(ckpt.get('state_dict', ckpt), path)
    if not resume:
        return
    meta = ckpt.get('meta')
    for key in ('epoch', 'iter'):
        if not (isinstance(meta, dict) and type(meta.get(key)) is int):
            raise CheckpointError(
                f'checkpoint {path} cannot be resumed: meta.{key} is missing '
                'or not an int (a model-only file? use load_from instead)')
    if EXECUTED_META in meta:
        raise CheckpointError(
            f'checkpoint {path} is refused: its meta.{EXECUTED_META} is '
            "Python source that MMEngine's resume would execute")
    hub = ckpt.get('message_hub')
    if not (isinstance(hub, dict) and all(
            isinstance(hub.get(k), dict)
            for k in ('log_scalars', 'runtime_info', 'resumed_keys'))):
        raise CheckpointError(
            f'checkpoint {path} cannot be resumed: its message_hub is '
            'missing or malformed')
    _check_resume_parts(ckpt, path)


def inspect_checkpoint(path: str,
                       resume: bool = False,
                       trust: bool = False) -> dict:
    """The tools' check of a local checkpoint, before the runner is built.

    Args:
        path (str): The file.
        resume (bool): Also check what ``--resume`` needs.
        trust (bool): Load with ``weights_only=False`` (the user's per-file
            consent).

    Returns:
        dict: The loaded checkpoint.

    Raises:
        CheckpointError: One line naming the file and the problem.
    """
    ckpt = read_checkpoint(path, trust=trust)
    check_contents(ckpt, path, resume)
    return ckpt


def trust_checkpoint(path: str, loaded: Optional[dict] = None) -> None:
    """Let MMEngine's runner load exactly ``path`` with
    ``weights_only=False`` (``--trust-checkpoint``).

    A loader is registered in MMEngine's ``CheckpointLoader`` for this one
    path and no other; torch's own serialization settings are not touched,
    so every other ``torch.load`` in the process stays as strict as stock
    torch. The loader returns the checkpoint in our plain form, which
    :class:`PlainCheckpointHook` restores.

    Args:
        path (str): The trusted file, as the config names it.
        loaded (dict, optional): The file already loaded by
            :func:`read_checkpoint`; handed to the runner's first load so
            that the file is unpickled once.
    """
    from mmengine.runner.checkpoint import CheckpointLoader
    cached = [loaded] if loaded is not None else []

    def load_trusted(filename: str, map_location: Any = None) -> dict:
        if filename != path:  # the pattern is exact; be sure anyway
            raise CheckpointError(f'{filename} is not the trusted {path}')
        if cached:
            return to_plain(cached.pop())
        return to_plain(
            torch.load(
                osp.expanduser(filename),
                map_location=map_location,
                weights_only=False))

    load_trusted.__name__ = 'load_from_trusted_file'
    CheckpointLoader.register_scheme(
        prefixes=re.escape(path) + r'\Z', loader=load_trusted, force=True)


def convert_checkpoint(src: str, dst: str, trust: bool = False) -> List[str]:
    """Rewrite checkpoint ``src`` into the plain form at ``dst``.

    ``src`` is loaded once: with ``weights_only=False`` if ``trust`` (the
    user's consent for this file), else with ``weights_only=True`` (a
    foreign file is then refused). ``dst`` is written atomically (never
    half a file) and loaded back with stock ``torch.load(weights_only=True)``
    before it is moved into place.

    Returns:
        list[str]: The globals ``src``'s pickle names (read without
        unpickling it), which ``dst`` does not need.

    Raises:
        CheckpointError: ``src`` is unreadable or refused, or ``dst`` is
            ``src``.
    """
    check_structure(src)
    if osp.exists(dst) and osp.samefile(src, dst):
        raise CheckpointError(f'convert {src} to another file, not onto '
                              'itself')
    plain = to_plain(read_checkpoint(src, trust=trust))
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(src)
    except Exception:  # a legacy file: the scan reads zip archives only
        needed = []
    folder = osp.dirname(osp.abspath(dst))
    fd, tmp = tempfile.mkstemp(suffix='.pth', dir=folder)
    os.close(fd)
    try:
        torch.save(plain, tmp)
        torch.load(tmp, map_location='cpu', weights_only=True)
        os.replace(tmp, dst)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    return needed
