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

This is GC on the gradient. The "2" variants (GC on the final update, which
keeps each weight's mean unchanged) need the optimizer's internals: use
``Adam_GC2`` / ``AdamW_GC2`` and friends for those.
"""
from typing import Any, Dict, Optional

import torch.nn as nn
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from torch.optim import Optimizer

from ..functional import foreach_centralize, is_centralized
from .base import GCOptimizer, warn_if_flattened


def centralize_grads_(optimizer: Optimizer) -> None:
    """Centralize, in place, the gradients of ``optimizer``'s parameters.

    Honours the ``gc`` and ``gc_conv_only`` keys of each param group (a
    group without them is centralized with the ``_GC`` rule). Sparse
    gradients are left alone.

    Args:
        optimizer (Optimizer): Any torch optimizer.
    """
    for group in optimizer.param_groups:
        if not group.get('gc', True):
            continue
        conv_only = bool(group.get('gc_conv_only', False))
        grads = [
            p.grad for p in group['params'] if p.grad is not None
            and not p.grad.is_sparse and is_centralized(p, conv_only)
        ]
        foreach_centralize(grads, inplace=True)


def attach_gc(optimizer: Optimizer, conv_only: bool = False) -> Any:
    """Make ``optimizer`` centralize its gradients before every step.

    Args:
        optimizer (Optimizer): Any torch optimizer that is not a GC
            optimizer already.
        conv_only (bool): Default of the ``gc_conv_only`` key for groups
            that do not set it. Defaults to False.

    Returns:
        The hook handle (``.remove()`` detaches GC).
    """
    if isinstance(optimizer, GCOptimizer):
        raise TypeError(
            f'{type(optimizer).__name__} applies GC itself; adding GC on '
            'top would centralize twice. Use its base optimizer with '
            'GCOptimWrapperConstructor, or drop the constructor.')
    for group in optimizer.param_groups:
        group.setdefault('gc', True)
        group.setdefault('gc_conv_only', conv_only)
        warn_if_flattened(group['params'], type(optimizer).__name__)
    return optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: centralize_grads_(opt))


class GCOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """MMEngine's default constructor plus GC on any optimizer.

    Takes one extra key in ``optim_wrapper``: ``gc=dict(conv_only=False)``.
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
        unknown = set(gc_cfg) - {'conv_only'}
        if unknown:
            raise ValueError(f'unknown key(s) {sorted(unknown)} in '
                             "optim_wrapper.gc; the only one is 'conv_only'")
        self.gc_conv_only = bool(gc_cfg.get('conv_only', False))
        super().__init__(optim_wrapper_cfg, paramwise_cfg)

    def __call__(self, model: nn.Module) -> OptimWrapper:
        optim_wrapper = super().__call__(model)
        attach_gc(optim_wrapper.optimizer, self.gc_conv_only)
        return optim_wrapper
