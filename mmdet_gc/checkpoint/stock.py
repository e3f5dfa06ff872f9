"""Stock MMEngine checkpoints, read as data.

A checkpoint written by stock MMEngine 0.10 pickles the message hub's
``HistoryBuffer`` objects (with references to their statistics methods),
numpy arrays, numpy scalars and their dtypes. torch's ``weights_only=True``
loader refuses those globals, and allow-listing the real classes is unsafe:
``HistoryBuffer.__setstate__`` writes class-level state, and numpy's
``dtype.__setstate__`` accepts contradictory layouts.

:func:`stand_ins` gives, for exactly these pickled names, stand-ins that run
no code of the named class: they take the pickle's arguments and state as
data, accept only plain numeric dtypes whose sizes agree with their bytes,
and record what they were given. :func:`resolve` then builds the real
objects through their constructors (a ``HistoryBuffer`` through
:func:`~mmdet_gc.checkpoint.plain.make_history_buffer`). The stand-ins are
allow-listed for one ``torch.load`` at a time, through torch's
``safe_globals`` context manager (see :mod:`mmdet_gc.checkpoint.reader`).
"""
import math
from typing import Any, List, Tuple

import numpy as np
import torch

from .plain import (_NUMPY_DTYPES, MAX_DEPTH, charge_copy, key_label,
                    make_history_buffer)

# Far above what a detector's checkpoint holds (a few thousand tensors and
# entries); a small file of shared lists could otherwise expand into
# billions of values ("billion laughs") when it is walked.
MAX_VALUES = 1_000_000

# numpy's one-letter codes and sizes (what dtype.__reduce__ writes, e.g.
# 'f8', 'b1') for the plain numeric dtypes, and nothing else.
_CODES = {np.dtype(name).str[1:]: name for name in _NUMPY_DTYPES}

# The statistics methods HistoryBuffer registers itself; a stock file names
# them as getattr(HistoryBuffer, name).
_STATISTICS = ('min', 'max', 'current', 'mean')


class StockCheckpointError(ValueError):
    """What a stand-in refuses; the message says what and why."""


def _refuse(what: str) -> StockCheckpointError:
    return StockCheckpointError(what)


class _StandIn:
    """A pickled object this module reads as data."""

    kind = 'object'

    def __new__(cls, *args: Any) -> '_StandIn':
        # No state comes from the arguments: __init__ or BUILD checks it.
        return super().__new__(cls)

    def __reduce__(self):  # never written back as itself
        raise TypeError(f'a stand-in for {self.kind} cannot be pickled')


class _Dtype(_StandIn):
    """``numpy.dtype(code, align, copy)`` then its ``BUILD`` state."""

    kind = 'numpy dtype'
    dtype = None  # set by __init__ only: a NEWOBJ'd one stays unusable

    def __init__(self, code: Any = None, align: Any = False,
                 copy: Any = True) -> None:
        if not (type(code) is str and code in _CODES and type(align) is bool
                and type(copy) is bool and not align):
            raise _refuse(f'a numpy dtype {code!r} that is not a plain '
                          'numeric one')
        self.dtype = np.dtype(_CODES[code])

    def __setstate__(self, state: Any) -> None:
        # numpy writes (3, byteorder, None, None, None, -1, -1, 0) for a
        # plain numeric dtype; anything else (fields, sizes, flags) would
        # contradict the code it was built from.
        if self.dtype is None:
            raise _refuse('a numpy dtype built without its code')
        order = '|' if self.dtype.itemsize == 1 else ('<', '>', '=')
        if not (type(state) is tuple and len(state) == 8 and state[0] == 3
                and state[1] in order and state[2:] ==
                (None, None, None, -1, -1, 0)):
            raise _refuse(f'a numpy dtype {self.dtype} with a state that '
                          f'contradicts it: {state!r:.80}')
        if state[1] != '|':
            self.dtype = self.dtype.newbyteorder(state[1])


