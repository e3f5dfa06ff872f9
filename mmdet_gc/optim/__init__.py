"""The GC optimizer family (Yong et al., ECCV 2020, arXiv:2004.01461)."""
from .adagrad import Adagrad_GC, Adagrad_GCC
from .adam import (Adam_GC, Adam_GC2, Adam_GCC, Adam_GCC2, AdamW_GC, AdamW_GC2,
                   AdamW_GCC, AdamW_GCC2)
from .base import GCOptimizer
from .sgd import SGD_GC, SGD_GCC, SGDW_GC, SGDW_GCC

#: Every GC optimizer by its registry name.
GC_OPTIMIZERS = {
    cls.__name__: cls
    for cls in (SGD_GC, SGD_GCC, SGDW_GC, SGDW_GCC, Adam_GC, Adam_GCC,
                Adam_GC2, Adam_GCC2, AdamW_GC, AdamW_GCC, AdamW_GC2,
                AdamW_GCC2, Adagrad_GC, Adagrad_GCC)
}

__all__ = ['GCOptimizer', 'GC_OPTIMIZERS', *GC_OPTIMIZERS]
