"""The GC optimizer family (Yong et al., ECCV 2020, arXiv:2004.01461).

Laid out as ``torch/optim``: one module per algorithm family (:mod:`.sgd`,
:mod:`.adam`, :mod:`.adagrad`), each holding its classes, its functional API
and its single-tensor (the specification), multi-tensor and fused kernels;
the GC maths they share in :mod:`.gc`; the compiled kernels' build and
eligibility in :mod:`.fused`; what every GC optimizer shares in
:mod:`.base`; and GC for any optimizer in :mod:`.any_optimizer`.
"""
from .adagrad import Adagrad_GC, Adagrad_GCC, adagrad_gc
from .adam import (Adam_GC, Adam_GC2, Adam_GCC, Adam_GCC2, AdamW_GC, AdamW_GC2,
                   AdamW_GCC, AdamW_GCC2, adam_gc)
from .base import GCOptimizer
from .gc import centralize, foreach_centralize, is_centralized
from .sgd import SGD_GC, SGD_GCC, SGDW_GC, SGDW_GCC, sgd_gc

#: Every GC optimizer by its registry name.
GC_OPTIMIZERS = {
    cls.__name__: cls
    for cls in (SGD_GC, SGD_GCC, SGDW_GC, SGDW_GCC, Adam_GC, Adam_GCC,
                Adam_GC2, Adam_GCC2, AdamW_GC, AdamW_GCC, AdamW_GC2,
                AdamW_GCC2, Adagrad_GC, Adagrad_GCC)
}

__all__ = [
    'GCOptimizer', 'GC_OPTIMIZERS', 'sgd_gc', 'adam_gc', 'adagrad_gc',
    'centralize', 'foreach_centralize', 'is_centralized', *GC_OPTIMIZERS
]
