"""Functional maths of Gradient Centralization.

Yong et al., "Gradient Centralization: A New Optimization Technique for Deep
Neural Networks", ECCV 2020 (arXiv:2004.01461).

For a weight of shape ``(C_out, d1, d2, ...)`` the GC operator removes, from
each output row ("filter"), the mean of that row::

    GC(G) = G - mean(G over every dim but 0, keepdim=True)

It is a linear projection, so ``GC(GC(G)) == GC(G)``. ``_GC`` optimizers
centralize every tensor with ``ndim > 1`` (conv and fc weights), ``_GCC``
optimizers only tensors with ``ndim > 3`` (conv weights).

This module follows the layout of ``torch/optim/sgd.py``: dispatching
functionals (:func:`sgd_gc`, :func:`adam_gc`, :func:`adagrad_gc`) over a
single-tensor kernel, which is the specification, and a multi-tensor
(``foreach``) kernel with the same signature that must agree with it.
Tensors that are not centralized always take torch.optim's own kernels.
Gradients are never modified, and optimizer state is never centralized.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.optim.adagrad import adagrad as _torch_adagrad
from torch.optim.adam import adam as _torch_adam
from torch.optim.adamw import adamw as _torch_adamw
from torch.optim.optimizer import Optimizer
from torch.optim.sgd import sgd as _torch_sgd

__all__ = [
    'is_centralized', 'centralize', 'foreach_centralize', 'centralized_grads',
    'default_foreach', 'sgd_gc', 'adam_gc', 'adagrad_gc'
]

_HALF_DTYPES = (torch.float16, torch.bfloat16)


def is_centralized(param: Tensor, conv_only: bool) -> bool:
    """Whether GC applies to a tensor of this shape.

    Args:
        param (Tensor): A parameter (or its gradient).
        conv_only (bool): ``True`` for the ``_GCC`` rule (``ndim > 3``: conv
            weights only), ``False`` for the ``_GC`` rule (``ndim > 1``: conv
            and fc weights).

    Returns:
        bool: ``True`` when the tensor is centralized.
    """
    return param.dim() > (3 if conv_only else 1)


def _row_mean(t: Tensor) -> Tensor:
    """Mean over every dim but 0, kept for broadcasting.

    Half-precision inputs are reduced in float32 so that the mean of a large
    filter does not lose the low bits it exists to remove.
    """
    acc = torch.float32 if t.dtype in _HALF_DTYPES else t.dtype
    return t.mean(dim=tuple(range(1, t.dim())), keepdim=True, dtype=acc)


def _sub_new(t: Tensor, mean: Tensor) -> Tensor:
    """``t - mean`` as a new tensor of ``t``'s dtype (one rounding)."""
    return torch.sub(t, mean, out=torch.empty_like(t))


def centralize(t: Tensor) -> Tensor:
    """Return ``GC(t)``: ``t`` minus the mean of each output row.

    Args:
        t (Tensor): A tensor with ``ndim > 1``; dim 0 indexes output rows.

    Returns:
        Tensor: A new tensor of ``t``'s dtype and memory format; ``t`` is not
        modified.
    """
    if t.dim() < 2:
        raise ValueError('GC needs a tensor with at least 2 dims (dim 0 '
                         f'indexes output rows); got shape {tuple(t.shape)}')
    return _sub_new(t, _row_mean(t))


def foreach_centralize(tensors: Sequence[Tensor],
                       inplace: bool = False) -> List[Tensor]:
    """:func:`centralize` over a list, using foreach kernels where possible.

    Args:
        tensors (Sequence[Tensor]): Tensors with ``ndim > 1``.
        inplace (bool): Centralize the given tensors in place (only for
            tensors the caller owns, never for ``.grad``). Defaults to False.

    Returns:
        list[Tensor]: The centralized tensors.
    """
    tensors = list(tensors)
    if not tensors:
        return tensors
    means = [_row_mean(t) for t in tensors]  # torch has no foreach mean
    if inplace:
        torch._foreach_sub_(tensors, means)
        return tensors
    if any(t.dtype in _HALF_DTYPES for t in tensors):
        # A foreach sub would promote to the float32 mean's dtype.
        return [_sub_new(t, m) for t, m in zip(tensors, means)]
    return list(torch._foreach_sub(tensors, means))


