"""Measuring the paper's theorem on a trained detector.

Yong et al., ECCV 2020 (arXiv:2004.01461), Sec. 3: with GC the gradient of
every centralized weight has zero mean over each output row, so under SGD
the row means of the weights never move from their initial values, and a
layer's output is insensitive to a constant shift of its input beyond what
the initial weights give. Both sides are measured here:

- :class:`RowMeanDriftHook` records each weight's row means when training
  starts and writes their drift when it ends (``row_mean_drift.json`` in
  the work dir);
- :class:`IntensityShift` adds a constant to every pixel, for evaluating a
  detector under brightness offsets (``tools/test.py --intensity-shift``).
"""
import json
import os.path as osp
from typing import Dict

import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmengine.dist import master_only
from mmengine.hooks import Hook

#: Where the hook keeps the row means of the first training start.
INIT_FILE = 'row_means_init.pth'
#: What it writes at the end of training.
DRIFT_FILE = 'row_mean_drift.json'


def row_means(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """Row means (over every dim but 0), in float64, of each weight with
    ``ndim > 1`` (conv and fc), by parameter name."""
    return {
        name: p.detach().double().mean(dim=tuple(range(1, p.dim())))
        for name, p in model.named_parameters() if p.dim() > 1
    }


class RowMeanDriftHook(Hook):
    """Write how far each weight's row means moved during training.

    The row means at the first start of training are kept in the work dir
    (``row_means_init.pth``, plain tensors), so a resumed run still measures
    from the start. At the end, ``row_mean_drift.json`` holds per layer the
    largest ``|mean_now - mean_init|`` over its rows, and its ``ndim``
    (conv weights are 4-D, fc weights 2-D), for the report.
    """

    priority = 'LOW'

    def _model(self, runner):
        model = runner.model
        return getattr(model, 'module', model)

    @master_only
    def before_train(self, runner) -> None:
        path = osp.join(runner.work_dir, INIT_FILE)
        if runner.iter == 0 or not osp.isfile(path):
            torch.save(row_means(self._model(runner)), path)

    @master_only
    def after_train(self, runner) -> None:
        init = torch.load(
            osp.join(runner.work_dir, INIT_FILE), map_location='cpu')
        params = dict(self._model(runner).named_parameters())
        now = row_means(self._model(runner))
        drift = {
            name:
            dict(
                max_drift=float((now[name] - init[name]).abs().max()),
                ndim=params[name].dim())
            for name in now if name in init
        }
        with open(osp.join(runner.work_dir, DRIFT_FILE), 'w') as f:
            json.dump(dict(iter=runner.iter, layers=drift), f, indent=1)


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
