"""Module paths of mmdet-gc 0.1 that moved, kept for one release.

Gradient Centralization: Yong et al., ECCV 2020 (arXiv:2004.01461).

The package is laid out as ``torch.optim`` and MMDetection lay theirs out
(``mmdet_gc.optim.sgd``, ``mmdet_gc.engine.hooks``...). A user's import of
an old path (``from mmdet_gc.functional import sgd_gc``) still works: it
gets a module that looks each name up in the modules that hold it now, and
a ``DeprecationWarning`` that names them. Only the names below are served,
so nothing else of the import system changes.
"""
import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any, Dict, Optional, Sequence, Tuple

#: Old module path -> the modules that hold its names now.
MOVED: Dict[str, Tuple[str, ...]] = {
    'mmdet_gc.functional':
    ('mmdet_gc.optim.gc', 'mmdet_gc.optim.sgd', 'mmdet_gc.optim.adam',
     'mmdet_gc.optim.adagrad', 'mmdet_gc.optim.fused'),
    'mmdet_gc.fused':
    ('mmdet_gc.optim.fused', 'mmdet_gc.optim.sgd', 'mmdet_gc.optim.adam'),
    'mmdet_gc.diagnostics': ('mmdet_gc.engine.hooks.row_mean_drift_hook',
                             'mmdet_gc.engine.hooks.gc_stats_hook',
                             'mmdet_gc.datasets.transforms.intensity_shift'),
    'mmdet_gc.report': ('mmdet_gc.study.report', ),
    'mmdet_gc.runner_utils': ('mmdet_gc.cli.runner', 'mmdet_gc.utils.config'),
    'mmdet_gc.data': ('mmdet_gc.datasets', ),
    'mmdet_gc.data.synthetic_coco': ('mmdet_gc.datasets.synthetic_coco', ),
}


class _Moved(types.ModuleType):
    """An old module path: each name from the first module that has it."""

    def __init__(self, name: str, targets: Sequence[str]) -> None:
        super().__init__(name, f'Moved to {", ".join(targets)}.')
        self.__path__ = []  # type: ignore  # mmdet_gc.data had submodules
        self._targets = tuple(targets)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith('__'):
            raise AttributeError(attr)
        for target in self._targets:
            module = importlib.import_module(target)
            if hasattr(module, attr):
                return getattr(module, attr)
        raise AttributeError(f'module {self.__name__!r} (moved to '
                             f'{", ".join(self._targets)}) has no attribute '
                             f'{attr!r}')

    def __dir__(self) -> list:
        names = set()
        for target in self._targets:
            names.update(dir(importlib.import_module(target)))
        return sorted(names)


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves exactly the paths of :data:`MOVED`."""

    def find_spec(
            self,
            fullname: str,
            path: Any = None,
            target: Any = None) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        targets = MOVED[spec.name]
        warnings.warn(
            f'{spec.name} is deprecated and will be removed in the next '
            f'release; import from {" or ".join(targets)} instead',
            DeprecationWarning,
            stacklevel=2)
        return _Moved(spec.name, targets)

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def install() -> None:
    """Serve the old paths (once per process)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