def default_foreach(params: Sequence[Tensor]) -> bool:
    """Choose the kernel the way torch.optim does when ``foreach=None``.

    torch picks the multi-tensor kernel when every tensor lives on a device
    with native foreach support (CUDA and the like) and the single-tensor
    loop otherwise (e.g. on CPU).
    """
    if torch.jit.is_scripting():
        return False
    from torch.optim.optimizer import _default_to_fused_or_foreach
    _, foreach = _default_to_fused_or_foreach(
        list(params), differentiable=False, use_fused=False)
    return foreach


def sgd_gc(params: List[Tensor],
           grads: List[Tensor],
           momentum_buffer_list: List[Optional[Tensor]],
           centralized: List[bool],
           foreach: Optional[bool] = None,
           *,
           weight_decay: float,
           momentum: float,
           lr: float,
           dampening: float,
           nesterov: bool,
           maximize: bool,
           fused: Optional[bool] = None) -> None:
    """SGD with GC, the update of ``SGD_GC`` / ``SGD_GCC``.

    For each parameter ``p`` with gradient ``g`` (in this order)::

        d = g + weight_decay * p          # L2 decay folded in first
        d = GC(d) if centralized else d   # so the decay term is centred too
        buf = d (first step) | momentum * buf + (1 - dampening) * d
        d = d + momentum * buf if nesterov else buf
        p = p - lr * d

    Tensors that are not centralized take torch.optim.SGD's own functional
    kernel, so they (and a group with GC off) equal ``torch.optim.SGD``
    exactly. ``momentum_buffer_list`` is updated in place: an entry that was
    ``None`` receives the new buffer.

    Args:
        params (list[Tensor]): Parameters, updated in place.
        grads (list[Tensor]): Their dense gradients (never modified).
        momentum_buffer_list (list[Tensor | None]): One buffer per parameter
            (ignored when ``momentum == 0``).
        centralized (list[bool]): Whether GC applies to each parameter.
        foreach (bool, optional): Use the multi-tensor kernel; ``None``
            chooses as torch.optim does. Defaults to None.
        weight_decay (float): L2 penalty.
        momentum (float): Momentum factor.
        lr (float): Learning rate.
        dampening (float): Dampening of the momentum.
        nesterov (bool): Nesterov momentum.
        maximize (bool): Maximize the objective instead.
        fused (bool, optional): Use the compiled CPU kernel of
            :func:`mmdet_gc.fused.fused_sgd_gc` (built on first use; where
            it cannot be built, one line is logged and the single-tensor
            kernel runs). ``None`` means False: the fused kernel is opt-in.
            Defaults to None.
    """
    hyper = dict(
        weight_decay=weight_decay,
        momentum=momentum,
        lr=lr,
        dampening=dampening,
        nesterov=nesterov,
        maximize=maximize)
    if _use_fused(fused, foreach):
        from .fused import fused_sgd_gc
        fused_sgd_gc(params, grads, momentum_buffer_list, centralized,
                     **hyper)
        return
    if foreach is None:
        foreach = default_foreach(params)
    (gc_idx, gc_lists), (plain_idx,
                         plain_lists) = _partition(centralized, params, grads,
                                                   momentum_buffer_list)
    if gc_idx:
        kernel = _multi_tensor_sgd_gc if foreach else _single_tensor_sgd_gc
        kernel(*gc_lists, **hyper)
    if plain_idx:
        if foreach and nesterov and momentum != 0 and weight_decay == 0 \
                and not maximize:
            # torch's foreach SGD adds the momentum into the gradient list
            # in place in exactly this case: give it copies (x * 1 is
            # exact), so that p.grad stays untouched.
            plain_lists[1] = torch._foreach_mul(plain_lists[1], 1.)
        _torch_sgd(*plain_lists, foreach=foreach, **hyper)
    # New momentum buffers come back in the sub-lists.
    for idx, lists in ((gc_idx, gc_lists), (plain_idx, plain_lists)):
        for i, buf in zip(idx, lists[2]):
            momentum_buffer_list[i] = buf


def _use_fused(fused: Optional[bool], foreach: Optional[bool]) -> bool:
    """Whether to run the compiled kernel (:mod:`mmdet_gc.fused`); it is
    opt-in, and exclusive with ``foreach`` as torch's fused kernels are."""
    if fused and foreach:
        raise ValueError('`fused` and `foreach` cannot be `True` together')
    return bool(fused)


