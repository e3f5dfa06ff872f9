"""Adam and AdamW with Gradient Centralization.

Yong et al., "Gradient Centralization: A New Optimization Technique for Deep
Neural Networks", ECCV 2020 (arXiv:2004.01461). The maths lives in
:func:`mmdet_gc.functional.adam_gc`.

=============  ========  ===========================  ======================
name           decay     GC on                        centralized tensors
=============  ========  ===========================  ======================
Adam_GC        L2        the (L2-folded) gradient     conv + fc (ndim > 1)
Adam_GCC       L2        the (L2-folded) gradient     conv (ndim > 3)
Adam_GC2       L2        the update (mean kept)       conv + fc
Adam_GCC2      L2        the update (mean kept)       conv
AdamW_GC       decoupled the raw gradient             conv + fc
AdamW_GCC      decoupled the raw gradient             conv
AdamW_GC2      decoupled the update incl. decay term  conv + fc
AdamW_GCC2     decoupled the update incl. decay term  conv
=============  ========  ===========================  ======================
"""
from typing import Any, List, Optional, Tuple

import torch
from torch import Tensor
from torch.optim.optimizer import _get_scalar_dtype

from ..functional import adam_gc
from .base import GCOptimizer, check_non_negative


class _AdamGCBase(GCOptimizer):
    """Adam / AdamW with GC; subclasses fix where GC and decay go.

    Args:
        params (iterable): Parameters or param groups.
        lr (float): Learning rate. Defaults to 1e-3.
        betas (tuple[float, float]): Moment coefficients. Defaults to
            (0.9, 0.999).
        eps (float): Denominator term. Defaults to 1e-8.
        weight_decay (float, optional): L2 penalty (Adam) or decoupled decay
            (AdamW). Defaults to 0 for Adam and 1e-2 for AdamW, as torch.
        amsgrad (bool): The AMSGrad variant. Defaults to False.
        maximize (bool): Maximize the objective. Defaults to False.
        foreach (bool, optional): Multi-tensor kernels; ``None`` chooses as
            torch.optim does.
        gc (bool): Apply GC at all (a param-group key). Defaults to True.
        gc_conv_only (bool, optional): Centralize conv weights only (a
            param-group key). Defaults to the class's rule.
    """

    base_algorithm = 'Adam'
    #: AdamW's decoupled decay instead of an L2 penalty.
    decoupled: bool = False
    #: Centralize the update (the "2" variants) instead of the gradient.
    gc_on_update: bool = False

    def __init__(self,
                 params: Any,
                 lr: float = 1e-3,
                 betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8,
                 weight_decay: Optional[float] = None,
                 amsgrad: bool = False,
                 *,
                 maximize: bool = False,
                 foreach: Optional[bool] = None,
                 gc: bool = True,
                 gc_conv_only: Optional[bool] = None) -> None:
        if weight_decay is None:
            weight_decay = 1e-2 if self.decoupled else 0.
        check_non_negative(lr=lr, eps=eps, weight_decay=weight_decay)
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f'Invalid betas[{i}]: {beta} (must be in '
                                 '[0, 1))')
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            foreach=foreach,
            gc=gc,
            gc_conv_only=gc_conv_only)
        super().__init__(params, defaults)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault('amsgrad', False)

    def _update_group(self, group: dict, params: List[Tensor],
                      grads: List[Tensor], centralized: List[bool]) -> None:
        amsgrad = group['amsgrad']
        states = []
        for p in params:
            state = self.state[p]
            if not state:  # as torch.optim.Adam lays it out
                state['step'] = torch.tensor(0.0, dtype=_get_scalar_dtype())
                state['exp_avg'] = torch.zeros_like(
                    p, memory_format=torch.preserve_format)
                state['exp_avg_sq'] = torch.zeros_like(
                    p, memory_format=torch.preserve_format)
            if amsgrad and 'max_exp_avg_sq' not in state:
                state['max_exp_avg_sq'] = torch.zeros_like(
                    p, memory_format=torch.preserve_format)
            states.append(state)
        beta1, beta2 = group['betas']
        adam_gc(
            params,
            grads, [s['exp_avg']
                    for s in states], [s['exp_avg_sq'] for s in states],
            [s['max_exp_avg_sq'] for s in states] if amsgrad else [],
            [s['step'] for s in states],
            centralized,
            foreach=group['foreach'],
            gc_on_update=self.gc_on_update,
            decoupled=self.decoupled,
            amsgrad=amsgrad,
            beta1=beta1,
            beta2=beta2,
            lr=group['lr'],
            weight_decay=group['weight_decay'],
            eps=group['eps'],
            maximize=group['maximize'])


class Adam_GC(_AdamGCBase):
    """Adam, L2 decay folded in, GC on the gradient of conv and fc weights.

    With GC off (``gc=False``) it equals ``torch.optim.Adam`` exactly.
    """


class Adam_GCC(_AdamGCBase):
    """Adam, L2 decay folded in, GC on the gradient of conv weights only."""

    gc_conv_only = True


class Adam_GC2(_AdamGCBase):
    """Adam whose update of conv and fc weights is centralized.

    The moments see the plain (L2-folded) gradient; the step
    ``lr / bc1 * exp_avg / denom`` is centralized before it is applied, so
    each centralized weight keeps its row means: the authors' advice for
    adaptive methods.
    """

    gc_on_update = True


class Adam_GCC2(Adam_GC2):
    """:class:`Adam_GC2` for conv weights only."""

    gc_conv_only = True


class AdamW_GC(_AdamGCBase):
    """AdamW (decoupled decay) with GC on the raw gradient, conv and fc.

    With GC off it equals ``torch.optim.AdamW`` exactly.
    """

    base_algorithm = 'AdamW'
    decoupled = True


class AdamW_GCC(AdamW_GC):
    """:class:`AdamW_GC` for conv weights only."""

    gc_conv_only = True


class AdamW_GC2(AdamW_GC):
    """AdamW whose whole step, decay term included, is centralized.

    ``delta = lr * weight_decay * p + lr / bc1 * exp_avg / denom`` and
    ``p -= GC(delta)``. The decay term is scaled by ``lr`` as
    ``torch.optim.AdamW`` does; the authors' code scales it by Adam's
    bias-corrected step size instead.
    """

    gc_on_update = True


class AdamW_GCC2(AdamW_GC2):
    """:class:`AdamW_GC2` for conv weights only."""

    gc_conv_only = True
