"""The maths of Gradient Centralization, shared by every kernel.

Yong et al., "Gradient Centralization: A New Optimization Technique for Deep
Neural Networks", ECCV 2020 (arXiv:2004.01461).

For a weight of shape ``(C_out, d1, d2, ...)`` the GC operator removes, from
each output row ("filter"), the mean of that row::

    GC(G) = G - mean(G over every dim but 0, keepdim=True)

It is a linear projection, so ``GC(GC(G)) == GC(G)``. ``_GC`` optimizers
centralize every tensor with ``ndim > 1`` (conv and fc weights), ``_GCC``
optimizers only tensors with ``ndim > 3`` (conv weights)
(:func:`is_centralized`). This module holds that operator, its row means,
the decayed and centralized gradient every family's kernels start from, and
the partition of a step's tensors between GC kernels and torch.optim's
own; the optimizer families (:mod:`.sgd`, :mod:`.adam`, :mod:`.adagrad`),
the fused kernels (:mod:`.fused`), the any-optimizer hooks and the
diagnostics all use it, and it imports none of them.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = [
    'is_centralized', 'row_mean', 'centralize', 'foreach_centralize',
    'centralized_grads', 'default_foreach', 'partition'
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


def row_mean(t: Tensor,
             dtype: Optional[torch.dtype] = None,
             keepdim: bool = True) -> Tensor:
    """The mean of each output row: over every dim but 0, kept for
    broadcasting unless ``keepdim=False``.

    Args:
        t (Tensor): A weight, gradient or update with ``ndim > 1``.
        dtype (torch.dtype, optional): What to accumulate (and return) in.
            By default the tensor's own, and float32 for half precision so
            that the mean of a large filter does not lose the low bits it
            exists to remove; the diagnostics use float64.
        keepdim (bool): Keep the reduced dims. Defaults to True.
    """
    acc = dtype or (torch.float32 if t.dtype in _HALF_DTYPES else t.dtype)
    return t.mean(dim=tuple(range(1, t.dim())), keepdim=keepdim, dtype=acc)


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
    return _sub_new(t, row_mean(t))


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
    means = [row_mean(t) for t in tensors]  # torch has no foreach mean
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


def partition(mask: Sequence[bool], *lists: Sequence):
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


def decayed_grad(grad: Tensor, param: Tensor, weight_decay: float,
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


def foreach_decayed_grads(params: List[Tensor], grads: List[Tensor],
                          weight_decay: float,
                          maximize: bool) -> Tuple[List[Tensor], bool]:
    """:func:`decayed_grad` over lists, with foreach kernels."""
    if maximize:
        d = torch._foreach_neg(grads)
        if weight_decay != 0:
            torch._foreach_add_(d, params, alpha=weight_decay)
        return d, True
    if weight_decay != 0:
        return torch._foreach_add(grads, params, alpha=weight_decay), True
    return grads, False


def centralized_grad(grad: Tensor, param: Tensor, weight_decay: float,
                     maximize: bool) -> Tensor:
    """``GC((-)grad + weight_decay * param)`` as a new tensor."""
    d, owned = decayed_grad(grad, param, weight_decay, maximize)
    mean = row_mean(d)
    # A tensor made above is ours to centre in place; the gradient is not.
    return d.sub_(mean) if owned else _sub_new(d, mean)


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
            centralized_grad(g, p, weight_decay, maximize)
            for p, g in zip(params, grads)
        ]
    d, owned = foreach_decayed_grads(params, grads, weight_decay, maximize)
    return foreach_centralize(d, inplace=owned)


def torch_step_on_centralized(torch_kernel, lists: List[list],
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
            *lists, foreach=True, has_complex=has_complex(params), **hyper)
        return
    for i, (p, g) in enumerate(zip(params, grads)):
        one = [lst[i:i + 1] for lst in lists]  # an empty list stays empty
        one[1] = [centralized_grad(g, p, weight_decay, maximize)]
        torch_kernel(*one, foreach=False, **hyper)


def has_complex(params: Sequence[Tensor]) -> bool:
    """What torch's multi-tensor kernels need to be told: they step complex
    tensors through their real views only when this is True."""
    return any(torch.is_complex(p) for p in params)
