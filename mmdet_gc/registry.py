"""mmdet-gc's registries, and the registration of its modules.

The ``mmdet_gc`` scope has a child of each of mmdet's registries, so that
a config inherited as ``mmdet_gc::NAME`` (whose dicts MMEngine marks with
``_scope_='mmdet_gc'``) resolves with no scope warning. The modules
themselves are registered in MMEngine's root registries, the parents of
mmdet's (``mmdet.registry.OPTIMIZERS`` ...), so the names resolve under the
``mmdet`` scope and any other downstream scope. One function per family,
as ``mmengine/optim/optimizer/builder.py`` has.
"""
from typing import Dict, List

import mmdet.registry as mmdet_registry
from mmengine import registry as root
from mmengine.registry import Registry


def _child(parent: Registry) -> Registry:
    """A registry of the ``mmdet_gc`` scope under mmdet's ``parent``: what
    ``_scope_='mmdet_gc'`` (which MMEngine writes into the dicts of a
    config inherited as ``mmdet_gc::NAME``) resolves to, finding every
    mmdet and MMEngine module through its parents. Our modules themselves
    are registered in MMEngine's root registries (below), so they build
    under the ``mmdet`` scope and any other as well. Its locations, imported
    when the scope is first used, are ``mmdet_gc`` (which registers ours)
    and mmdet's own for that registry (its parent's lookups do not import
    them)."""
    return Registry(
        parent.name,
        parent=parent,
        scope='mmdet_gc',
        locations=['mmdet_gc', *parent._locations])


# Child registries of mmdet's, as OpenMMLab's downstream packages define
# theirs (mmyolo's ``registry.py``).
RUNNERS = _child(mmdet_registry.RUNNERS)
RUNNER_CONSTRUCTORS = _child(mmdet_registry.RUNNER_CONSTRUCTORS)
LOOPS = _child(mmdet_registry.LOOPS)
HOOKS = _child(mmdet_registry.HOOKS)
DATASETS = _child(mmdet_registry.DATASETS)
DATA_SAMPLERS = _child(mmdet_registry.DATA_SAMPLERS)
TRANSFORMS = _child(mmdet_registry.TRANSFORMS)
MODELS = _child(mmdet_registry.MODELS)
MODEL_WRAPPERS = _child(mmdet_registry.MODEL_WRAPPERS)
WEIGHT_INITIALIZERS = _child(mmdet_registry.WEIGHT_INITIALIZERS)
OPTIMIZERS = _child(mmdet_registry.OPTIMIZERS)
OPTIM_WRAPPERS = _child(mmdet_registry.OPTIM_WRAPPERS)
OPTIM_WRAPPER_CONSTRUCTORS = _child(
    mmdet_registry.OPTIM_WRAPPER_CONSTRUCTORS)
PARAM_SCHEDULERS = _child(mmdet_registry.PARAM_SCHEDULERS)
METRICS = _child(mmdet_registry.METRICS)
EVALUATOR = _child(mmdet_registry.EVALUATOR)
TASK_UTILS = _child(mmdet_registry.TASK_UTILS)
VISUALIZERS = _child(mmdet_registry.VISUALIZERS)
VISBACKENDS = _child(mmdet_registry.VISBACKENDS)
LOG_PROCESSORS = _child(mmdet_registry.LOG_PROCESSORS)


def _qualname(obj: object) -> str:
    return f'{obj.__module__}.{obj.__qualname__}'


def register_modules(registry: Registry, classes: Dict[str,
                                                       type]) -> List[str]:
    """Register ``classes`` (name -> class) in ``registry``.

    Idempotent: a name already bound to the same class (also after a module
    reload) is left as it is. A name that something else registered first
    raises a ``KeyError`` naming both, instead of shadowing it (no
    ``force=True``).

    Args:
        registry (Registry): An MMEngine registry.
        classes (dict[str, type]): Registry names and classes.

    Returns:
        list[str]: The names that were newly registered.
    """
    added = []
    for name, cls in classes.items():
        existing = registry.module_dict.get(name)
        if existing is not None:
            if _qualname(existing) == _qualname(cls):
                continue
            raise KeyError(
                f'mmdet_gc cannot register {name!r} ({_qualname(cls)}): '
                f'MMEngine\'s {registry.name} registry already holds '
                f'{_qualname(existing)} under that name. Remove the other '
                'registration or import only one of them.')
        registry.register_module(name=name, module=cls)
        added.append(name)
    return added


