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
  detector under brightness offsets (``tools/test.py --intensity-shift``);
- :class:`GCStatsHook` logs, every N iterations and per module group, how
  much gradient energy GC removes and how far the weight row means moved.
"""
import json
import os.path as osp
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmengine.dist import master_only
from mmengine.hooks import Hook

#: Where the hook keeps the row means of the first training start.
INIT_FILE = 'row_means_init.pth'
#: What it writes at the end of training.
DRIFT_FILE = 'row_mean_drift.json'


def row_mean64(t: torch.Tensor) -> torch.Tensor:
    """The mean of each output row (over every dim but 0), in float64."""
    return t.detach().double().mean(dim=tuple(range(1, t.dim())))


def row_means(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """:func:`row_mean64` of each weight with ``ndim > 1`` (conv and fc),
    by parameter name."""
    return {
        name: row_mean64(p)
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


def removed_energy(grad: torch.Tensor) -> Tuple[float, float]:
    """``(||row means||^2 * cols, ||g||^2)`` of a gradient: the energy GC
    removes (``||g - GC(g)||^2``) and the whole, in float64."""
    cols = grad[0].numel()
    return (float(row_mean64(grad).square().sum() * cols),
            float(grad.detach().double().square().sum()))


class GCStatsHook(Hook):
    """Log what GC does inside a model, per module group (off by default).

    Every ``interval`` iterations, for the weights GC applies to (``ndim >
    1``, or ``ndim > 3`` for a group with ``gc_conv_only``; none in a group
    with ``gc=False``), per top-level module (``backbone``, ``neck``,
    ``rpn_head``, ``roi_head``...):

    - ``train/gc_removed/<group>``: the share of gradient energy GC
      removes, ``sum ||row means||^2 * cols / sum ||g||^2``, read from the
      gradients the optimizer is about to use (after clipping and AMP
      unscaling, before GC);
    - ``train/gc_drift/<group>``: the largest drift of a weight row mean
      from its value when training started.

    The scalars go through MMEngine's message hub, so they reach the text
    log, the JSON scalars and any visualizer backend::

        custom_hooks = [dict(type='GCStatsHook', interval=50)]

    Args:
        interval (int): Log every this many iterations. Defaults to 50.
    """

    priority = 'LOW'

    def __init__(self, interval: int = 50) -> None:
        if interval < 1:
            raise ValueError(f'GCStatsHook interval must be >= 1, got '
                             f'{interval}')
        self.interval = interval
        self.start: Dict[str, torch.Tensor] = {}
        self._handle = None
        self._runner = None

    @staticmethod
    def _group(name: str) -> str:
        return name.split('.')[0]

    def _weights(self, runner) -> List[Tuple[str, torch.Tensor]]:
        """``(name, param)`` of the weights GC applies to."""
        model = getattr(runner.model, 'module', runner.model)
        names = {id(p): n for n, p in model.named_parameters()}
        out = []
        for group in runner.optim_wrapper.optimizer.param_groups:
            if not group.get('gc', True):
                continue
            min_dim = 3 if group.get('gc_conv_only', False) else 1
            out += [(names[id(p)], p) for p in group['params']
                    if id(p) in names and p.dim() > min_dim]
        return out

    def before_train(self, runner) -> None:
        self._runner = runner
        self.start = {n: row_mean64(p) for n, p in self._weights(runner)}
        optimizer = runner.optim_wrapper.optimizer
        self._handle = optimizer.register_step_pre_hook(self._on_step)
        # First among the step pre-hooks, so that it reads the gradients
        # before the any-optimizer GC hook centralizes them (torch has no
        # ``prepend`` for optimizer hooks; its hook dict is ordered).
        hooks = getattr(optimizer, '_optimizer_step_pre_hooks', None)
        if hooks is not None and self._handle.id in hooks:
            hooks.move_to_end(self._handle.id, last=False)

    def after_train(self, runner) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _due(self) -> bool:
        return (self._runner.iter + 1) % self.interval == 0

    @torch.no_grad()
    def _on_step(self, optimizer, args, kwargs) -> None:
        if self._runner is None or not self._due():
            return
        self.log(self._runner)

    @torch.no_grad()
    def stats(self, runner) -> Dict[str, float]:
        """The scalars, by message-hub key, from the current gradients and
        weights."""
        removed: Dict[str, float] = defaultdict(float)
        total: Dict[str, float] = defaultdict(float)
        drift: Dict[str, float] = defaultdict(float)
        for name, p in self._weights(runner):
            group = self._group(name)
            if p.grad is not None and not p.grad.is_sparse:
                r, t = removed_energy(p.grad)
                removed[group] += r
                total[group] += t
            if name in self.start:
                moved = (row_mean64(p) - self.start[name]).abs().max()
                drift[group] = max(drift[group], float(moved))
        out = {
            f'train/gc_removed/{g}': removed[g] / total[g]
            for g in total if total[g] > 0
        }
        out.update({f'train/gc_drift/{g}': d for g, d in drift.items()})
        return out

    def log(self, runner) -> Optional[Dict[str, float]]:
        values = self.stats(runner)
        for key, value in values.items():
            runner.message_hub.update_scalar(key, value)
        return values
