"""GC for any optimizer MMEngine can build, from a config.

Gradient Centralization: Yong et al., ECCV 2020 (arXiv:2004.01461).

``GCOptimWrapperConstructor`` builds the optim wrapper as MMEngine's default
constructor does (``paramwise_cfg`` and all), then registers a step
pre-hook on the optimizer that **centralizes the gradients in place**
(``p.grad``) right before every ``optimizer.step()``::

    optim_wrapper = dict(
        type='OptimWrapper',                 # or AmpOptimWrapper, ...
        constructor='GCOptimWrapperConstructor',
        gc=dict(conv_only=False),            # False: conv + fc; True: conv
        optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
        clip_grad=dict(max_norm=0.1))

Because the hook runs inside ``optimizer.step()``, it comes after whatever
the wrapper does before the step: gradient clipping (the authors' order:
clip, then GC), AMP unscaling and the inf check (``AmpOptimWrapper`` calls
the step through ``GradScaler.step``), and gradient accumulation (the step
is only taken at the accumulation boundary).

``gc=dict(on='update')`` centralizes the *update* instead, for whatever
optimizer is built (the authors' advice for adaptive methods, their "2"
variants, for AdamW, RAdam, NAdam, Adamax, SGD or your own). It needs no
copy of the weights: row means are linear, so with ``d = p_new - p_old``::

    p_old - GC(d) = p_new - mean_rows(p_new - p_old)
                  = p_new - (mean_rows(p_new) - mean_rows(p_old))

A step pre-hook records each centralized weight's row means (one number
per output row), a post-hook subtracts their change: O(rows) memory, two
reductions and one subtraction per tensor. A step that AMP skips runs
neither hook, so nothing changes. ``gc=dict(on='update', fused=True)``
does both with the compiled CPU kernels of :mod:`.fused`: the means in one
call, and after the step one pass per row that reads the new mean and
subtracts its change from cache.
"""
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from torch import Tensor
from torch.optim import Optimizer

from . import fused as _fused
from .base import GCOptimizer, warn_if_flattened
from .gc import foreach_centralize, is_centralized, row_mean

#: Where GC applies: the gradient, or the optimizer's whole update.
GC_MODES = ('grad', 'update')


def check_gc_mode(on: Any) -> None:
    """Raise ``ValueError`` unless ``on`` is one of :data:`GC_MODES`."""
    if on not in GC_MODES:
        raise ValueError(f"GC on {on!r}: choose 'grad' or 'update'")


def _centralized_params(optimizer: Optimizer) -> List[Tensor]:
    """The parameters GC applies to this step: a dense gradient, a group
    with ``gc`` on, and the shape rule of its ``gc_conv_only``."""
    out = []
    for group in optimizer.param_groups:
        if not group.get('gc', True):
            continue
        conv_only = bool(group.get('gc_conv_only', False))
        out += [
            p for p in group['params'] if p.grad is not None
            and not p.grad.is_sparse and is_centralized(p, conv_only)
        ]
    return out


def centralize_grads_(optimizer: Optimizer) -> None:
    """Centralize, in place, the gradients of ``optimizer``'s parameters.

    Honours the ``gc`` and ``gc_conv_only`` keys of each param group (a
    group without them is centralized with the ``_GC`` rule). Sparse
    gradients are left alone.

    Args:
        optimizer (Optimizer): Any torch optimizer.
    """
    foreach_centralize([p.grad for p in _centralized_params(optimizer)],
                       inplace=True)