class _NdarrayClass(_StandIn):
    """``numpy.ndarray`` as the argument of ``_reconstruct``: a token."""

    kind = 'numpy.ndarray'

    def __new__(cls, *args: Any) -> '_StandIn':
        raise _refuse('numpy.ndarray built directly')


class _Array(_StandIn):
    """What ``_reconstruct`` returns; its ``BUILD`` state holds the data."""

    kind = 'numpy array'

    def __setstate__(self, state: Any) -> None:
        if not (type(state) is tuple and len(state) == 5 and state[0] == 1):
            raise _refuse('a numpy array with a malformed state')
        _, shape, dtype, fortran, raw = state
        if not (type(shape) is tuple
                and all(type(n) is int and n >= 0 for n in shape)
                and isinstance(dtype, _Dtype) and dtype.dtype is not None
                and type(fortran) is bool
                and type(raw) is bytes):
            raise _refuse('a numpy array with a malformed state')
        size = math.prod(shape) * dtype.dtype.itemsize
        if size != len(raw):
            raise _refuse(f'a numpy array of shape {shape} and dtype '
                          f'{dtype.dtype} over {len(raw)} bytes')
        arr = np.frombuffer(raw, dtype=dtype.dtype).reshape(
            shape, order='F' if fortran else 'C')
        # A BUILD per reference to one memoized bytes object: a copy each.
        charge_copy(size)
        self.array = arr.astype(arr.dtype.newbyteorder('='), copy=True)


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> _Array:
    """``numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')``."""
    if cls is not _NdarrayClass or shape != (0, ) or typecode != b'b':
        raise _refuse('numpy _reconstruct of something other than an array')
    return _Array()


def _scalar(dtype: Any, raw: Any = None) -> np.generic:
    """``numpy.core.multiarray.scalar(dtype, bytes)``: a numpy scalar."""
    if not (isinstance(dtype, _Dtype) and dtype.dtype is not None
            and type(raw) is bytes
            and len(raw) == dtype.dtype.itemsize):
        raise _refuse('a numpy scalar whose bytes do not match its dtype')
    value = np.frombuffer(raw, dtype=dtype.dtype)[0]
    return value.astype(value.dtype.newbyteorder('='))


class _Method:
    """``getattr(HistoryBuffer, name)`` for a statistics method."""

    def __init__(self, name: str) -> None:
        self.name = name


def _getattr(obj: Any, name: Any) -> _Method:
    """``builtins.getattr``, for a HistoryBuffer statistics method only."""
    if obj is not _HistoryBuffer or name not in _STATISTICS:
        raise _refuse(f'getattr({getattr(obj, "kind", type(obj).__name__)}'
                      f', {name!r:.40})')
    return _Method(name)


class _HistoryBuffer(_StandIn):
    """``mmengine.logging.HistoryBuffer``: its ``__dict__`` as data."""

    kind = 'HistoryBuffer'

    def __new__(cls, *args: Any) -> '_StandIn':
        if args:  # MMEngine pickles it as HistoryBuffer.__new__(cls)
            raise _refuse('a HistoryBuffer built with arguments')
        return super().__new__(cls)

    def __setstate__(self, state: Any) -> None:
        keys = {'max_length', '_log_history', '_count_history'}
        if not (type(state) is dict and keys <= set(state) <=
                keys | {'statistics_methods'}):
            raise _refuse('a HistoryBuffer with a malformed state')
        methods = state.get('statistics_methods', {})
        # The class's own methods are the only ones a stock run registers;
        # they come from code, so the file's references are only checked.
        if not (type(methods) is dict and all(
                isinstance(v, _Method) and v.name == k
                for k, v in methods.items())):
            raise _refuse('a HistoryBuffer whose statistics methods are not '
                          "HistoryBuffer's own")
        self.state = state


