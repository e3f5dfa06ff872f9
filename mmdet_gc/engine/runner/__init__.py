"""Training loops that resume a run bitwise, mid-epoch and at once."""
from .loops import ResumableEpochBasedTrainLoop, ResumableIterBasedTrainLoop

__all__ = ['ResumableEpochBasedTrainLoop', 'ResumableIterBasedTrainLoop']
