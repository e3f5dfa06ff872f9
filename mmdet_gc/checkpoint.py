"""Load MMEngine checkpoints under ``torch.load(weights_only=True)``.

Since torch 2.6, ``torch.load`` defaults to ``weights_only=True``, which
refuses any pickled global that is not allow-listed. Checkpoints written by
MMEngine 0.10.x hold a few such globals in their ``meta``: the message hub's
``HistoryBuffer`` objects, the numpy arrays and scalars inside them, and
``getattr(HistoryBuffer, 'min')``-style references to its statistics
methods. So mmengine 0.10.7 cannot ``--resume`` or test its own checkpoints
on torch >= 2.6.

Rather than switching ``weights_only`` off (which would let any checkpoint
run code), :func:`allow_mmengine_checkpoints` adds exactly those globals to
torch's allow-list. ``getattr`` itself is not allowed: its name is bound to
:func:`history_buffer_getattr`, which resolves only the registered
statistics methods of ``HistoryBuffer`` and refuses everything else.

(Gradient Centralization: Yong et al., ECCV 2020, arXiv:2004.01461; this
module only makes the package's training runs resumable.)
"""
import pickle
from typing import Any, List

import numpy as np
import torch


def history_buffer_getattr(obj: Any, name: str) -> Any:
    """``getattr`` limited to ``HistoryBuffer``'s statistics methods.

    Raises:
        pickle.UnpicklingError: For any other object or attribute.
    """
    from mmengine.logging import HistoryBuffer

    # The built-in statistics (registered lazily, by the first buffer made)
    # and any a user registered before loading.
    allowed = {'min', 'max', 'current', 'mean'}
    allowed.update(HistoryBuffer._statistics_methods)
    if (obj is HistoryBuffer or type(obj) is HistoryBuffer) \
            and name in allowed:
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'refusing getattr({obj!r}, {name!r}) in a checkpoint: '
        'only HistoryBuffer statistics methods are allowed')


def mmengine_checkpoint_globals() -> List[Any]:
    """The allow-list entries for MMEngine 0.10.x checkpoints.

    Returns:
        list: Globals, or ``(callable, 'module.name')`` pairs for names that
        differ from the callable's own (numpy 1.x spellings, ``getattr``).
    """
    from mmengine.logging import HistoryBuffer
    try:  # numpy >= 2
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray
    # numpy builds each dtype instance as its own class (Float64DType...).
    dtype_classes = sorted(
        {
            type(np.dtype(t))
            for t in (np.bool_, np.int8, np.int16, np.int32, np.int64,
                      np.uint8, np.uint16, np.uint32, np.uint64, np.float16,
                      np.float32, np.float64)
        },
        key=str)
    entries: List[Any] = [
        HistoryBuffer, multiarray._reconstruct, multiarray.scalar, np.ndarray,
        np.dtype, *dtype_classes, (history_buffer_getattr, 'builtins.getattr')
    ]
    for fn in (multiarray._reconstruct, multiarray.scalar):
        for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
            if fn.__module__ != module:  # the other numpy's pickles
                entries.append((fn, f'{module}.{fn.__name__}'))
    return entries


def allow_mmengine_checkpoints() -> None:
    """Allow-list :func:`mmengine_checkpoint_globals` for ``torch.load``.

    A no-op on torch versions without ``add_safe_globals`` (< 2.4), which
    load these checkpoints anyway.
    """
    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is not None:
        add(mmengine_checkpoint_globals())
