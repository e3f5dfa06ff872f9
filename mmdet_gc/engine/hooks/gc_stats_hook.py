"""How much gradient energy GC removes, logged while training.

Yong et al., ECCV 2020 (arXiv:2004.01461): GC projects each conv / fc
gradient onto the hyperplane of zero row mean. :class:`GCStatsHook` logs,
every N iterations and per module group, the share of gradient energy that
projection removes and how far the weight row means moved.
"""
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

import torch
from mmengine.hooks import Hook

from ...optim.gc import row_mean
from .row_mean_drift_hook import drifts, row_means


def removed_energy(grad: torch.Tensor) -> Tuple[float, float]:
    """``(||row means||^2 * cols, ||g||^2)`` of a gradient: the energy GC
    removes (``||g - GC(g)||^2``) and the whole, in float64."""
    cols = grad[0].numel()
    return (float(
        row_mean(grad.detach(), torch.float64, keepdim=False).square().sum() *
        cols), float(grad.detach().double().square().sum()))


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
        self.start = row_means(self._weights(runner))
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
        weights = self._weights(runner)
        moved = drifts(self.start, row_means(weights))
        for name, p in weights:
            group = self._group(name)
            if p.grad is not None and not p.grad.is_sparse:
                r, t = removed_energy(p.grad)
                removed[group] += r
                total[group] += t
            if name in moved:
                drift[group] = max(drift[group], moved[name])
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
