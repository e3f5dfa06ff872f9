"""SGD with Gradient Centralization: ``SGD_GC``, ``SGD_GCC``, ``SGDW_GC``
and ``SGDW_GCC``, as torch's ``torch/optim/sgd.py`` is laid out.

Yong et al., "Gradient Centralization: A New Optimization Technique for Deep
Neural Networks", ECCV 2020 (arXiv:2004.01461).

The classes are thin: they gather each group's tensors and call the
functional :func:`sgd_gc`, which dispatches to one of three kernels of one
signature: :func:`_single_tensor_sgd_gc` (the specification),
:func:`_multi_tensor_sgd_gc` (``foreach``) and :func:`fused_sgd_gc` (the
compiled CPU kernel of :mod:`.fused`). Tensors that are not centralized
take torch.optim's own kernels. Gradients are never modified, and the
momentum buffer is never centralized.
"""
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer
from torch.optim.sgd import sgd as _torch_sgd

from . import fused as _fused
from .base import GCOptimizer, check_non_negative, scalar
from .gc import centralized_grad, centralized_grads, default_foreach, partition


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
            :mod:`mmdet_gc.optim.fused` (parallel over weight rows; compiled on
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
    #: ``fused`` is supported (:mod:`mmdet_gc.optim.fused`).
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
                params,
                grads,
                bufs,
                centralized,
                decoupled=self.decoupled,
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
            :func:`fused_sgd_gc` (built on first use; where
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
    if _fused.use_fused(fused, foreach):
        fused_sgd_gc(params, grads, momentum_buffer_list, centralized, **hyper)
        return
    if foreach is None:
        foreach = default_foreach(params)
    (gc_idx, gc_lists), (plain_idx,
                         plain_lists) = partition(centralized, params, grads,
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
        d = centralized_grad(grads[i], param, weight_decay, maximize)
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


def fused_sgd_gc(params: List[Tensor],
                 grads: List[Tensor],
                 momentum_buffer_list: List[Optional[Tensor]],
                 centralized: List[bool],
                 *,
                 weight_decay: float,
                 momentum: float,
                 lr: float,
                 dampening: float,
                 nesterov: bool,
                 maximize: bool,
                 decoupled: bool = False) -> None:
    """SGD with GC through the compiled CPU kernel (``fused=True``).

    Same update and arguments as :func:`sgd_gc`, plus
    ``decoupled``. Centralized, contiguous CPU tensors of float32, float64,
    float16 or bfloat16 go through one call of the C++ kernel; other
    centralized tensors (channels_last, strided, complex) take the
    single-tensor kernel, and tensors that are not centralized take torch's
    fused SGD kernel, so that a float32 / float64 group with GC off equals
    ``torch.optim.SGD(fused=True)`` (torch's single-tensor kernel for other
    dtypes). A parameter takes the single-tensor kernels too where it, its
    gradient or its buffer does not read as values
    (:func:`_reads_as_values`: not contiguous, or with the negative or
    conjugate bit).

    Where the kernel cannot be built, or for tensors that are not on the
    CPU, one line is logged per process and the step runs
    :func:`sgd_gc` with ``foreach=False`` (CPU) or
    ``foreach=True`` (other devices) instead.

    Args:
        params (list[Tensor]): Parameters, updated in place.
        grads (list[Tensor]): Their dense gradients (never modified).
        momentum_buffer_list (list[Tensor | None]): One buffer per
            parameter, updated in place; a None entry receives a new buffer
            (when ``momentum != 0``).
        centralized (list[bool]): Whether GC applies to each parameter.
        weight_decay (float): L2 penalty, or with ``decoupled`` the
            decoupled decay of SGDW.
        momentum (float): Momentum factor.
        lr (float): Learning rate.
        dampening (float): Dampening of the momentum.
        nesterov (bool): Nesterov momentum.
        maximize (bool): Maximize the objective instead.
        decoupled (bool): Decoupled weight decay (SGDW): scale every
            parameter by ``1 - lr * weight_decay`` and take the step without
            an L2 term. Defaults to False.
    """
    if not params:
        return
    scale = 1.
    if decoupled and weight_decay != 0:
        scale, weight_decay = 1 - lr * weight_decay, 0.
    hyper = dict(
        weight_decay=weight_decay,
        momentum=momentum,
        lr=lr,
        dampening=dampening,
        nesterov=nesterov,
        maximize=maximize)
    if momentum == 0:
        bufs: List[Optional[Tensor]] = [None] * len(params)
    else:
        bufs = momentum_buffer_list
    module, on_cpu = _fused._module_for(params)
    if module is None or _fused._shares_written_memory(
            module, [*params, *bufs], grads):
        if scale != 1.:
            _fused._mul_(params, scale)
        sgd_gc(
            params,
            grads,
            momentum_buffer_list,
            centralized,
            foreach=not on_cpu,
            **hyper)
        return

    half_ok = _fused._half_safe(weight_decay, momentum, lr, 1 - dampening)
    takes = _fused._fused_takes(module, params, grads, bufs)
    kernel = [
        bool(c) and _fused._kernel_takes(p, t)
        and (p.dtype != torch.float16 or half_ok)
        for p, t, c in zip(params, takes, centralized)
    ]
    (k_idx, (k_params, k_grads,
             k_bufs)), (rest_idx, _) = partition(kernel, params, grads, bufs)
    if k_idx:
        new_bufs = module.sgd_gc_(k_params, k_grads, k_bufs, weight_decay,
                                  momentum, lr, dampening, nesterov, maximize,
                                  scale)
        for i, buf in zip(k_idx, new_bufs):
            momentum_buffer_list[i] = buf
    if not rest_idx:
        return
    if scale != 1.:
        _fused._mul_(_fused._take(params, rest_idx), scale)
    # The rest, in groups that each kernel takes whole: centralized
    # tensors the C++ kernel refused, plain tensors for torch's fused
    # kernel (which needs all or none of its buffers to exist), and plain
    # tensors it does not take.
    groups: Dict[str, List[int]] = {}
    for i in rest_idx:
        if centralized[i]:
            key = 'gc'
        elif _fused._torch_fused_takes(params[i], takes[i]):
            key = 'fused_new' if bufs[i] is None else 'fused'
        else:
            key = 'plain'
        groups.setdefault(key, []).append(i)
    for key, idx in groups.items():
        sub = [
            _fused._take(params, idx),
            _fused._take(grads, idx),
            _fused._take(momentum_buffer_list, idx)
        ]
        if key == 'gc':
            _single_tensor_sgd_gc(*sub, **hyper)
        else:
            _torch_sgd(
                *sub, foreach=False, fused=key.startswith('fused'), **hyper)
        if momentum != 0:
            for i, buf in zip(idx, sub[2]):
                momentum_buffer_list[i] = buf