def _partition(mask: Sequence[bool], *lists: Sequence):
    """Split parallel lists into the entries where ``mask`` holds and not.

    An empty list (torch's way of saying "unused", e.g. ``max_exp_avg_sqs``
    without amsgrad) stays empty on both sides.

    Returns:
        tuple: ``((indices, sublists), (indices, sublists))`` for the
        centralized and the plain entries.
    """
    out = []
    for want in (True, False):
        idx = [i for i, m in enumerate(mask) if bool(m) is want]
        out.append(
            (idx, [[lst[i] for i in idx] if lst else [] for lst in lists]))
    return tuple(out)


def _decayed(grad: Tensor, param: Tensor, weight_decay: float,
             maximize: bool) -> Tuple[Tensor, bool]:
    """``(-)grad + weight_decay * param`` and whether the result is ours."""
    if maximize:
        d = torch.neg(grad)
        if weight_decay != 0:
            d.add_(param, alpha=weight_decay)
        return d, True
    if weight_decay != 0:
        return grad.add(param, alpha=weight_decay), True
    return grad, False


def _foreach_decayed(params: List[Tensor], grads: List[Tensor],
                     weight_decay: float,
                     maximize: bool) -> Tuple[List[Tensor], bool]:
    """:func:`_decayed` over lists, with foreach kernels."""
    if maximize:
        d = torch._foreach_neg(grads)
        if weight_decay != 0:
            torch._foreach_add_(d, params, alpha=weight_decay)
        return d, True
    if weight_decay != 0:
        return torch._foreach_add(grads, params, alpha=weight_decay), True
    return grads, False


def _centralized(grad: Tensor, param: Tensor, weight_decay: float,
                 maximize: bool) -> Tensor:
    """``GC((-)grad + weight_decay * param)`` as a new tensor."""
    d, owned = _decayed(grad, param, weight_decay, maximize)
    mean = _row_mean(d)
    # A tensor made above is ours to centre in place; the gradient is not.
    return d.sub_(mean) if owned else _sub_new(d, mean)


def _updated_buffer(buf: Optional[Tensor], d: Tensor, momentum: float,
                    dampening: float, nesterov: bool) -> Tensor:
    """The momentum buffer after this step (``d`` is centralized and ours)."""
    if buf is None:
        # The first buffer is ``d`` itself; nesterov reads ``d`` again after
        # this, so copy only then.
        return d.clone() if nesterov else d
    if dampening == 0:
        # One pass instead of torch's ``mul_`` + ``add_``: this pays for the
        # extra mean and subtraction of GC.
        return torch.add(d, buf, alpha=momentum, out=buf)
    return buf.mul_(momentum).add_(d, alpha=1 - dampening)


def _single_tensor_sgd_gc(params: List[Tensor], grads: List[Tensor],
                          momentum_buffer_list: List[Optional[Tensor]], *,
                          weight_decay: float, momentum: float, lr: float,
                          dampening: float, nesterov: bool,
                          maximize: bool) -> None:
    """Reference kernel: every tensor given here is centralized."""
    for i, param in enumerate(params):
        d = _centralized(grads[i], param, weight_decay, maximize)
        if momentum != 0:
            buf = _updated_buffer(momentum_buffer_list[i], d, momentum,
                                  dampening, nesterov)
            momentum_buffer_list[i] = buf
            d = d.add_(buf, alpha=momentum) if nesterov else buf

        param.add_(d, alpha=-lr)


def _multi_tensor_sgd_gc(params: List[Tensor], grads: List[Tensor],
                         momentum_buffer_list: List[Optional[Tensor]], *,
                         weight_decay: float, momentum: float, lr: float,
                         dampening: float, nesterov: bool,
                         maximize: bool) -> None:
    """Foreach kernel: same arithmetic as :func:`_single_tensor_sgd_gc`."""
    if not params:
        return
    grouped = Optimizer._group_tensors_by_device_and_dtype(
        [params, grads, momentum_buffer_list], with_indices=True)
    for (dev_params, dev_grads, dev_bufs), indices in grouped.values():
        d = centralized_grads(
            dev_params, dev_grads, weight_decay, maximize, foreach=True)

        if momentum != 0:
            if dampening == 0 and all(b is not None for b in dev_bufs):
                # ``d + momentum * buf`` in one pass; written into ``d``
                # (ours), which becomes the new buffer, unless nesterov
                # still needs ``d``.
                if nesterov:
                    new_bufs = torch._foreach_add(d, dev_bufs, alpha=momentum)
                else:
                    torch._foreach_add_(d, dev_bufs, alpha=momentum)
                    new_bufs = d
            elif all(b is not None for b in dev_bufs):
                torch._foreach_mul_(dev_bufs, momentum)
                torch._foreach_add_(dev_bufs, d, alpha=1 - dampening)
                new_bufs = dev_bufs
            else:  # first step of some tensors
                new_bufs = [
                    _updated_buffer(b, t, momentum, dampening, nesterov)
                    for b, t in zip(dev_bufs, d)
                ]
            for j, buf in zip(indices, new_bufs):
                momentum_buffer_list[j] = buf
            if nesterov:
                torch._foreach_add_(d, new_bufs, alpha=momentum)
            else:
                d = new_bufs

        torch._foreach_add_(dev_params, d, alpha=-lr)


