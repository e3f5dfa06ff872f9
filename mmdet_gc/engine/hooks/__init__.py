"""Hooks of mmdet-gc: GC diagnostics, plain-data checkpoints and
checkpoints that resume bitwise."""
from .gc_stats_hook import GCStatsHook
from .plain_checkpoint_hook import PlainCheckpointHook
from .resumable_checkpoint_hook import ResumableCheckpointHook
from .row_mean_drift_hook import RowMeanDriftHook

__all__ = [
    'GCStatsHook', 'PlainCheckpointHook', 'ResumableCheckpointHook',
    'RowMeanDriftHook'
]
