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
import functools
import os
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = [
    'is_centralized', 'row_mean', 'centralize', 'foreach_centralize',
    'centralized_grads', 'default_foreach', 'partition', 'launch_bound'
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
    if torch.compiler.is_compiling() and not t.is_complex():
        # inductor (torch 2.13, CPU) fails to generate a row reduction fused
        # with the in-place updates after it (KeyError in its outer-loop
        # fusion); a matrix-vector product is not fused into them.
        rows = t.reshape(t.shape[0], -1).to(acc)
        ones = torch.ones(rows.shape[1], 1, dtype=acc, device=t.device)
        mean = (rows @ ones) / rows.shape[1]
        return mean.view(t.shape[0],
                         *([1] * (t.dim() - 1)) if keepdim else (t.shape[0], ))
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


#: Set to ``1`` to run on the CPU the paths a CUDA device takes: the row
#: means of a foreach or fused step in one segmented reduction
#: (:func:`launch_bound`) and, for ``fused=True``, torch's fused kernels on
#: centralized gradients (:func:`mmdet_gc.optim.fused.fused_kernel`): how
#: they are tested without a GPU.
CUDA_PATHS_ENV = 'MMDET_GC_CUDA_PATHS'


def cuda_paths_on_cpu() -> bool:
    """Whether :data:`CUDA_PATHS_ENV` is set."""
    return os.environ.get(CUDA_PATHS_ENV, '0') not in ('', '0')


def launch_bound(tensors: Sequence[Tensor]) -> bool:
    """Whether a step over ``tensors`` pays for each kernel launch, so that
    GC takes its row means over all of them at once (:func:`_segmented`).

    True on every device but the CPU (CUDA, ``meta``), and on the CPU
    under :data:`CUDA_PATHS_ENV`; otherwise a mean per tensor is faster on
    the CPU (0.05 s against 0.28 s for one segmented pass over 46 tensors
    of 11 M elements, 2 cores). A compiled step leaves the fusion to
    inductor.
    """
    return bool(tensors) and not torch.compiler.is_compiling() and (
        tensors[0].device.type != 'cpu' or cuda_paths_on_cpu())


def _flat_view(t: Tensor) -> Optional[Tensor]:
    """``t`` as a 1-D view in memory order, each output row one contiguous
    run (row-major or channels_last), or None where its memory is not such
    (then the caller copies it in logical order)."""
    if t.is_contiguous():
        return t.view(-1)
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).reshape(-1)
    return None


def _shaped_like(part: Tensor, t: Tensor, in_memory_order: bool) -> Tensor:
    """The inverse of :func:`_flat_view`: ``part`` viewed as ``t`` is laid
    out (a copy in logical order comes back contiguous)."""
    if in_memory_order and not t.is_contiguous():  # channels_last
        n, c, h, w = t.shape
        return part.view(n, h, w, c).permute(0, 3, 1, 2)
    return part.view(t.shape)


@functools.lru_cache(maxsize=64)
def _row_lengths(shapes: Tuple[Tuple[int, int], ...],
                 device: torch.device) -> Tensor:
    """The length of every output row of a step's tensors, ``(rows,
    length)`` each, on ``device``: made once per parameter set (a copy to
    the device), then reused by every step."""
    lengths = [length for rows, length in shapes for _ in range(rows)]
    return torch.tensor(lengths, dtype=torch.long, device=device)


def _segmented(tensors: Sequence[Tensor]) -> Tuple[Tensor, List[Tensor]]:
    """A new buffer holding ``tensors`` one after the other (one ``cat``),
    and views of it shaped and laid out as each tensor."""
    flats = [_flat_view(t) for t in tensors]
    buffer = torch.cat(
        [t.reshape(-1) if f is None else f for t, f in zip(tensors, flats)])
    parts = torch.split(buffer, [t.numel() for t in tensors])
    return buffer, [
        _shaped_like(part, t, f is not None)
        for part, t, f in zip(parts, tensors, flats)
    ]


def _expanded_row_means(buffer: Tensor, tensors: Sequence[Tensor]) -> Tensor:
    """Per element of ``buffer`` (laid out by :func:`_segmented`), the mean
    of its row, accumulated in float32 for half precision: one segmented
    reduction and one expansion, whatever the number of tensors."""
    key = tuple(
        (t.shape[0], t[0].numel() if t.shape[0] else 0) for t in tensors)
    lengths = _row_lengths(key, buffer.device)
    acc = buffer.float() if buffer.dtype in _HALF_DTYPES else buffer
    means = torch.segment_reduce(acc, 'mean', lengths=lengths)
    return means.repeat_interleave(lengths, output_size=buffer.numel())


