"""Data of mmdet-gc: a synthetic COCO-format set for demos and tests, and the
brightness-shift transform of the GC studies."""
from .synthetic_coco import CLASSES, make_synthetic_coco
from .transforms import IntensityShift

__all__ = ['CLASSES', 'make_synthetic_coco', 'IntensityShift']
