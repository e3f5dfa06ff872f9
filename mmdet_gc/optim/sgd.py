"""SGD with Gradient Centralization: ``SGD_GC`` and ``SGD_GCC``.

Yong et al., "Gradient Centralization: A New Optimization Technique for Deep
Neural Networks", ECCV 2020 (arXiv:2004.01461). The maths lives in
:func:`mmdet_gc.functional.sgd_gc`.
"""
from typing import Any, List, Optional

import torch
from torch import Tensor

from ..functional import default_foreach, sgd_gc
from ..fused import fused_sgd_gc
from .base import GCOptimizer, check_non_negative, scalar


class SGD_GC(GCOptimizer):
    """SGD (momentum, dampening, nesterov, L2 decay) with GC.

    The step, per parameter, in the order the paper's results used::

        d = grad + weight_decay * p       # L2 decay first...
        d = GC(d)                         # ...then GC, decay term included
        buf = d | momentum * buf + (1 - dampening) * d
        d = d + momentum * buf if nesterov else buf
        p = p - lr * d

    ``SGD_GC`` centralizes conv and fc weights (``ndim > 1``), ``SGD_GCC``
    conv weights only (``ndim > 3``). Biases and norm parameters are never
    centralized. A param group with ``gc=False``, and every tensor that is
    not centralized, takes torch.optim.SGD's own kernel, so it equals
    ``torch.optim.SGD`` exactly. ``p.grad`` is never modified.

    Args:
        params (iterable): Parameters or param groups.
        lr (float | Tensor): Learning rate. Defaults to 1e-3 (as
            torch.optim.SGD).
        momentum (float): Momentum factor. Defaults to 0.
        dampening (float): Dampening for momentum. Defaults to 0.
        weight_decay (float): L2 penalty, folded into the gradient before
            GC. Defaults to 0.
        nesterov (bool): Nesterov momentum. Defaults to False.
        maximize (bool): Maximize the objective. Defaults to False.
        foreach (bool, optional): Use the multi-tensor kernel; ``None``
            chooses as torch.optim does (foreach on CUDA, a loop on CPU).
        differentiable (bool): Only False (torch's default) is supported.
        fused (bool, optional): Use the compiled CPU kernel of
            :mod:`mmdet_gc.fused` (parallel over weight rows; compiled on
            first use and cached). Where it cannot be built, and for
            tensors off the CPU, one line is logged and the Python kernels
            run. ``None`` / False: the Python kernels (opt-in, as torch's
            fused SGD). Cannot be True together with ``foreach``.
        gc (bool): Apply GC at all (a param-group key). Defaults to True.
        gc_conv_only (bool, optional): Centralize conv weights only (a
            param-group key). Defaults to False for ``SGD_GC`` and True for
            ``SGD_GCC``.

    Example:
        >>> optim_wrapper = dict(optimizer=dict(
        ...     type='SGD_GC', lr=0.02, momentum=0.9, weight_decay=0.0001))
    """

    base_algorithm = 'SGD'
    #: Decoupled weight decay (SGDW) instead of an L2 penalty.
    decoupled: bool = False
    #: ``fused`` is supported (:mod:`mmdet_gc.fused`).
    torch_modes = ('differentiable', )

    def __init__(self,
                 params: Any,
                 lr: float = 1e-3,
                 momentum: float = 0.,
                 dampening: float = 0.,
                 weight_decay: float = 0.,
                 nesterov: bool = False,
                 *,
                 maximize: bool = False,
                 foreach: Optional[bool] = None,
                 differentiable: bool = False,
                 fused: Optional[bool] = None,
                 gc: bool = True,
                 gc_conv_only: Optional[bool] = None) -> None:
        check_non_negative(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError('Invalid nesterov: Nesterov momentum requires '
                             'momentum > 0 and dampening == 0 (got '
                             f'momentum={momentum}, dampening={dampening})')
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
            foreach=foreach,
            differentiable=differentiable,
            fused=fused,
            gc=gc,
            gc_conv_only=gc_conv_only)
        super().__init__(params, defaults)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault('nesterov', False)
            group.setdefault('dampening', 0.)
            group.setdefault('fused', None)

    def _update_group(self, group: dict, params: List[Tensor],
                      grads: List[Tensor], centralized: List[bool]) -> None:
        momentum = group['momentum']
        lr = scalar(group['lr'])
        hyper = dict(
            weight_decay=scalar(group['weight_decay']),
            momentum=momentum,
            lr=lr,
            dampening=group['dampening'],
            nesterov=group['nesterov'],
            maximize=group['maximize'])
        bufs = [
            self.state[p].get('momentum_buffer') if momentum != 0 else None
            for p in params
        ]
        if group['fused'] and params:
            # SGDW's decay is fused into the kernel as well.
            fused_sgd_gc(
                params, grads, bufs, centralized, decoupled=self.decoupled,
                **hyper)
        else:
            if self.decoupled and hyper['weight_decay'] != 0 and params:
                # p = p_old - lr * d - lr * wd * p_old: scale first, then
                # the (decay-free) SGD step below adds -lr * d.
                scale = 1 - lr * hyper['weight_decay']
                if group['foreach'] or (group['foreach'] is None
                                        and default_foreach(params)):
                    torch._foreach_mul_(params, scale)
                else:
                    for p in params:
                        p.mul_(scale)
                hyper['weight_decay'] = 0.
            sgd_gc(
                params,
                grads,
                bufs,
                centralized,
                foreach=group['foreach'],
                **hyper)
        if momentum != 0:
            for p, buf in zip(params, bufs):
                self.state[p]['momentum_buffer'] = buf


class SGD_GCC(SGD_GC):
    """:class:`SGD_GC` that centralizes conv weights only (``ndim > 3``).

    Linear and Conv1d weights are updated as plain SGD. Same arguments as
    :class:`SGD_GC`.
    """

    gc_conv_only = True


class SGDW_GC(SGD_GC):
    """SGD with decoupled weight decay (SGDW) and GC on conv and fc weights.

    GC on the raw gradient, momentum as :class:`SGD_GC`, and the decay
    applied to the weights apart from the gradient::

        d = GC(grad); buf = ...; d = buf (or nesterov)
        p = p - lr * d - lr * weight_decay * p_old

    Same arguments as :class:`SGD_GC`.
    """

    base_algorithm = 'SGDW'
    decoupled = True


class SGDW_GCC(SGDW_GC):
    """:class:`SGDW_GC` for conv weights only (``ndim > 3``)."""

    gc_conv_only = True
