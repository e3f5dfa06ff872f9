"""Data transforms of mmdet-gc (Yong et al., ECCV 2020, arXiv:2004.01461)."""
from .intensity_shift import IntensityShift

__all__ = ['IntensityShift']