def stand_ins() -> List[Tuple[Any, str]]:
    """``(stand_in, 'module.Name')`` pairs for ``safe_globals``: the names
    a stock MMEngine 0.10 checkpoint pickles (numpy 1 and 2 spellings)."""
    pairs = [(_HistoryBuffer, 'mmengine.logging.history_buffer.HistoryBuffer'),
             (_getattr, 'builtins.getattr'), (_Dtype, 'numpy.dtype'),
             (_NdarrayClass, 'numpy.ndarray'),
             # torch BUILDs only allow-listed types; this one comes from
             # _reconstruct, under a name no module has.
             (_Array, 'mmdet_gc stand-in for a numpy array')]
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        pairs += [(_reconstruct, f'{module}._reconstruct'),
                  (_scalar, f'{module}.scalar')]
    return pairs


def tensor_over_its_memory(t: torch.Tensor) -> bool:
    """Whether ``t`` is a plain strided CPU tensor whose elements each have
    memory of their own in its storage. torch.load keeps the strides a
    file gives, so a few bytes can stand for terabytes (a zero stride) that
    the first copy would allocate; a storage holds no more than the file
    did (compressed archives are refused)."""
    if t.layout != torch.strided or t.is_quantized or t.is_nested or \
            t.device.type != 'cpu':
        return False
    if any(s == 0 and n > 1 for s, n in zip(t.stride(), t.shape)):
        return False
    return t.untyped_storage().nbytes() >= \
        (t.storage_offset() + t.numel()) * t.element_size()


def resolve(obj: Any, where: str = 'checkpoint') -> Any:
    """``obj`` with every stand-in replaced by the real object: the first
    walk over a loaded file, which also refuses what no later walk may see.

    Raises:
        StockCheckpointError: A stand-in that was never given its state
            (an array without data...), a tensor that claims more memory
            than its storage holds (:func:`tensor_over_its_memory`), more
            than :data:`MAX_VALUES` values, or nesting deeper than
            :data:`~mmdet_gc.checkpoint.plain.MAX_DEPTH`; the message names
            the key path.
    """
    budget = [MAX_VALUES]
    return _resolve(obj, where, 0, budget)


def _resolve(obj: Any, where: str, depth: int, budget: List[int]) -> Any:
    if depth > MAX_DEPTH:
        raise _refuse(f'{where}: nested deeper than {MAX_DEPTH} levels')
    budget[0] -= 1
    if budget[0] < 0:
        raise _refuse(f'more than {MAX_VALUES} values (shared containers '
                      'that expand when walked)')
    if isinstance(obj, torch.Tensor):
        if not tensor_over_its_memory(obj):
            raise _refuse(f'{where}: a tensor that is not a plain one over '
                          'memory of its own')
        return obj
    if isinstance(obj, _StandIn) or isinstance(obj, _Method):
        return _resolve_stand_in(obj, where)
    if isinstance(obj, dict):  # dict, OrderedDict, Counter
        out = type(obj)()
        for k, v in obj.items():
            label = f'{where}.{key_label(k)}'
            out[_resolve(k, f'{label} (key)', depth + 1, budget)] = _resolve(
                v, label, depth + 1, budget)
        return out
    if type(obj) in (list, tuple, set):
        return type(obj)(_resolve(v, f'{where}[{i}]', depth + 1, budget)
                         for i, v in enumerate(obj))
    return obj


def _resolve_stand_in(obj: Any, where: str) -> Any:
    if isinstance(obj, _Array) and hasattr(obj, 'array'):
        return obj.array
    if isinstance(obj, _Dtype) and obj.dtype is not None:
        return obj.dtype
    if isinstance(obj, _HistoryBuffer) and hasattr(obj, 'state'):
        state = obj.state
        arrays = [state[k] for k in ('_log_history', '_count_history')]
        if not all(isinstance(a, _Array) and hasattr(a, 'array')
                   for a in arrays):
            raise _refuse(f'{where}: a HistoryBuffer without arrays')
        try:
            return make_history_buffer(arrays[0].array, arrays[1].array,
                                       state['max_length'], where)
        except ValueError as e:
            raise _refuse(str(e)) from None
    raise _refuse(f'{where}: {getattr(obj, "kind", "a method reference")} '
                  'outside what MMEngine writes')


__all__ = ['StockCheckpointError', 'stand_ins', 'resolve']
