"""Training loops that resume a run bitwise, mid-epoch and at once, and the
runner that takes the model the tools built."""
from .loops import ResumableEpochBasedTrainLoop, ResumableIterBasedTrainLoop
from .prebuilt_model_runner import PrebuiltModelRunner, model_built

__all__ = [
    'ResumableEpochBasedTrainLoop', 'ResumableIterBasedTrainLoop',
    'PrebuiltModelRunner', 'model_built'
]
