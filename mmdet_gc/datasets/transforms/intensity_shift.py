"""A constant brightness offset, for testing a detector under shifted
inputs.

Yong et al., ECCV 2020 (arXiv:2004.01461), Sec. 3: with GC, a layer's
output is insensitive to a constant shift of its input beyond what the
initial weights give; ``tools/test.py --intensity-shift OFFSET`` (and the
GC studies) evaluate a detector with :class:`IntensityShift` in its test
pipeline.
"""
import numpy as np
from mmcv.transforms import BaseTransform


class IntensityShift(BaseTransform):
    """Add ``offset`` to every pixel, clipped to the image dtype's range.

    Args:
        offset (float): The brightness offset in pixel values (e.g. -40).
    """

    def __init__(self, offset: float = 0.) -> None:
        self.offset = float(offset)

    def transform(self, results: dict) -> dict:
        img = results['img']
        if self.offset:
            shifted = img.astype(np.float32) + self.offset
            hi = 255 if img.dtype == np.uint8 else np.finfo(np.float32).max
            results['img'] = np.clip(shifted, 0, hi).astype(img.dtype)
        return results

    def __repr__(self) -> str:
        return f'{type(self).__name__}(offset={self.offset})'
