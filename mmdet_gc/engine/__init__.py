"""MMEngine integration of mmdet-gc, laid out as MMDetection's
``mmdet/engine``."""
from .hooks import GCStatsHook, PlainCheckpointHook, RowMeanDriftHook
from .optim_wrappers import CompiledOptimWrapper

__all__ = [
    'GCStatsHook', 'PlainCheckpointHook', 'RowMeanDriftHook',
    'CompiledOptimWrapper'
]