class _UpdateGC:
    """GC on the update of any optimizer, by two step hooks (see the module
    docstring): the row means before the step, their change removed
    after.

    With ``fused``, the CPU weights the compiled kernels take
    (:mod:`.fused`: contiguous, of a floating dtype, no two sharing memory)
    are done in one call each: the means, then one pass per row that reads
    the new mean and subtracts its change from cache. The others, and all
    of them where the kernels cannot be built, take torch's ops.
    """

    def __init__(self, fused: bool = False) -> None:
        self.fused = fused
        self.before: Dict[Tensor, Tensor] = {}
        self.module: Any = None
        self.kernel: List[Tensor] = []  # the weights the kernels take
        self.kernel_before: List[Tensor] = []

    def _split(self, params: List[Tensor]) -> List[Tensor]:
        """The weights this step gives the compiled kernels (None of them
        without ``fused`` or a module)."""
        self.module = None
        cpu = [p for p in params if p.device.type == 'cpu']
        if not (self.fused and cpu):
            return []
        module = _fused.module_or_log('GC on the update with fused=True',
                                      "torch's ops")
        if module is None:
            return []
        how = _fused.route('update', 'gc', cpu)
        kernel = [p for p, h in zip(cpu, how) if h == 'gc']
        if _fused.shares_written_memory(kernel, []):
            return []  # in order, one weight after the other: torch's ops
        self.module = module
        return kernel

    @torch.no_grad()
    def record(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        params = _centralized_params(optimizer)
        self.kernel = self._split(params)
        self.kernel_before = self.module.row_means(
            self.kernel) if self.kernel else []
        taken = set(self.kernel)
        self.before = {p: row_mean(p) for p in params if p not in taken}

    @torch.no_grad()
    def restore(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        if self.kernel:
            self.module.restore_row_means_(self.kernel, self.kernel_before)
        for p, mean in self.before.items():
            p.sub_(row_mean(p).sub_(mean))
        self.before, self.kernel, self.kernel_before = {}, [], []


class _Handles:
    """Removes several hooks at once."""

    def __init__(self, *handles: Any) -> None:
        self.handles = handles

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def attach_gc(optimizer: Optimizer,
              conv_only: bool = False,
              on: str = 'grad',
              fused: bool = False) -> Any:
    """Add GC to ``optimizer``: on its gradients before every step, or on
    its whole update.

    Args:
        optimizer (Optimizer): Any torch optimizer that is not a GC
            optimizer already.
        conv_only (bool): Default of the ``gc_conv_only`` key for groups
            that do not set it. Defaults to False.
        on (str): ``'grad'`` (centralize ``p.grad`` in place before the
            step) or ``'update'`` (centralize the step's change of each
            weight, keeping its row means). Defaults to ``'grad'``.
        fused (bool): With ``on='update'``, take the row means and remove
            their change with the compiled CPU kernels (built on first use,
            as for ``fused=True`` optimizers): one pass per row after the
            step instead of two. The same results but for the last bits of
            each row mean. Defaults to False.

    Returns:
        A handle whose ``.remove()`` detaches GC.
    """
    check_gc_mode(on)
    if fused and on != 'update':
        raise ValueError("fused=True is for GC on='update' (on='grad' "
                         'centralizes the gradients with torch\'s ops)')
    if isinstance(optimizer, GCOptimizer):
        raise TypeError(
            f'{type(optimizer).__name__} applies GC itself; adding GC on '
            'top would centralize twice. Use its base optimizer with '
            'GCOptimWrapperConstructor, or drop the constructor.')
    for group in optimizer.param_groups:
        group.setdefault('gc', True)
        group.setdefault('gc_conv_only', conv_only)
        warn_if_flattened(group['params'], type(optimizer).__name__)
    if on == 'grad':
        return optimizer.register_step_pre_hook(
            lambda opt, args, kwargs: centralize_grads_(opt))
    gc = _UpdateGC(bool(fused))
    return _Handles(
        optimizer.register_step_pre_hook(gc.record),
        optimizer.register_step_post_hook(gc.restore))


class GCOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """MMEngine's default constructor plus GC on any optimizer.

    Takes one extra key in ``optim_wrapper``: ``gc=dict(conv_only=False,
    on='grad')`` (``on='update'``: GC on the optimizer's update, and
    ``fused=True`` for its compiled CPU kernels, see :func:`attach_gc`).
    Per-layer control comes through ``paramwise_cfg``, e.g.
    ``custom_keys={'rpn_head': dict(gc=False)}``.

    Args:
        optim_wrapper_cfg (dict): The ``optim_wrapper`` config.
        paramwise_cfg (dict, optional): As MMEngine's.
    """

    def __init__(self,
                 optim_wrapper_cfg: Dict,
                 paramwise_cfg: Optional[Dict] = None) -> None:
        optim_wrapper_cfg = optim_wrapper_cfg.copy()
        gc_cfg = dict(optim_wrapper_cfg.pop('gc', None) or {})
        unknown = set(gc_cfg) - {'conv_only', 'on', 'fused'}
        if unknown:
            raise ValueError(f'unknown key(s) {sorted(unknown)} in '
                             "optim_wrapper.gc; the keys are 'conv_only', "
                             "'on' and 'fused'")
        self.gc_conv_only = bool(gc_cfg.get('conv_only', False))
        self.gc_on = gc_cfg.get('on', 'grad')
        self.gc_fused = bool(gc_cfg.get('fused', False))
        check_gc_mode(self.gc_on)  # before any model is built
        if self.gc_fused and self.gc_on != 'update':
            raise ValueError("optim_wrapper.gc: fused=True is for "
                             "on='update'")
        super().__init__(optim_wrapper_cfg, paramwise_cfg)

    def __call__(self, model: nn.Module) -> OptimWrapper:
        optim_wrapper = super().__call__(model)
        attach_gc(optim_wrapper.optimizer, self.gc_conv_only, self.gc_on,
                  self.gc_fused)
        return optim_wrapper