# ---------------------------------------------------------------------------
# Adaptive methods. GC on the gradient (``_GC`` / ``_GCC``) feeds torch.optim's
# own kernels with centralized gradients; GC on the update (``_GC2`` /
# ``_GCC2``, "keep each weight's mean unchanged") needs the update itself, so
# it has kernels of its own. Optimizer state is never centralized.
# ---------------------------------------------------------------------------


def centralized_grads(params: List[Tensor],
                      grads: List[Tensor],
                      weight_decay: float,
                      maximize: bool,
                      foreach: bool = False) -> List[Tensor]:
    """``GC((-)g + weight_decay * p)`` for each pair, as new tensors.

    The sign of ``maximize`` and an L2 penalty are folded in before GC, as
    the paper orders them; the gradients themselves are not modified.

    Args:
        params (list[Tensor]): Parameters.
        grads (list[Tensor]): Their gradients.
        weight_decay (float): L2 penalty to fold in (0 for none).
        maximize (bool): Negate the gradients.
        foreach (bool): Use foreach kernels. Defaults to False.

    Returns:
        list[Tensor]: The centralized gradients.
    """
    if not foreach:
        return [
            _centralized(g, p, weight_decay, maximize)
            for p, g in zip(params, grads)
        ]
    d, owned = _foreach_decayed(params, grads, weight_decay, maximize)
    return foreach_centralize(d, inplace=owned)


