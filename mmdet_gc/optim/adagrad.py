"""Adagrad with Gradient Centralization: ``Adagrad_GC`` / ``Adagrad_GCC``.

Yong et al., ECCV 2020 (arXiv:2004.01461). A thin class over the functional
:func:`adagrad_gc`, as torch's ``torch/optim/adagrad.py``.
"""
from typing import Any, List, Optional

import torch
from torch import Tensor
from torch.optim.adagrad import adagrad as _torch_adagrad
from torch.optim.optimizer import _get_scalar_dtype

from .base import GCOptimizer, check_non_negative, scalar
from .gc import (default_foreach, has_complex, partition,
                 torch_step_on_centralized)


class Adagrad_GC(GCOptimizer):
    """Adagrad, L2 decay folded in, then GC on conv and fc gradients.

    With GC off it equals ``torch.optim.Adagrad`` exactly. Arguments as
    torch.optim.Adagrad (``foreach`` positional too; ``differentiable`` and
    ``fused`` at their off values only), plus ``gc`` and ``gc_conv_only``
    (param-group keys, see :class:`~mmdet_gc.optim.base.GCOptimizer`).
    """

    base_algorithm = 'Adagrad'

    def __init__(self,
                 params: Any,
                 lr: float = 1e-2,
                 lr_decay: float = 0.,
                 weight_decay: float = 0.,
                 initial_accumulator_value: float = 0.,
                 eps: float = 1e-10,
                 foreach: Optional[bool] = None,
                 *,
                 maximize: bool = False,
                 differentiable: bool = False,
                 fused: Optional[bool] = None,
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
            differentiable=differentiable,
            fused=fused,
            gc=gc,
            gc_conv_only=gc_conv_only)
        super().__init__(params, defaults)
        # As torch.optim.Adagrad: state made here for the first groups, and
        # lazily (with the default accumulator) for groups added later.
        for group in self.param_groups:
            for p in group['params']:
                self._init_state(p, group['initial_accumulator_value'])

    def _init_state(self, p: Tensor, initial: float) -> dict:
        state = self.state[p]
        if not state:
            state['step'] = torch.tensor(0.0, dtype=_get_scalar_dtype())
            state['sum'] = torch.full_like(
                p,
                complex(initial, initial) if p.is_complex() else initial,
                memory_format=torch.preserve_format)
        return state

    def _update_group(self, group: dict, params: List[Tensor],
                      grads: List[Tensor], centralized: List[bool]) -> None:
        states = [
            self._init_state(p, self.defaults['initial_accumulator_value'])
            for p in params
        ]
        adagrad_gc(
            params,
            grads, [s['sum'] for s in states], [s['step'] for s in states],
            centralized,
            foreach=group['foreach'],
            lr=scalar(group['lr']),
            weight_decay=group['weight_decay'],
            lr_decay=group['lr_decay'],
            eps=group['eps'],
            maximize=group['maximize'])


class Adagrad_GCC(Adagrad_GC):
    """:class:`Adagrad_GC` for conv weights only (``ndim > 3``)."""

    gc_conv_only = True


def adagrad_gc(params: List[Tensor],
               grads: List[Tensor],
               state_sums: List[Tensor],
               state_steps: List[Tensor],
               centralized: List[bool],
               foreach: Optional[bool] = None,
               *,
               lr: float,
               weight_decay: float,
               lr_decay: float,
               eps: float,
               maximize: bool) -> None:
    """Adagrad with GC on the (L2-folded) gradient: ``Adagrad_GC(C)``.

    Centralized gradients go through torch.optim's Adagrad kernel; the other
    tensors, and a group with GC off, equal ``torch.optim.Adagrad`` exactly.
    """
    if foreach is None:
        foreach = default_foreach(params)
    hyper = dict(
        lr=lr,
        weight_decay=weight_decay,
        lr_decay=lr_decay,
        eps=eps,
        maximize=maximize)
    (gc_idx, gc_lists), (plain_idx,
                         plain_lists) = partition(centralized, params, grads,
                                                  state_sums, state_steps)
    if plain_idx:
        _torch_adagrad(
            *plain_lists,
            foreach=foreach,
            has_complex=has_complex(plain_lists[0]),
            **hyper)
    if gc_idx:
        hyper.update(weight_decay=0., maximize=False)
        torch_step_on_centralized(_torch_adagrad, gc_lists, weight_decay,
                                  maximize, foreach, hyper)
