"""MMEngine integration of mmdet-gc, laid out as MMDetection's
``mmdet/engine`` (Gradient Centralization: Yong et al., ECCV 2020,
arXiv:2004.01461)."""
from .hooks import GCStatsHook, PlainCheckpointHook, RowMeanDriftHook
from .optim_wrappers import CompiledOptimWrapper

__all__ = [
    'GCStatsHook', 'PlainCheckpointHook', 'RowMeanDriftHook',
    'CompiledOptimWrapper'
]
