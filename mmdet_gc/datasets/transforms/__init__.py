"""Data transforms of mmdet-gc."""
from .intensity_shift import IntensityShift

__all__ = ['IntensityShift']
