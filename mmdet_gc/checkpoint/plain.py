"""Plain checkpoints: what torch's default ``weights_only=True`` loader
accepts with no allow-list.

MMEngine 0.10 checkpoints hold the message hub's ``HistoryBuffer`` objects
and numpy values. :func:`to_plain` writes those as marked dicts of tensors,
so that stock ``torch.load`` loads the file, and :func:`from_plain` turns
them back, checking every marked dict, so that ``--resume`` is bit for bit
(:class:`~mmdet_gc.engine.hooks.PlainCheckpointHook` applies both).
"""
import contextlib
from collections import OrderedDict
from contextvars import ContextVar
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch

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


def key_label(key: Any) -> str:
    """A key from a file as it goes into a key path: short and printable
    (a file's keys can be megabytes long or hold newlines and terminal
    escapes, and paths are built at every level of a walk)."""
    text = key if isinstance(key, str) else repr(key)
    if len(text) <= 40 and text.isprintable():
        return text
    return repr(text[:40]) + ('...' if len(text) > 40 else '')


class CopyBudgetError(ValueError):
    """More bytes copied while one file is decoded than its
    :func:`copy_budget` allows."""


# What the read in progress may still copy (None: no read, no limit).
_COPY_BUDGET: ContextVar[Optional[List[int]]] = ContextVar(
    'mmdet_gc_copy_budget', default=None)


@contextlib.contextmanager
def copy_budget(nbytes: int) -> Iterator[None]:
    """Within the block, the decoding of one file may copy ``nbytes`` in
    all (:func:`charge_copy`): a small file can reference one array or
    storage many times over, and every copy per reference would turn
    kilobytes into gigabytes."""
    token = _COPY_BUDGET.set([nbytes])
    try:
        yield
    finally:
        _COPY_BUDGET.reset(token)


def charge_copy(nbytes: int) -> None:
    """Count ``nbytes`` about to be copied against the :func:`copy_budget`
    in force, if any.

    Raises:
        CopyBudgetError: The budget is spent.
    """
    budget = _COPY_BUDGET.get()
    if budget is not None:
        budget[0] -= nbytes
        if budget[0] < 0:
            raise CopyBudgetError('more bytes copied than the file holds')


class DecodedCheckpoint(dict):
    """A checkpoint already decoded by the checkpoint door: every marked
    dict was rebuilt once, and must not be decoded again (an escaped marked
    dict would otherwise decode a second time into something unchecked)."""


def _np_to_plain(arr: np.ndarray) -> Dict[str, Any]:
    name = arr.dtype.name
    if name not in _NUMPY_DTYPES:
        raise TypeError(f'numpy dtype {arr.dtype} cannot be saved as plain '
                        'data')
    return {TAG: 'ndarray', 'data': torch.from_numpy(np.array(arr))}


def _np_from_plain(obj: dict, where: str, memo: Dict[int, Any]) -> np.ndarray:
    """The array of a marked dict: decoded once per tensor (``memo``, by
    id), so that a tensor shared by many marked dicts is one array, not a
    copy per reference."""
    data = obj.get('data')
    if type(data) is not torch.Tensor or data.layout != torch.strided:
        raise ValueError(f'{where}: an array without tensor data')
    if id(data) in memo:
        return memo[id(data)]
    # What to_plain writes: a plain, contiguous tensor inside its storage
    # (a crafted one could declare terabytes over one element, or carry
    # conjugate / negative bits numpy cannot read).
    if data.is_conj() or data.is_neg() or data.is_quantized or \
            not data.is_contiguous() or data.untyped_storage().nbytes() < \
            (data.storage_offset() + data.numel()) * data.element_size():
        raise ValueError(f'{where}: an array whose tensor is not a plain, '
                         'contiguous one inside its storage')
    if str(data.dtype).replace('torch.', '') not in _NUMPY_DTYPES:
        # Asked first: torch's own error for bfloat16 and the like is not
        # one of ours.
        raise ValueError(f'{where}: an array of {data.dtype} values, '
                         'which is not a numpy dtype')
    charge_copy(data.numel() * data.element_size())
    memo[id(data)] = arr = data.detach().cpu().numpy().copy()
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
            (k, to_plain(v, f'{where}.{key_label(k)}'))
            for k, v in obj.items())
        return {TAG: 'dict', 'items': out} if TAG in out else out
    if isinstance(obj, (list, tuple, set)) and not hasattr(obj, '_fields'):
        base = next(t for t in (list, tuple, set) if isinstance(obj, t))
        return base(to_plain(v, f'{where}[{i}]') for i, v in enumerate(obj))
    raise TypeError(
        f'{where} is a {type(obj).__module__}.{type(obj).__qualname__}, '
        "which torch.load(weights_only=True) does not load; keep a "
        "checkpoint's contents to tensors, numbers, strings, lists, tuples "
        'and dicts')


