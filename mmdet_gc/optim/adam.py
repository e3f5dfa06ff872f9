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
from typing import Any, List, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.optim.optimizer import _get_scalar_dtype

from ..functional import adam_gc
from .base import GCOptimizer, check_non_negative, scalar


def _check_betas(betas: Tuple[Any, Any], foreach: Optional[bool],
                 capturable: bool) -> None:
    """torch.optim.Adam's rules for ``betas``, with our messages for
    ranges."""
    if not (all(isinstance(b, float)
                for b in betas) or all(isinstance(b, Tensor) for b in betas)):
        raise ValueError('betas must be either both floats or both Tensors')
    for i, beta in enumerate(betas):
        if isinstance(beta, Tensor):
            if foreach and not capturable:
                raise ValueError(f'betas[{i}] as a Tensor is not supported '
                                 'for capturable=False and foreach=True')
            if beta.numel() != 1:
                raise ValueError(f'Tensor betas[{i}] must be 1-element')
            beta = beta.item()
        if not 0.0 <= beta < 1.0:
            raise ValueError(f'Invalid beta parameter at index {i}: {beta} '
                             f'(betas[{i}] must be in [0, 1))')


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
        fused (bool, optional): Use the compiled CPU kernel of
            :mod:`mmdet_gc.fused` (parallel over weight rows; compiled on
            first use and cached). Where it cannot be built, and for
            tensors off the CPU, one line is logged and the Python kernels
            run. ``None`` / False: the Python kernels (opt-in, as torch's
            fused Adam). Cannot be True together with ``foreach``.
        capturable, differentiable: torch.optim's modes, accepted at their
            off values only (use ``foreach`` instead).
        decoupled_weight_decay (bool, optional): As torch.optim.Adam; must
            match the class (``AdamW_*`` are the decoupled ones).
        gc (bool): Apply GC at all (a param-group key). Defaults to True.
        gc_conv_only (bool, optional): Centralize conv weights only (a
            param-group key). Defaults to the class's rule.
    """

    base_algorithm = 'Adam'
    #: AdamW's decoupled decay instead of an L2 penalty.
    decoupled: bool = False
    #: Centralize the update (the "2" variants) instead of the gradient.
    gc_on_update: bool = False

    #: ``fused`` is supported (:mod:`mmdet_gc.fused`).
    torch_modes = ('capturable', 'differentiable')

    def __init__(self,
                 params: Any,
                 lr: Union[float, Tensor] = 1e-3,
                 betas: Tuple[Union[float, Tensor],
                              Union[float, Tensor]] = (0.9, 0.999),
                 eps: float = 1e-8,
                 weight_decay: Optional[float] = None,
                 amsgrad: bool = False,
                 *,
                 foreach: Optional[bool] = None,
                 maximize: bool = False,
                 capturable: bool = False,
                 differentiable: bool = False,
                 fused: Optional[bool] = None,
                 decoupled_weight_decay: Optional[bool] = None,
                 gc: bool = True,
                 gc_conv_only: Optional[bool] = None) -> None:
        name = type(self).__name__
        if decoupled_weight_decay is not None and \
                bool(decoupled_weight_decay) != self.decoupled:
            twin = name.replace('AdamW_', 'Adam_') if self.decoupled else \
                name.replace('Adam_', 'AdamW_')
            raise ValueError(
                f'{name} does not take decoupled_weight_decay='
                f'{decoupled_weight_decay}: its decay is '
                f'{"decoupled" if self.decoupled else "an L2 penalty"}; use '
                f'{twin} for the other kind')
        if weight_decay is None:
            weight_decay = 1e-2 if self.decoupled else 0.
        if isinstance(lr, Tensor) and foreach and not capturable:
            raise ValueError('lr as a Tensor is not supported for '
                             'capturable=False and foreach=True')
        check_non_negative(lr=lr, eps=eps, weight_decay=weight_decay)
        _check_betas(betas, foreach, capturable)
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=self.decoupled,
            gc=gc,
            gc_conv_only=gc_conv_only)
        super().__init__(params, defaults)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault('amsgrad', False)
            group.setdefault('fused', None)

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
        beta1, beta2 = (scalar(b) for b in group['betas'])
        adam_gc(
            params,
            grads, [s['exp_avg']
                    for s in states], [s['exp_avg_sq'] for s in states],
            [s['max_exp_avg_sq'] for s in states] if amsgrad else [],
            [s['step'] for s in states],
            centralized,
            foreach=group['foreach'],
            fused=group['fused'] and bool(params),
            gc_on_update=self.gc_on_update,
            decoupled=self.decoupled,
            amsgrad=amsgrad,
            beta1=beta1,
            beta2=beta2,
            lr=scalar(group['lr']),
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
