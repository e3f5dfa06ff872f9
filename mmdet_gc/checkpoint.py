"""Load MMEngine checkpoints under ``torch.load(weights_only=True)``.

Since torch 2.6, ``torch.load`` defaults to ``weights_only=True``, which
refuses any pickled global that is not allow-listed. Checkpoints written by
MMEngine 0.10.x hold a few such globals in their ``meta`` (the message hub's
``HistoryBuffer`` and the numpy arrays and scalars inside it), so mmengine
0.10.7 cannot ``--resume`` or test its own checkpoints on torch >= 2.6.

Rather than switching ``weights_only`` off (which would let any checkpoint
run code), :func:`allow_mmengine_checkpoints` adds exactly those plain-data
types to torch's allow-list; everything else is still refused.

(Gradient Centralization: Yong et al., ECCV 2020, arXiv:2004.01461; this
module only makes the package's training runs resumable.)
"""
from typing import List

import numpy as np
import torch


def mmengine_checkpoint_globals() -> List[object]:
    """The non-tensor globals that MMEngine 0.10.x checkpoints pickle.

    Returns:
        list: ``HistoryBuffer`` and the numpy reconstruction helpers, array,
        dtype classes and scalar constructor (numpy 1.x and 2.x spellings).
    """
    from mmengine.logging import HistoryBuffer
    try:  # numpy >= 2
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray
    dtype_classes = {
        type(np.dtype(t))
        for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8,
                  np.uint16, np.uint32, np.uint64, np.float16, np.float32,
                  np.float64)
    }
    return [
        HistoryBuffer, multiarray._reconstruct, multiarray.scalar, np.ndarray,
        np.dtype, *sorted(dtype_classes, key=str)
    ]


def allow_mmengine_checkpoints() -> None:
    """Allow-list :func:`mmengine_checkpoint_globals` for ``torch.load``.

    A no-op on torch versions without ``add_safe_globals`` (< 2.4), which
    load these checkpoints anyway.
    """
    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is not None:
        add(mmengine_checkpoint_globals())