def from_plain(obj: Any,
               where: str = 'checkpoint',
               depth: int = 0,
               memo: Optional[Dict[int, Any]] = None) -> Any:
    """Undo :func:`to_plain`; safe on untrusted input.

    Only the three marked forms are rebuilt, from tensors of a numeric dtype
    through ``HistoryBuffer``'s own constructor: no class is looked up by a
    name taken from the file. A tensor several marked dicts hold becomes
    one array they share (``memo``: what this call decoded, by id), as
    MMEngine's own pickle keeps a shared array shared.

    Raises:
        ValueError: A malformed marked dict, or nesting deeper than
            :data:`MAX_DEPTH`; the message names its path.
        CopyBudgetError: The arrays copied exceed the :func:`copy_budget`
            in force.
    """
    if depth > MAX_DEPTH:
        raise ValueError(f'{where}: nested deeper than {MAX_DEPTH} levels')
    memo = {} if memo is None else memo
    if isinstance(obj, dict):
        kind = obj.get(TAG)
        if kind is None:
            return _from_plain_items(obj, where, depth, memo)
        if kind == 'dict' and isinstance(obj.get('items'), dict):
            return _from_plain_items(obj['items'], where, depth, memo)
        if kind == 'ndarray':
            return _np_from_plain(obj, where, memo)
        if kind == 'numpy_scalar':
            arr = _np_from_plain(obj, where, memo)
            if arr.ndim != 0:
                raise ValueError(f'{where}: a numpy scalar of shape '
                                 f'{arr.shape}')
            return arr[()]
        if kind == 'HistoryBuffer':
            return _history_buffer(obj, where, memo)
        raise ValueError(f'{where}: unknown marked object {kind!r}')
    if type(obj) in (list, tuple, set):
        return type(obj)(from_plain(v, f'{where}[{i}]', depth + 1, memo)
                         for i, v in enumerate(obj))
    return obj


def _from_plain_items(obj: dict, where: str, depth: int,
                      memo: Dict[int, Any]) -> dict:
    # dict, OrderedDict or Counter: what torch rebuilds. Attributes a
    # pickle's BUILD may have set on it are not carried over.
    out = type(obj)()
    for k, v in obj.items():
        out[k] = from_plain(v, f'{where}.{key_label(k)}', depth + 1, memo)
    return out


def _history_buffer(obj: dict, where: str, memo: Dict[int, Any]) -> Any:
    logs, counts, max_length = (
        obj.get(k) for k in ('log_history', 'count_history', 'max_length'))
    if not (isinstance(logs, dict) and isinstance(counts, dict)):
        raise ValueError(f'{where}: a malformed HistoryBuffer')
    return make_history_buffer(
        _np_from_plain(logs, where + '.log_history', memo),
        _np_from_plain(counts, where + '.count_history', memo), max_length,
        where)


def make_history_buffer(logs: np.ndarray, counts: np.ndarray,
                        max_length: Any, where: str) -> Any:
    """A ``HistoryBuffer`` built through its constructor from checked
    histories: its statistics methods come from code, never from a file.

    Raises:
        ValueError: Histories of another shape or a bad ``max_length``;
            the message names ``where``.
    """
    from mmengine.logging import HistoryBuffer
    if not (type(max_length) is int and max_length > 0):
        raise ValueError(f'{where}: a malformed HistoryBuffer')
    if logs.ndim != 1 or logs.shape != counts.shape \
            or len(logs) > max_length:
        raise ValueError(f'{where}: a HistoryBuffer whose histories do not '
                         'match')
    buffer = HistoryBuffer(max_length=max_length)
    buffer._log_history, buffer._count_history = logs, counts
    return buffer