def _can_segment(tensors: Sequence[Tensor]) -> bool:
    """Whether :func:`_segmented` takes these tensors: a launch-bound
    device, one real floating dtype (the caller groups by device and
    dtype)."""
    return launch_bound(tensors) and \
        len({(t.dtype, t.device) for t in tensors}) == 1 and \
        tensors[0].dtype in (torch.float32, torch.float64, *_HALF_DTYPES)


def foreach_centralize(tensors: Sequence[Tensor],
                       inplace: bool = False) -> List[Tensor]:
    """:func:`centralize` over a list, using foreach kernels where possible.

    On a launch-bound device (:func:`launch_bound`) the row means of all
    the tensors are one segmented reduction, so the ops do not grow with
    the number of tensors; elsewhere one mean per tensor.

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
    if _can_segment(tensors):
        buffer, views = _segmented(tensors)
        means = _expanded_row_means(buffer, tensors)
        if inplace:
            torch._foreach_sub_(tensors, _segmented_views(means, tensors))
            return tensors
        buffer.sub_(means)
        return views
    means = [row_mean(t) for t in tensors]  # torch has no foreach mean
    if inplace:
        torch._foreach_sub_(tensors, means)
        return tensors
    if any(t.dtype in _HALF_DTYPES for t in tensors):
        # A foreach sub would promote to the float32 mean's dtype.
        return [_sub_new(t, m) for t, m in zip(tensors, means)]
    return list(torch._foreach_sub(tensors, means))


def _segmented_views(buffer: Tensor,
                     tensors: Sequence[Tensor]) -> List[Tensor]:
    """Views of a buffer laid out by :func:`_segmented` (e.g. its expanded
    row means) shaped as ``tensors``."""
    parts = torch.split(buffer, [t.numel() for t in tensors])
    return [
        _shaped_like(part, t,
                     _flat_view(t) is not None)
        for part, t in zip(parts, tensors)
    ]


def foreach_row_means(tensors: Sequence[Tensor]) -> List[Tensor]:
    """Each tensor's row means in its own dtype, broadcastable against it
    (on a launch-bound device expanded to its shape, in a number of ops
    that does not depend on the number of tensors)."""
    tensors = list(tensors)
    if tensors and _can_segment(tensors):
        buffer, _ = _segmented(tensors)
        means = _expanded_row_means(buffer, tensors).to(buffer.dtype)
        return _segmented_views(means, tensors)
    return [row_mean(t).to(t.dtype) for t in tensors]


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


def take(lst: Sequence, idx: Sequence[int]) -> list:
    """The entries of ``lst`` at ``idx``; an empty list (torch's "unused",
    e.g. ``max_exp_avg_sqs`` without amsgrad) stays empty."""
    return [lst[i] for i in idx] if lst else []


def grad_copies(grads: Sequence[Tensor]) -> List[Tensor]:
    """Copies of ``grads`` (``x * 1`` is exact; one launch) for a torch
    kernel that writes into its gradient list, so that ``p.grad`` is never
    modified."""
    return torch._foreach_mul(list(grads), 1.)


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
        out.append((idx, [take(lst, idx) for lst in lists]))
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
                      foreach: bool = False,
                      grad_scale: Optional[Tensor] = None) -> List[Tensor]:
    """``GC((-)g + weight_decay * p)`` for each pair, as new tensors.

    The sign of ``maximize`` and an L2 penalty are folded in before GC, as
    the paper orders them; the gradients themselves are not modified. With
    ``grad_scale`` (a GradScaler's scale ``s``, for a kernel that unscales
    inside), the decay term is scaled alike, ``GC((-)g + wd * s * p)``, so
    that the kernel's ``x / s`` is the step's ``GC((-)g / s + wd * p)``.

    Args:
        params (list[Tensor]): Parameters.
        grads (list[Tensor]): Their gradients.
        weight_decay (float): L2 penalty to fold in (0 for none).
        maximize (bool): Negate the gradients.
        foreach (bool): Use foreach kernels. Defaults to False.
        grad_scale (Tensor, optional): The scale the gradients carry.

    Returns:
        list[Tensor]: The centralized gradients.
    """
    if grad_scale is not None and weight_decay != 0:
        # Once per step, on the device (no host sync), in float64: a
        # float32 ``wd`` would round it.
        weight_decay = grad_scale.to(torch.float64) * weight_decay
        foreach = True
    if not foreach:
        return [
            centralized_grad(g, p, weight_decay, maximize)
            for p, g in zip(params, grads)
        ]
    if grads and _can_segment(grads):
        # One buffer for the whole step: cat, sign, decay, mean, subtract.
        buffer, views = _segmented(grads)
        if maximize:
            buffer.neg_()
        if isinstance(weight_decay, Tensor):
            torch._foreach_add_(views,
                                torch._foreach_mul(params, weight_decay))
        elif weight_decay != 0:
            torch._foreach_add_(views, params, alpha=weight_decay)
        buffer.sub_(_expanded_row_means(buffer, grads))
        return views
    if isinstance(weight_decay, Tensor):
        d = torch._foreach_mul(params, weight_decay)
        torch._foreach_add_(d, grads, alpha=-1 if maximize else 1)
        return foreach_centralize(d, inplace=True)
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


def split_step(centralized: Sequence[bool],
               lists: List[list],
               gc_step,
               plain_step,
               out: Optional[int] = None) -> None:
    """Run ``gc_step`` on the centralized entries of ``lists`` and
    ``plain_step`` (torch.optim's own kernel) on the others, each with the
    sub-lists; entries of ``lists[out]`` a step replaced (new momentum
    buffers) are written back."""
    for (idx, sub), step in zip(
            partition(centralized, *lists), (gc_step, plain_step)):
        if not idx:
            continue
        step(*sub)
        if out is not None and sub[out]:
            for i, value in zip(idx, sub[out]):
                lists[out][i] = value


def add_scaled_(param: Tensor, d: Tensor, lr) -> None:
    """``param -= lr * d``; a tensor ``lr`` is never read on the host."""
    if isinstance(lr, Tensor):
        param.addcmul_(d, lr, value=-1)
    else:
        param.add_(d, alpha=-lr)


def foreach_add_scaled_(params: List[Tensor], d: List[Tensor], lr) -> None:
    """:func:`add_scaled_` over lists."""
    if isinstance(lr, Tensor):
        torch._foreach_sub_(params, torch._foreach_mul(d, lr))
    else:
        torch._foreach_add_(params, d, alpha=-lr)


def decoupled_decay_(params: List[Tensor],
                     lr,
                     weight_decay: float,
                     found_inf: Optional[Tensor] = None) -> None:
    """Decoupled weight decay (SGDW): ``p *= 1 - lr * weight_decay``,
    applied before the step, which then takes no decay term; with a
    GradScaler's ``found_inf`` set, the parameters stay as they are (read
    on the device, not the host)."""
    rate = lr * weight_decay
    if found_inf is not None:
        # In float64: a float32 scale would round ``lr * weight_decay``.
        rate = (1 - found_inf.to(torch.float64)) * rate
    scale = 1 - rate
    if torch.compiler.is_compiling():
        for p in params:
            p.mul_(scale)
        return
    # torch's foreach ops refuse to write a tensor with the negative or
    # conjugate bit (a ``torch._neg_view`` kept by load_state_dict).
    (_, (plain, )), (_, (others, )) = partition(
        [not (p.is_neg() or p.is_conj()) for p in params], params)
    if plain:
        torch._foreach_mul_(plain, scale)
    for p in others:
        p.mul_(scale)


def choose_kernel(params: Sequence[Tensor], foreach: Optional[bool],
                  fused: Optional[bool], grad_scale: Optional[Tensor],
                  found_inf: Optional[Tensor], single, multi, fused_kernel):
    """The kernel a family's functional runs, chosen as torch.optim's
    functionals choose: ``fused`` (opt-in), else ``foreach`` (``None``:
    foreach on CUDA, a loop on the CPU), else the single-tensor kernel;
    a GradScaler's tensors go to the fused kernel only. A compiled step
    runs the single-tensor kernel, which inductor fuses."""
    if fused and foreach:
        raise ValueError('`fused` and `foreach` cannot be `True` together')
    if torch.compiler.is_compiling():
        # inductor fuses the loop; neither our compiled kernels nor the
        # foreach ops with a step size per tensor trace whole.
        if grad_scale is not None or found_inf is not None:
            raise RuntimeError('a compiled GC step takes no GradScaler '
                               'scale (compile it without AMP)')
        return single
    if fused:
        return fused_kernel
    if grad_scale is not None or found_inf is not None:
        raise RuntimeError('grad_scale and found_inf are taken by the fused '
                           'kernel only (fused=True)')
    if foreach is None:
        foreach = default_foreach(params)
    return multi if foreach else single
