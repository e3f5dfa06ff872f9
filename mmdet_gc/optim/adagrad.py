"""Adagrad with Gradient Centralization: ``Adagrad_GC`` / ``Adagrad_GCC``.

Yong et al., ECCV 2020 (arXiv:2004.01461). The maths lives in
:func:`mmdet_gc.functional.adagrad_gc`.
"""
from typing import Any, List, Optional

import torch
from torch import Tensor
from torch.optim.optimizer import _get_scalar_dtype

from ..functional import adagrad_gc
from .base import GCOptimizer, check_non_negative


class Adagrad_GC(GCOptimizer):
    """Adagrad, L2 decay folded in, then GC on conv and fc gradients.

    With GC off it equals ``torch.optim.Adagrad`` exactly. Arguments as
    torch.optim.Adagrad, plus ``gc`` and ``gc_conv_only`` (param-group
    keys, see :class:`~mmdet_gc.optim.base.GCOptimizer`).
    """

    base_algorithm = 'Adagrad'

    def __init__(self,
                 params: Any,
                 lr: float = 1e-2,
                 lr_decay: float = 0.,
                 weight_decay: float = 0.,
                 initial_accumulator_value: float = 0.,
                 eps: float = 1e-10,
                 *,
                 maximize: bool = False,
                 foreach: Optional[bool] = None,
                 gc: bool = True,
                 gc_conv_only: Optional[bool] = None) -> None:
        check_non_negative(
            lr=lr,
            lr_decay=lr_decay,
            weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value,
            eps=eps)
        defaults = dict(
            lr=lr,
            lr_decay=lr_decay,
            weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value,
            eps=eps,
            maximize=maximize,
            foreach=foreach,
            gc=gc,
            gc_conv_only=gc_conv_only)
        super().__init__(params, defaults)
        for group in self.param_groups:  # as torch.optim.Adagrad
            for p in group['params']:
                state = self.state[p]
                state['step'] = torch.tensor(0.0, dtype=_get_scalar_dtype())
                state['sum'] = torch.full_like(
                    p,
                    group['initial_accumulator_value'],
                    memory_format=torch.preserve_format)

    def _update_group(self, group: dict, params: List[Tensor],
                      grads: List[Tensor], centralized: List[bool]) -> None:
        states = [self.state[p] for p in params]
        adagrad_gc(
            params,
            grads, [s['sum'] for s in states], [s['step'] for s in states],
            centralized,
            foreach=group['foreach'],
            lr=group['lr'],
            weight_decay=group['weight_decay'],
            lr_decay=group['lr_decay'],
            eps=group['eps'],
            maximize=group['maximize'])


class Adagrad_GCC(Adagrad_GC):
    """:class:`Adagrad_GC` for conv weights only (``ndim > 3``)."""

    gc_conv_only = True
