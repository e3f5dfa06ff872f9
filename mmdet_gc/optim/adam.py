"""Adam and AdamW with Gradient Centralization.

Yong et al., "Gradient Centralization: A New Optimization Technique for Deep
Neural Networks", ECCV 2020 (arXiv:2004.01461). Laid out as torch's
``torch/optim/adam.py``: thin classes over the functional :func:`adam_gc`,
which chooses one kernel of one signature: :func:`_single_tensor_adam_gc`
(the specification: :func:`_single_tensor_adam_gc2` for GC on the update,
torch's own Adam on the centralized gradient otherwise),
:func:`_multi_tensor_adam_gc` (``foreach``) and :func:`_fused_adam_gc`
(the compiled CPU kernel of :mod:`.fused`, or torch's fused Adam on
centralized gradients). No kernel calls the functional.

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
from torch.optim.adam import adam as _torch_adam
from torch.optim.adamw import adamw as _torch_adamw
from torch.optim.optimizer import Optimizer, _get_scalar_dtype

from . import fused as _fused
from .base import GCOptimizer, check_non_negative, scalar
from .gc import (add_scaled_, centralized_grads, choose_kernel, decayed_grad,
                 foreach_centralize, foreach_decayed_grads, foreach_row_means,
                 has_complex, row_mean, split_step, take,
                 torch_step_on_centralized)


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
        fused (bool, optional): The fused step (:func:`_fused_adam_gc`):
            on the CPU the compiled kernel of :mod:`mmdet_gc.optim.fused`
            (compiled on first use and cached; where it cannot be built,
            one line is logged and the single-tensor kernels run), on other
            devices torch's fused Adam / AdamW on centralized gradients,
            with a GradScaler's ``grad_scale`` / ``found_inf`` handled
            inside. ``None`` / False: the Python kernels (opt-in, as
            torch's fused Adam). Cannot be True together with ``foreach``.
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

    #: ``fused`` is supported (:mod:`mmdet_gc.optim.fused`).
    refused_modes = ('capturable', 'differentiable')

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
        # As given (a tensor lr or betas too): torch's kernels, which take
        # the tensors with GC off, round with them as torch.optim does.
        beta1, beta2 = group['betas']
        adam_gc(
            params,
            grads, [s['exp_avg']
                    for s in states], [s['exp_avg_sq'] for s in states],
            [s['max_exp_avg_sq'] for s in states] if amsgrad else [],
            [s['step'] for s in states],
            centralized,
            group['foreach'],
            group['fused'],
            *self.amp_scaling(),
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
    amp_scaling_in_fused_step = False


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
    amp_scaling_in_fused_step = False


class AdamW_GCC2(AdamW_GC2):
    """:class:`AdamW_GC2` for conv weights only."""

    gc_conv_only = True


def adam_gc(params: List[Tensor],
            grads: List[Tensor],
            exp_avgs: List[Tensor],
            exp_avg_sqs: List[Tensor],
            max_exp_avg_sqs: List[Tensor],
            state_steps: List[Tensor],
            centralized: List[bool],
            foreach: Optional[bool] = None,
            fused: Optional[bool] = None,
            grad_scale: Optional[Tensor] = None,
            found_inf: Optional[Tensor] = None,
            *,
            gc_on_update: bool,
            decoupled: bool,
            amsgrad: bool,
            beta1: Union[float, Tensor],
            beta2: Union[float, Tensor],
            lr: Union[float, Tensor],
            weight_decay: float,
            eps: float,
            maximize: bool) -> None:
    """Adam / AdamW with GC on the gradient or on the update.

    ``gc_on_update=False`` (``Adam_GC``, ``AdamW_GC``...): the gradient,
    with the L2 penalty folded in for Adam, is centralized and then goes
    through torch.optim's Adam / AdamW. ``gc_on_update=True``
    (``Adam_GC2``, ``AdamW_GC2``...): the moments see the plain gradient,
    and the whole step is centralized before it is applied::

        delta = lr / bc1 * exp_avg / (sqrt(v) / sqrt(bc2) + eps)
        delta += lr * weight_decay * p        # AdamW only (torch's scaling)
        p -= GC(delta)

    Tensors that are not centralized take torch.optim's own kernels, so a
    group with GC off equals ``torch.optim.Adam`` / ``AdamW`` exactly.

    Args:
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps:
            As torch.optim.adam.adam (``state_steps`` are float tensors).
        centralized (list[bool]): Whether GC applies to each parameter.
        foreach (bool, optional): Multi-tensor kernels; ``None`` chooses as
            torch.optim does.
        gc_on_update (bool): Centralize the update instead of the gradient.
        decoupled (bool): AdamW's decoupled weight decay instead of L2.
        amsgrad, beta1, beta2, lr, weight_decay, eps, maximize: As
            torch.optim.Adam / AdamW.
        fused (bool, optional): The fused step, :func:`_fused_adam_gc`
            (opt-in). Defaults to None.
        grad_scale (Tensor, optional): The scale the gradients carry
            (GradScaler), unscaled inside the fused kernel only.
        found_inf (Tensor, optional): 1 where GradScaler found an inf: the
            fused kernel then leaves parameters and state as they were.
    """
    if not params:
        return
    kernel = choose_kernel(params, foreach, fused, grad_scale, found_inf,
                           _single_tensor_adam_gc, _multi_tensor_adam_gc,
                           _fused_adam_gc)
    kernel(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        max_exp_avg_sqs,
        state_steps,
        centralized,
        grad_scale,
        found_inf,
        gc_on_update=gc_on_update,
        decoupled=decoupled,
        amsgrad=amsgrad,
        beta1=beta1,
        beta2=beta2,
        lr=lr,
        weight_decay=weight_decay,
        eps=eps,
        maximize=maximize)


def _torch_plain(lists: List[list], decoupled: bool, hyper: dict,
                 **kw: Any) -> None:
    """torch.optim's Adam / AdamW on the tensors GC leaves alone, the
    hyper-parameters as given (a tensor lr or betas too)."""
    torch_kernel = _torch_adamw if decoupled else _torch_adam
    torch_kernel(*lists, has_complex=has_complex(lists[0]), **kw, **hyper)


def _single_tensor_adam_gc(params: List[Tensor], grads: List[Tensor],
                           exp_avgs: List[Tensor], exp_avg_sqs: List[Tensor],
                           max_exp_avg_sqs: List[Tensor],
                           state_steps: List[Tensor], centralized: List[bool],
                           grad_scale: Optional[Tensor],
                           found_inf: Optional[Tensor], *, gc_on_update: bool,
                           decoupled: bool, **hyper: Any) -> None:
    """The specification: GC on the update is
    :func:`_single_tensor_adam_gc2`; GC on the gradient is torch's
    single-tensor Adam(W) on ``GC((-)g + wd * p)`` (Adam) or ``GC((-)g)``
    (AdamW), one tensor after the other."""
    numbers = {k: scalar(v) for k, v in hyper.items()}
    weight_decay, maximize = hyper['weight_decay'], hyper['maximize']

    def step_gc(*lists):
        if gc_on_update:
            _single_tensor_adam_gc2(*lists, decoupled=decoupled, **numbers)
            return
        torch_step_on_centralized(
            _torch_adamw if decoupled else _torch_adam, list(lists),
            0. if decoupled else weight_decay, maximize, False,
            dict(
                hyper,
                maximize=False,
                weight_decay=weight_decay if decoupled else 0.))

    split_step(
        centralized,
        [params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps],
        step_gc, lambda *lists: _torch_plain(
            list(lists), decoupled, hyper, foreach=False))


def _multi_tensor_adam_gc(params: List[Tensor], grads: List[Tensor],
                          exp_avgs: List[Tensor], exp_avg_sqs: List[Tensor],
                          max_exp_avg_sqs: List[Tensor],
                          state_steps: List[Tensor], centralized: List[bool],
                          grad_scale: Optional[Tensor],
                          found_inf: Optional[Tensor], *, gc_on_update: bool,
                          decoupled: bool, **hyper: Any) -> None:
    """Foreach kernel of both modes (:func:`_foreach_adam_gc_centralized`
    for the centralized tensors, torch's foreach Adam(W) for the others)."""
    numbers = {k: scalar(v) for k, v in hyper.items()}
    split_step(
        centralized,
        [params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps],
        lambda *lists: _foreach_adam_gc_centralized(
            *lists, gc_on_update=gc_on_update, decoupled=decoupled, **numbers),
        lambda *lists: _torch_plain(
            list(lists), decoupled, hyper, foreach=True))


def _real(t: Optional[Tensor]) -> Optional[Tensor]:
    """The real view of a complex tensor (moments are taken on it, as
    torch.optim does); other tensors as they are."""
    return torch.view_as_real(t) if t is not None and t.is_complex() else t


def _bias_corrections(step: float, beta1: float,
                      beta2: float) -> Tuple[float, float]:
    """``(1 - beta1 ** step, sqrt(1 - beta2 ** step))``."""
    return 1 - beta1**step, (1 - beta2**step)**0.5


def _single_tensor_adam_gc2(params: List[Tensor], grads: List[Tensor],
                            exp_avgs: List[Tensor], exp_avg_sqs: List[Tensor],
                            max_exp_avg_sqs: List[Tensor],
                            state_steps: List[Tensor], *, decoupled: bool,
                            amsgrad: bool, beta1: float, beta2: float,
                            lr: float, weight_decay: float, eps: float,
                            maximize: bool) -> None:
    """Reference kernel of GC on Adam's update (every tensor centralized)."""
    for i, param in enumerate(params):
        grad, _ = decayed_grad(grads[i], param,
                               0. if decoupled else weight_decay, maximize)
        # Complex tensors: moments on the real views, as torch.optim; the
        # update is centralized as the complex tensor it is (below).
        grad = _real(grad)
        exp_avg, exp_avg_sq = _real(exp_avgs[i]), _real(exp_avg_sqs[i])
        state_steps[i] += 1
        # A compiled step keeps the count a tensor (as torch's compiled
        # Adam does): a number would be compiled in, step after step.
        step = state_steps[i] if torch.compiler.is_compiling() else \
            state_steps[i].item()
        bc1, bc2_sqrt = _bias_corrections(step, beta1, beta2)

        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        if amsgrad:
            max_sq = _real(max_exp_avg_sqs[i])
            torch.maximum(max_sq, exp_avg_sq, out=max_sq)
            second = max_sq
        else:
            second = exp_avg_sq
        denom = second.sqrt().div_(bc2_sqrt).add_(eps)
        # ``delta`` reuses ``denom``'s memory (one large allocation a step,
        # not three): a tensor of ours, so centring it leaves the moments
        # intact.
        delta = torch.div(exp_avg, denom, out=denom).mul_(lr / bc1)
        if param.is_complex():
            delta = torch.view_as_complex(delta)
        if decoupled and weight_decay != 0:
            add_scaled_(delta, param, -lr * weight_decay)
        param.sub_(delta.sub_(row_mean(delta)))


def _foreach_adam_gc_centralized(params: List[Tensor], grads: List[Tensor],
                                 exp_avgs: List[Tensor],
                                 exp_avg_sqs: List[Tensor],
                                 max_exp_avg_sqs: List[Tensor],
                                 state_steps: List[Tensor], *,
                                 gc_on_update: bool, decoupled: bool,
                                 amsgrad: bool, beta1: float, beta2: float,
                                 lr: float, weight_decay: float, eps: float,
                                 maximize: bool) -> None:
    """Foreach steps of both modes (every tensor given here is
    centralized).

    GC on the gradient: torch's foreach Adam(W) on ``GC((-)g + wd * p)``;
    GC on the update: :func:`_single_tensor_adam_gc2`. Both to rounding,
    with rewrites that pay for GC's extra passes over memory:

    - the second moment's bias correction moves into the step size,
      ``lr / bc1 * m / (sqrt(v) / s + eps) == (lr * s / bc1) * m /
      (sqrt(v) + eps * s)`` with ``s = sqrt(bc2)``: one pass fewer than
      torch's sqrt, divide, add;
    - on the update, the decoupled decay term is centralized apart (it is
      linear): ``p - GC(lr * wd * p) == lerp(p, mean_rows(p), lr * wd)``,
      one pass that also applies the decay; only the Adam term is made as a
      tensor, centralized and added.
    """
    grouped = Optimizer._group_tensors_by_device_and_dtype(
        [params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps])
    for (dev_params, dev_grads, dev_avgs, dev_sqs, dev_max_sqs,
         dev_steps), _ in grouped.values():
        l2 = 0. if decoupled else weight_decay
        if gc_on_update:
            d, _ = foreach_decayed_grads(dev_params, dev_grads, l2, maximize)
        else:
            d = centralized_grads(
                dev_params, dev_grads, l2, maximize, foreach=True)
        if decoupled and weight_decay != 0:
            if gc_on_update:
                torch._foreach_lerp_(dev_params, foreach_row_means(dev_params),
                                     lr * weight_decay)
            else:
                torch._foreach_mul_(dev_params, 1 - lr * weight_decay)
        # Complex tensors: moments and step on the real views, as torch.
        d, real_params, dev_avgs, dev_sqs, dev_max_sqs = ([
            _real(t) for t in lst
        ] for lst in (d, dev_params, dev_avgs, dev_sqs, dev_max_sqs))
        torch._foreach_add_(dev_steps, 1)
        corrections = [
            _bias_corrections(s.item(), beta1, beta2) for s in dev_steps
        ]

        torch._foreach_lerp_(dev_avgs, d, 1 - beta1)
        torch._foreach_mul_(dev_sqs, beta2)
        torch._foreach_addcmul_(dev_sqs, d, d, value=1 - beta2)
        del d
        if amsgrad:
            torch._foreach_maximum_(dev_max_sqs, dev_sqs)
            second = dev_max_sqs
        else:
            second = dev_sqs
        denom = torch._foreach_sqrt(second)
        half = dev_params[0].dtype in (torch.float16, torch.bfloat16)
        if half:
            # As the specification: folding ``sqrt(bc2)`` into eps scales
            # the quotient by ``1 / sqrt(bc2)``, which overflows float16.
            torch._foreach_div_(denom, [c[1] for c in corrections])
            torch._foreach_add_(denom, eps)
            step_sizes = [-lr / c[0] for c in corrections]
        else:
            torch._foreach_add_(denom, [eps * c[1] for c in corrections])
            step_sizes = [-lr * c[1] / c[0] for c in corrections]
        if not gc_on_update:
            torch._foreach_addcdiv_(real_params, dev_avgs, denom, step_sizes)
            continue
        if half:  # 1 / denom would overflow float16 where exp_avg does not
            denom = list(torch._foreach_div(dev_avgs, denom))
        else:
            # ``exp_avg / denom`` into denom's memory: on the CPU a second
            # fresh tensor per step costs more in page faults than two
            # passes.
            torch._foreach_reciprocal_(denom)
            torch._foreach_mul_(denom, dev_avgs)
        update = [
            torch.view_as_complex(u) if p.is_complex() else u
            for u, p in zip(denom, dev_params)
        ]
        _foreach_add_scaled_(dev_params,
                             foreach_centralize(update, inplace=True),
                             step_sizes)


def _foreach_add_scaled_(tensors: List[Tensor], others: List[Tensor],
                         scales: List[float]) -> None:
    """``tensors[i] += scales[i] * others[i]``: one foreach call per
    distinct scale (one in the usual case, where every tensor has stepped
    as often)."""
    by_scale: dict = {}
    for i, scale in enumerate(scales):
        by_scale.setdefault(scale, []).append(i)
    for scale, idx in by_scale.items():
        torch._foreach_add_(take(tensors, idx), take(others, idx), alpha=scale)


def _fused_adam_gc(params: List[Tensor], grads: List[Tensor],
                   exp_avgs: List[Tensor], exp_avg_sqs: List[Tensor],
                   max_exp_avg_sqs: List[Tensor], state_steps: List[Tensor],
                   centralized: List[bool], grad_scale: Optional[Tensor],
                   found_inf: Optional[Tensor], *, gc_on_update: bool,
                   decoupled: bool, **hyper: Any) -> None:
    """The fused step (``fused=True``); which kernel runs is
    :func:`~mmdet_gc.optim.fused.fused_kernel`'s choice:

    - ``'gc'`` (CPU tensors, no GradScaler): centralized, contiguous
      tensors of float32, float64, float16 or bfloat16 go through one call
      of the C++ kernel (:mod:`.fused`); other centralized tensors
      (channels_last, strided, complex) take the single-tensor kernel, and
      tensors that are not centralized torch's fused Adam / AdamW, so that
      a group with GC off equals ``torch.optim.Adam(fused=True)`` /
      ``AdamW(fused=True)``;
    - ``'torch'`` (other devices, a GradScaler's tensors, or
      ``MMDET_GC_CUDA_PATHS=1``): with GC on the gradient, the centralized
      gradients (``GC((-)g + wd * s * p)`` for Adam, ``GC((-)g)`` for
      AdamW) are made into one scratch buffer per device and dtype and
      torch's own fused Adam / AdamW steps on them, unscaling and skipping
      inside. GC on the update (the "2" variants) needs the update, which
      torch's fused kernel applies without returning it: there the
      foreach kernel runs (one line says so), and these classes leave
      unscaling and skipping to the GradScaler, as torch's non-fused
      optimizers do;
    - ``'spec'`` (no compiled kernel on the CPU): the single-tensor kernels.

    Arguments as :func:`adam_gc`.
    """
    lists = [
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps
    ]
    modes = dict(gc_on_update=gc_on_update, decoupled=decoupled)
    kernel = _fused.fused_kernel(params, grad_scale, found_inf)
    if kernel == 'torch':
        _torch_fused_adam_gc(lists, centralized, grad_scale, found_inf,
                             gc_on_update, decoupled, hyper)
        return
    moments = [exp_avgs, exp_avg_sqs
               ] + ([max_exp_avg_sqs] if hyper['amsgrad'] else [])
    if kernel == 'spec' or _fused.shares_written_memory([
            *params, *(t for lst in moments for t in lst),
            *(s for s in state_steps if torch.is_tensor(s))
    ], grads):
        _single_tensor_adam_gc(*lists, centralized, None, None, **modes,
                               **hyper)
        return
    # The compiled kernel takes numbers; torch's kernels, the values as
    # given.
    lr, beta1, beta2, eps, weight_decay = (
        scalar(hyper[k])
        for k in ('lr', 'beta1', 'beta2', 'eps', 'weight_decay'))
    how = _fused.route(
        'adam',
        'gc',
        params, [grads, *moments],
        centralized,
        scalars=(lr, weight_decay, lr * weight_decay, eps, beta1, beta2,
                 1 - beta1, 1 - beta2, lr / (1 - beta1)),
        steps=state_steps)
    for key in ('gc', 'torch', 'spec'):
        idx = [i for i, h in enumerate(how) if h == key]
        if not idx:
            continue
        sub = [take(lst, idx) for lst in lists]
        if key == 'gc':
            _fused.module().adam_gc_(*sub, gc_on_update, decoupled,
                                     hyper['amsgrad'], beta1, beta2, lr,
                                     weight_decay, eps, hyper['maximize'])
        elif key == 'torch':
            _torch_plain(sub, decoupled, hyper, foreach=False, fused=True)
        else:
            _single_tensor_adam_gc(*sub, take(centralized, idx), None, None,
                                   **modes, **hyper)


def _torch_fused_adam_gc(lists: List[list], centralized: List[bool],
                         grad_scale: Optional[Tensor],
                         found_inf: Optional[Tensor], gc_on_update: bool,
                         decoupled: bool, hyper: dict) -> None:
    """torch's fused Adam / AdamW on centralized gradients (see
    :func:`_fused_adam_gc`); with GC on the update the centralized tensors
    take the foreach kernel, the others torch's fused one."""
    params, grads = lists[0], lists[1]
    moments = [lists[2], lists[3]] + ([lists[4]] if hyper['amsgrad'] else [])
    how = _fused.route(
        'adam', 'torch', params, [grads, *moments], steps=lists[5])
    update = [i for i, h in enumerate(how) if h == 'torch' and centralized[i]]
    if gc_on_update and update:
        _fused.log_once(
            'GC on the update needs the update, which torch\'s fused Adam '
            'does not return',
            'the foreach kernel for centralized tensors',
            'fused=True with GC on the update',
            unavailable=False)
        how = ['update' if i in update else h for i, h in enumerate(how)]
        unscaled = _fused.host_unscale(
            take(grads, update), grad_scale, found_inf)
        if unscaled is not None:
            sub = [take(lst, update) for lst in lists]
            sub[1] = unscaled
            _foreach_adam_gc_centralized(
                *sub,
                gc_on_update=True,
                decoupled=decoupled,
                **{
                    k: scalar(v)
                    for k, v in hyper.items()
                })
    grads = _fused.torch_fused_grads(
        params, grads, how, centralized,
        0. if decoupled else hyper['weight_decay'], hyper['maximize'],
        grad_scale)
    lists = [lists[0], grads, *lists[2:]]
    amp = dict(grad_scale=grad_scale, found_inf=found_inf)
    for gc_on in (True, False):
        idx = [
            i for i, h in enumerate(how)
            if h == 'torch' and bool(centralized[i]) is gc_on
        ]
        if not idx:
            continue
        sub = [take(lst, idx) for lst in lists]
        kw = dict(
            hyper,
            maximize=False,
            weight_decay=hyper['weight_decay'] if decoupled else 0.) \
            if gc_on else hyper
        _torch_plain(sub, decoupled, kw, foreach=False, fused=True, **amp)
    rest = [i for i, h in enumerate(how) if h == 'spec']
    unscaled = _fused.host_unscale(
        take(lists[1], rest), grad_scale, found_inf) if rest else None
    if unscaled is not None:
        sub = [take(lst, rest) for lst in lists]
        sub[1] = unscaled
        _single_tensor_adam_gc(
            *sub,
            take(centralized, rest),
            None,
            None,
            gc_on_update=gc_on_update,
            decoupled=decoupled,
            **hyper)
