"""mmdet-gc: Gradient Centralization for MMDetection 3.x / MMEngine.

Yong et al., "Gradient Centralization: A New Optimization Technique for Deep
Neural Networks", ECCV 2020 (arXiv:2004.01461).

``import mmdet_gc`` (or ``custom_imports = dict(imports=['mmdet_gc'])`` in a
config) registers the GC optimizers, ``GCOptimWrapperConstructor`` and
``PlainCheckpointHook`` in MMEngine's root registries, so
``optimizer=dict(type='SGD_GC', ...)`` builds under the ``mmdet`` scope. It
changes nothing in torch's serialization: checkpoints of our runs are plain
data that stock ``torch.load(weights_only=True)`` accepts (see
:mod:`mmdet_gc.checkpoint`).

The package carries its configs (:func:`config_path`; ``mmdet_gc::NAME``
in a ``_base_``) and the ``mmdet-gc`` command (:mod:`mmdet_gc.cli`).
"""
from .engine.hooks import GCStatsHook, PlainCheckpointHook, RowMeanDriftHook
from .optim import *  # noqa: F401,F403
from .optim import (GC_OPTIMIZERS, GCOptimizer, centralize, foreach_centralize,
                    is_centralized)
from .optim.any_optimizer import (GCOptimWrapperConstructor, attach_gc,
                                  centralize_grads_)
from .registry import (register_config_package, register_gc_hooks,
                       register_gc_optim_wrapper_constructors,
                       register_gc_optim_wrappers, register_gc_optimizers,
                       register_gc_transforms, register_resumable_loops)
from .utils import config_path

__version__ = '0.1.0'

register_gc_optimizers()
register_gc_optim_wrapper_constructors()
register_gc_optim_wrappers()
register_gc_hooks()
register_gc_transforms()
register_resumable_loops()
register_config_package()

__all__ = [
    'centralize', 'foreach_centralize', 'is_centralized', 'GC_OPTIMIZERS',
    'GCOptimizer', 'GCOptimWrapperConstructor', 'attach_gc',
    'centralize_grads_', 'PlainCheckpointHook', 'GCStatsHook',
    'RowMeanDriftHook', 'config_path', '__version__',
    *GC_OPTIMIZERS
]