def register_gc_optimizers() -> List[str]:
    """Register the 14 GC optimizers in ``OPTIMIZERS``."""
    from .optim import GC_OPTIMIZERS
    return register_modules(root.OPTIMIZERS, GC_OPTIMIZERS)


def register_gc_optim_wrapper_constructors() -> List[str]:
    """Register ``GCOptimWrapperConstructor`` (GC for any optimizer)."""
    from .optim.any_optimizer import GCOptimWrapperConstructor
    return register_modules(
        root.OPTIM_WRAPPER_CONSTRUCTORS,
        {'GCOptimWrapperConstructor': GCOptimWrapperConstructor})


def register_gc_optim_wrappers() -> List[str]:
    """Register ``CompiledOptimWrapper`` (a compiled optimizer step)."""
    from .engine.optim_wrappers import CompiledOptimWrapper
    return register_modules(root.OPTIM_WRAPPERS,
                            {'CompiledOptimWrapper': CompiledOptimWrapper})


def register_gc_hooks() -> List[str]:
    """Register ``PlainCheckpointHook`` (plain-data checkpoints),
    ``ResumableCheckpointHook`` (checkpoints that resume bitwise),
    ``RowMeanDriftHook`` (the paper's theorem, measured) and
    ``GCStatsHook`` (GC diagnostics in the training log)."""
    from .engine.hooks import (GCStatsHook, PlainCheckpointHook,
                               ResumableCheckpointHook, RowMeanDriftHook)
    return register_modules(
        root.HOOKS, {
            'PlainCheckpointHook': PlainCheckpointHook,
            'ResumableCheckpointHook': ResumableCheckpointHook,
            'RowMeanDriftHook': RowMeanDriftHook,
            'GCStatsHook': GCStatsHook
        })


def register_resumable_loops() -> List[str]:
    """Register the training loops that resume bitwise and mid-epoch, and
    the file backend whose writes are atomic (their checkpoints')."""
    from mmengine.fileio.backends import backends, register_backend

    from .engine.hooks.resumable_checkpoint_hook import ATOMIC_BACKEND
    from .engine.runner import (ResumableEpochBasedTrainLoop,
                                ResumableIterBasedTrainLoop)
    from .utils.atomic_file import AtomicLocalBackend
    if ATOMIC_BACKEND not in backends:
        register_backend(ATOMIC_BACKEND, AtomicLocalBackend)
    return register_modules(
        root.LOOPS, {
            'ResumableIterBasedTrainLoop': ResumableIterBasedTrainLoop,
            'ResumableEpochBasedTrainLoop': ResumableEpochBasedTrainLoop
        })


def register_gc_transforms() -> List[str]:
    """Register ``IntensityShift`` (evaluation under brightness offsets)."""
    from .datasets import IntensityShift
    return register_modules(root.TRANSFORMS,
                            {'IntensityShift': IntensityShift})


def register_config_package() -> None:
    """Let configs inherit ours as ``_base_ = 'mmdet_gc::NAME'``.

    MMEngine follows ``package::NAME`` only for the packages in its
    ``MODULE2PACKAGE`` table, to ``<package>/.mim/configs/NAME``, where the
    wheel carries our configs. The base is read when the config is parsed,
    before its ``custom_imports``: the process must have imported
    ``mmdet_gc`` already (``mmdet-gc train`` and ``tools/*.py`` have).
    """
    from mmengine.config import utils

    # MMEngine looks the package up as a distribution first, whose location
    # is wrong for an editable install, then by module spec. A module of
    # ours names no distribution and its spec lies in the package directory,
    # so ``mmdet_gc::`` resolves to the imported copy however it was
    # installed (as :func:`mmdet_gc.config_path` does).
    utils.MODULE2PACKAGE.setdefault('mmdet_gc', __name__)
