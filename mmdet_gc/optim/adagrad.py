"""Adagrad with Gradient Centralization: ``Adagrad_GC`` / ``Adagrad_GCC``.

Yong et al., ECCV 2020 (arXiv:2004.01461). A thin class over the functional
:func:`adagrad_gc`, as torch's ``torch/optim/adagrad.py``.
"""
from typing import Any, List, Optional, Union

import torch
from torch import Tensor
from torch.optim.adagrad import adagrad as _torch_adagrad
from torch.optim.optimizer import _get_scalar_dtype

from . import fused as _fused
from .base import GCOptimizer, check_non_negative
from .gc import (choose_kernel, has_complex, split_step, take,
                 torch_step_on_centralized)


class Adagrad_GC(GCOptimizer):
    """Adagrad, L2 decay folded in, then GC on conv and fc gradients.

    With GC off it equals ``torch.optim.Adagrad`` exactly. Arguments as
    torch.optim.Adagrad (``foreach`` positional too; ``differentiable`` at
    its off value only; ``fused=True``: torch's fused Adagrad on centralized
    gradients, CPU only as torch's), plus ``gc`` and ``gc_conv_only``
    (param-group keys, see :class:`~mmdet_gc.optim.base.GCOptimizer`).
    """

    base_algorithm = 'Adagrad'
    refused_modes = ('differentiable', )

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
            group['foreach'],
            group['fused'],
            *self.amp_scaling(),
            lr=group['lr'],
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
               fused: Optional[bool] = None,
               grad_scale: Optional[Tensor] = None,
               found_inf: Optional[Tensor] = None,
               *,
               lr: Union[float, Tensor],
               weight_decay: float,
               lr_decay: float,
               eps: float,
               maximize: bool) -> None:
    """Adagrad with GC on the (L2-folded) gradient: ``Adagrad_GC(C)``.

    Chooses one kernel, as torch's ``adagrad`` does: ``fused`` ->
    :func:`_fused_adagrad_gc`, ``foreach`` -> :func:`_multi_tensor_adagrad_gc`,
    else :func:`_single_tensor_adagrad_gc`. Centralized gradients go
    through torch.optim's Adagrad kernels; the other tensors, and a group
    with GC off, equal ``torch.optim.Adagrad`` exactly.

    Args:
        params, grads, state_sums, state_steps: As torch.optim.adagrad.
        centralized (list[bool]): Whether GC applies to each parameter.
        foreach (bool, optional): The multi-tensor kernel; ``None`` chooses
            as torch.optim does.
        fused (bool, optional): torch's fused Adagrad on centralized
            gradients (its kernel runs on the CPU only; elsewhere the
            foreach kernel runs and one line says so).
        grad_scale, found_inf (Tensor, optional): A GradScaler's scale and
            inf flag, taken by the fused kernel only.
        lr, weight_decay, lr_decay, eps, maximize: As torch.optim.Adagrad.
    """
    if not params:
        return
    kernel = choose_kernel(params, foreach, fused, grad_scale, found_inf,
                           _single_tensor_adagrad_gc, _multi_tensor_adagrad_gc,
                           _fused_adagrad_gc)
    kernel(
        params,
        grads,
        state_sums,
        state_steps,
        centralized,
        grad_scale,
        found_inf,
        lr=lr,
        weight_decay=weight_decay,
        lr_decay=lr_decay,
        eps=eps,
        maximize=maximize)


def _step(lists: List[list], centralized: List[bool], hyper: dict,
          **kw: Any) -> None:
    """torch's Adagrad (``kw``: its kernel) on ``GC((-)g + wd * p)`` for the
    centralized tensors and on ``g`` for the others."""
    foreach = bool(kw.get('foreach'))
    split_step(
        centralized, lists, lambda *sub: torch_step_on_centralized(
            _torch_adagrad, list(sub), hyper['weight_decay'], hyper['maximize'
                                                                    ], foreach,
            dict(hyper, weight_decay=0., maximize=False)),
        lambda *sub: _torch_adagrad(
            *sub, has_complex=has_complex(sub[0]), **kw, **hyper))


def _single_tensor_adagrad_gc(params: List[Tensor], grads: List[Tensor],
                              state_sums: List[Tensor],
                              state_steps: List[Tensor],
                              centralized: List[bool],
                              grad_scale: Optional[Tensor],
                              found_inf: Optional[Tensor],
                              **hyper: Any) -> None:
    """The specification: one tensor after the other."""
    _step([params, grads, state_sums, state_steps],
          centralized,
          hyper,
          foreach=False)


def _multi_tensor_adagrad_gc(params: List[Tensor], grads: List[Tensor],
                             state_sums: List[Tensor],
                             state_steps: List[Tensor],
                             centralized: List[bool],
                             grad_scale: Optional[Tensor],
                             found_inf: Optional[Tensor],
                             **hyper: Any) -> None:
    """Foreach kernel: GC over all centralized gradients at once
    (:func:`~.gc.centralized_grads`), then torch's foreach Adagrad."""
    _step([params, grads, state_sums, state_steps],
          centralized,
          hyper,
          foreach=True)


def _fused_adagrad_gc(params: List[Tensor], grads: List[Tensor],
                      state_sums: List[Tensor], state_steps: List[Tensor],
                      centralized: List[bool], grad_scale: Optional[Tensor],
                      found_inf: Optional[Tensor], **hyper: Any) -> None:
    """torch's fused Adagrad on ``GC((-)g + wd * s * p)`` (one scratch
    buffer per device and dtype), unscaling by ``s`` and skipping on
    ``found_inf`` inside; plain tensors as
    ``torch.optim.Adagrad(fused=True)``. Tensors its kernel does not take
    (another device, complex, strided) take the single-tensor kernel."""
    how = _fused.route(
        'adagrad', 'torch', params, [grads, state_sums], steps=state_steps)
    grads = _fused.torch_fused_grads(params, grads, how, centralized,
                                     hyper['weight_decay'], hyper['maximize'],
                                     grad_scale)
    lists = [params, grads, state_sums, state_steps]
    for gc_on in (True, False):
        idx = [
            i for i, h in enumerate(how)
            if h == 'torch' and bool(centralized[i]) is gc_on
        ]
        if idx:
            kw = dict(hyper, weight_decay=0., maximize=False) if gc_on \
                else hyper
            _torch_adagrad(
                *(take(lst, idx) for lst in lists),
                fused=True,
                grad_scale=grad_scale,
                found_inf=found_inf,
                **kw)
    rest = [i for i, h in enumerate(how) if h == 'spec']
    if rest and any(p.device.type != 'cpu' for p in params):
        _fused.log_once(
            'torch has a fused Adagrad for CPU tensors only',
            'the single-tensor kernel',
            'Adagrad fused=True',
            unavailable=False)
    unscaled = _fused.host_unscale(take(grads, rest), grad_scale,
                                   found_inf) if rest else None
    if unscaled is not None:
        sub = [take(lst, rest) for lst in lists]
        sub[1] = unscaled
        _single_tensor_adagrad_gc(*sub, take(centralized, rest), None, None,
                                  **hyper)