def adam_gc(params: List[Tensor],
            grads: List[Tensor],
            exp_avgs: List[Tensor],
            exp_avg_sqs: List[Tensor],
            max_exp_avg_sqs: List[Tensor],
            state_steps: List[Tensor],
            centralized: List[bool],
            foreach: Optional[bool] = None,
            *,
            gc_on_update: bool,
            decoupled: bool,
            amsgrad: bool,
            beta1: float,
            beta2: float,
            lr: float,
            weight_decay: float,
            eps: float,
            maximize: bool,
            fused: Optional[bool] = None) -> None:
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
        fused (bool, optional): Use the compiled CPU kernel of
            :func:`mmdet_gc.fused.fused_adam_gc` (built on first use; where
            it cannot be built, one line is logged and the single-tensor
            kernels run). ``None`` means False: the fused kernel is opt-in.
            Defaults to None.
    """
    hyper = dict(
        amsgrad=amsgrad,
        beta1=beta1,
        beta2=beta2,
        lr=lr,
        weight_decay=weight_decay,
        eps=eps,
        maximize=maximize)
    if _use_fused(fused, foreach):
        from .fused import fused_adam_gc
        fused_adam_gc(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            max_exp_avg_sqs,
            state_steps,
            centralized,
            gc_on_update=gc_on_update,
            decoupled=decoupled,
            **hyper)
        return
    torch_kernel = _torch_adamw if decoupled else _torch_adam
    if foreach is None:
        foreach = default_foreach(params)
    (gc_idx, gc_lists), (plain_idx, plain_lists) = _partition(
        centralized, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs,
        state_steps)
    if plain_idx:
        torch_kernel(
            *plain_lists,
            foreach=foreach,
            has_complex=_has_complex(plain_lists[0]),
            **hyper)
    if not gc_idx:
        return
    if foreach:
        _multi_tensor_adam_gc(
            *gc_lists, gc_on_update=gc_on_update, decoupled=decoupled,
            **hyper)
        return
    if gc_on_update:
        _single_tensor_adam_gc2(*gc_lists, decoupled=decoupled, **hyper)
        return
    # GC on the gradient: fold what precedes GC, then torch's Adam(W).
    folded = 0. if decoupled else weight_decay
    hyper.update(
        maximize=False, weight_decay=weight_decay if decoupled else 0.)
    _torch_step_on_centralized(torch_kernel, gc_lists, folded, maximize,
                               foreach, hyper)


def _torch_step_on_centralized(torch_kernel, lists: List[list],
                               weight_decay: float, maximize: bool,
                               foreach: bool, hyper: dict) -> None:
    """Run a torch.optim functional kernel on centralized gradients.

    ``lists`` are the kernel's positional lists (params and grads first);
    the gradients become ``GC((-)g + weight_decay * p)``. The foreach path
    centralizes all of them, then steps once; the single-tensor path goes
    tensor by tensor, so that each centralized gradient is used while it is
    still in cache and freed before the next one is made.
    """
    params, grads = lists[0], lists[1]
    if foreach:
        lists[1] = centralized_grads(params, grads, weight_decay, maximize,
                                     True)
        torch_kernel(
            *lists, foreach=True, has_complex=_has_complex(params), **hyper)
        return
    for i, (p, g) in enumerate(zip(params, grads)):
        one = [lst[i:i + 1] for lst in lists]  # an empty list stays empty
        one[1] = [_centralized(g, p, weight_decay, maximize)]
        torch_kernel(*one, foreach=False, **hyper)


def _has_complex(params: Sequence[Tensor]) -> bool:
    """What torch's multi-tensor kernels need to be told: they step complex
    tensors through their real views only when this is True."""
    return any(torch.is_complex(p) for p in params)


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
        grad, _ = _decayed(grads[i], param, 0. if decoupled else weight_decay,
                           maximize)
        # Complex tensors: moments on the real views, as torch.optim; the
        # update is centralized as the complex tensor it is (below).
        grad = _real(grad)
        exp_avg, exp_avg_sq = _real(exp_avgs[i]), _real(exp_avg_sqs[i])
        state_steps[i] += 1
        bc1, bc2_sqrt = _bias_corrections(state_steps[i].item(), beta1, beta2)

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
            delta.add_(param, alpha=lr * weight_decay)
        param.sub_(delta.sub_(_row_mean(delta)))


def _multi_tensor_adam_gc(params: List[Tensor], grads: List[Tensor],
                          exp_avgs: List[Tensor], exp_avg_sqs: List[Tensor],
                          max_exp_avg_sqs: List[Tensor],
                          state_steps: List[Tensor], *, gc_on_update: bool,
                          decoupled: bool, amsgrad: bool, beta1: float,
                          beta2: float, lr: float, weight_decay: float,
                          eps: float, maximize: bool) -> None:
    """Foreach kernel of both modes (every tensor given here is centralized).

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
            d, _ = _foreach_decayed(dev_params, dev_grads, l2, maximize)
        else:
            d = centralized_grads(
                dev_params, dev_grads, l2, maximize, foreach=True)
        if decoupled and weight_decay != 0:
            if gc_on_update:
                torch._foreach_lerp_(
                    dev_params,
                    [_row_mean(p).to(p.dtype) for p in dev_params],
                    lr * weight_decay)
            else:
                torch._foreach_mul_(dev_params, 1 - lr * weight_decay)
        # Complex tensors: moments and step on the real views, as torch.
        d, real_params, dev_avgs, dev_sqs, dev_max_sqs = (
            [_real(t) for t in lst]
            for lst in (d, dev_params, dev_avgs, dev_sqs, dev_max_sqs))
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
        torch._foreach_add_(denom, [eps * c[1] for c in corrections])
        step_sizes = [-lr * c[1] / c[0] for c in corrections]
        if not gc_on_update:
            torch._foreach_addcdiv_(real_params, dev_avgs, denom, step_sizes)
            continue
        # ``exp_avg / denom`` into denom's memory: on the CPU a second
        # fresh tensor per step costs more in page faults than two passes.
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
        torch._foreach_add_([tensors[i] for i in idx],
                            [others[i] for i in idx],
                            alpha=scale)


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
                         plain_lists) = _partition(centralized, params, grads,
                                                   state_sums, state_steps)
    if plain_idx:
        _torch_adagrad(
            *plain_lists,
            foreach=foreach,
            has_complex=_has_complex(plain_lists[0]),
            **hyper)
    if gc_idx:
        hyper.update(weight_decay=0., maximize=False)
        _torch_step_on_centralized(_torch_adagrad, gc_lists, weight_decay,
                                   maximize, foreach, hyper)
