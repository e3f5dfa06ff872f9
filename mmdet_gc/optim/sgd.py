"""SGD with Gradient Centralization: ``SGD_GC``, ``SGD_GCC``, ``SGDW_GC``
and ``SGDW_GCC``, as torch's ``torch/optim/sgd.py`` is laid out.

Yong et al., "Gradient Centralization: A New Optimization Technique for Deep
Neural Networks", ECCV 2020 (arXiv:2004.01461).

The classes are thin: they gather each group's tensors and call the
functional :func:`sgd_gc`, which applies SGDW's decoupled decay and chooses
one of three kernels of one signature: :func:`_single_tensor_sgd_gc` (the
specification), :func:`_multi_tensor_sgd_gc` (``foreach``) and
:func:`_fused_sgd_gc` (``fused``: the compiled CPU kernel of :mod:`.fused`,
or torch's own fused SGD on centralized gradients). No kernel calls the
functional. Tensors that are not centralized take torch.optim's own
kernels. Gradients are never modified, and the momentum buffer is never
centralized.
"""
from typing import Any, List, Optional, Sequence, Union

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer
from torch.optim.sgd import sgd as _torch_sgd

from . import fused as _fused
from .base import GCOptimizer, check_non_negative, scalar
from .gc import (add_scaled_, centralized_grad, centralized_grads,
                 choose_kernel, decoupled_decay_, foreach_add_scaled_,
                 grad_copies, split_step, take)


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
        fused (bool, optional): The fused step (:func:`_fused_sgd_gc`):
            on the CPU the compiled kernel of :mod:`mmdet_gc.optim.fused`
            (compiled on first use and cached; where it cannot be built,
            one line is logged and the single-tensor kernel runs), on
            other devices torch's fused SGD on centralized gradients, with
            a GradScaler's ``grad_scale`` / ``found_inf`` handled inside.
            ``None`` / False: the Python kernels (opt-in, as torch's fused
            SGD). Cannot be True together with ``foreach``.
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
    refused_modes = ('differentiable', )

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
        bufs = [
            self.state[p].get('momentum_buffer') if momentum != 0 else None
            for p in params
        ]
        sgd_gc(
            params,
            grads,
            bufs,
            centralized,
            group['foreach'],
            group['fused'],
            *self.amp_scaling(),
            weight_decay=group['weight_decay'],
            momentum=momentum,
            lr=group['lr'],
            dampening=group['dampening'],
            nesterov=group['nesterov'],
            maximize=group['maximize'],
            decoupled=self.decoupled)
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
           fused: Optional[bool] = None,
           grad_scale: Optional[Tensor] = None,
           found_inf: Optional[Tensor] = None,
           *,
           weight_decay: float,
           momentum: float,
           lr: Union[float, Tensor],
           dampening: float,
           nesterov: bool,
           maximize: bool,
           decoupled: bool = False) -> None:
    """SGD with GC, the update of ``SGD_GC`` / ``SGD_GCC`` (and SGDW's).

    For each parameter ``p`` with gradient ``g`` (in this order)::

        p = p * (1 - lr * weight_decay)   # decoupled (SGDW) only
        d = g + weight_decay * p          # L2 decay folded in first (SGD)
        d = GC(d) if centralized else d   # so the decay term is centred too
        buf = d (first step) | momentum * buf + (1 - dampening) * d
        d = d + momentum * buf if nesterov else buf
        p = p - lr * d

    Chooses one kernel, as ``torch.optim.sgd.sgd`` does: ``fused`` ->
    :func:`_fused_sgd_gc`, ``foreach`` -> :func:`_multi_tensor_sgd_gc`,
    else :func:`_single_tensor_sgd_gc` (the specification). Tensors that
    are not centralized take torch.optim.SGD's own kernels, so they (and a
    group with GC off) equal ``torch.optim.SGD`` exactly.
    ``momentum_buffer_list`` is updated in place: an entry that was
    ``None`` receives the new buffer.

    Args:
        params (list[Tensor]): Parameters, updated in place.
        grads (list[Tensor]): Their dense gradients (never modified).
        momentum_buffer_list (list[Tensor | None]): One buffer per parameter
            (ignored when ``momentum == 0``).
        centralized (list[bool]): Whether GC applies to each parameter.
        foreach (bool, optional): Use the multi-tensor kernel; ``None``
            chooses as torch.optim does. Defaults to None.
        fused (bool, optional): Use the fused kernel (opt-in). Defaults to
            None.
        grad_scale (Tensor, optional): The scale the gradients carry
            (GradScaler), unscaled inside the fused kernel only.
        found_inf (Tensor, optional): 1 where GradScaler found an inf: the
            fused kernel then leaves parameters and state as they were.
        weight_decay (float): L2 penalty, or with ``decoupled`` SGDW's
            decoupled decay.
        momentum (float): Momentum factor.
        lr (float | Tensor): Learning rate (a tensor is never read on the
            host).
        dampening (float): Dampening of the momentum.
        nesterov (bool): Nesterov momentum.
        maximize (bool): Maximize the objective instead.
        decoupled (bool): Decoupled weight decay (SGDW). Defaults to False.
    """
    if not params:
        return
    kernel = choose_kernel(params, foreach, fused, grad_scale, found_inf,
                           _single_tensor_sgd_gc, _multi_tensor_sgd_gc,
                           _fused_sgd_gc)
    if decoupled and weight_decay != 0:
        decoupled_decay_(params, lr, weight_decay, found_inf)
        weight_decay = 0.
    kernel(
        params,
        grads,
        momentum_buffer_list,
        centralized,
        grad_scale,
        found_inf,
        weight_decay=weight_decay,
        momentum=momentum,
        lr=lr,
        dampening=dampening,
        nesterov=nesterov,
        maximize=maximize)


#: The hyper-parameters every SGD kernel takes, by keyword.
_HYPER = ('weight_decay', 'momentum', 'lr', 'dampening', 'nesterov',
          'maximize')


def _updated_buffer(buf: Optional[Tensor], d: Tensor, momentum: float,
                    dampening: float, nesterov: bool) -> Tensor:
    """The momentum buffer after this step (``d`` is centralized and ours)."""
    if buf is None:
        # The first buffer is ``d`` itself; nesterov reads ``d`` again after
        # this, so copy only then.
        return d.clone() if nesterov else d
    if dampening == 0:
        if torch.compiler.is_compiling():
            # dynamo takes no ``out=`` with a channels_last buffer; inductor
            # fuses this into one pass anyway.
            return buf.copy_(torch.add(d, buf, alpha=momentum))
        # One pass instead of torch's ``mul_`` + ``add_``: this pays for the
        # extra mean and subtraction of GC.
        return torch.add(d, buf, alpha=momentum, out=buf)
    return buf.mul_(momentum).add_(d, alpha=1 - dampening)


def _torch_plain(lists: List[list], foreach: bool, hyper: dict,
                 **kw: Any) -> None:
    """torch.optim.SGD's own step on the tensors GC leaves alone."""
    if foreach and hyper['nesterov'] and hyper['momentum'] != 0 and \
            hyper['weight_decay'] == 0 and not hyper['maximize']:
        # torch's foreach SGD adds the momentum into the gradient list in
        # place in exactly this case: give it copies (x * 1 is exact), so
        # that p.grad stays untouched.
        lists[1] = grad_copies(lists[1])
    _torch_sgd(*lists, foreach=foreach, **kw, **hyper)


def _single_tensor_sgd_gc(params: List[Tensor], grads: List[Tensor],
                          momentum_buffer_list: List[Optional[Tensor]],
                          centralized: List[bool],
                          grad_scale: Optional[Tensor],
                          found_inf: Optional[Tensor], **hyper: Any) -> None:
    """The specification: one tensor after the other."""
    weight_decay, momentum, lr, dampening, nesterov, maximize = (
        hyper[k] for k in _HYPER)

    def step_gc(params, grads, bufs):
        for i, param in enumerate(params):
            d = centralized_grad(grads[i], param, weight_decay, maximize)
            if momentum != 0:
                buf = _updated_buffer(bufs[i], d, momentum, dampening,
                                      nesterov)
                bufs[i] = buf
                d = d.add_(buf, alpha=momentum) if nesterov else buf
            add_scaled_(param, d, lr)

    split_step(centralized, [params, grads, momentum_buffer_list], step_gc,
               lambda *lists: _torch_plain(list(lists), False, hyper), 2)


def _multi_tensor_sgd_gc(params: List[Tensor], grads: List[Tensor],
                         momentum_buffer_list: List[Optional[Tensor]],
                         centralized: List[bool], grad_scale: Optional[Tensor],
                         found_inf: Optional[Tensor], **hyper: Any) -> None:
    """Foreach kernel: same arithmetic as :func:`_single_tensor_sgd_gc`; on
    a launch-bound device GC's ops do not grow with the number of
    tensors (:func:`~.gc.centralized_grads`)."""
    weight_decay, momentum, lr, dampening, nesterov, maximize = (
        hyper[k] for k in _HYPER)

    def step_gc(params, grads, bufs):
        grouped = Optimizer._group_tensors_by_device_and_dtype(
            [params, grads, bufs], with_indices=True)
        for (dev_params, dev_grads, dev_bufs), indices in grouped.values():
            d = centralized_grads(
                dev_params, dev_grads, weight_decay, maximize, foreach=True)
            if momentum != 0:
                new_bufs = _foreach_updated_buffers(dev_bufs, d, momentum,
                                                    dampening, nesterov)
                for j, buf in zip(indices, new_bufs):
                    bufs[j] = buf
                if nesterov:
                    torch._foreach_add_(d, new_bufs, alpha=momentum)
                else:
                    d = new_bufs
            foreach_add_scaled_(dev_params, d, lr)

    split_step(centralized, [params, grads, momentum_buffer_list], step_gc,
               lambda *lists: _torch_plain(list(lists), True, hyper), 2)


def _foreach_updated_buffers(bufs: List[Optional[Tensor]], d: List[Tensor],
                             momentum: float, dampening: float,
                             nesterov: bool) -> List[Tensor]:
    """:func:`_updated_buffer` over lists (``d`` is ours)."""
    if all(b is not None for b in bufs):
        if dampening == 0:
            # ``d + momentum * buf`` in one pass, written into ``d``, which
            # becomes the new buffer, unless nesterov still needs ``d``.
            if nesterov:
                return list(torch._foreach_add(d, bufs, alpha=momentum))
            torch._foreach_add_(d, bufs, alpha=momentum)
            return d
        torch._foreach_mul_(bufs, momentum)
        torch._foreach_add_(bufs, d, alpha=1 - dampening)
        return bufs
    # First step of some tensors.
    return [
        _updated_buffer(b, t, momentum, dampening, nesterov)
        for b, t in zip(bufs, d)
    ]


def _fused_sgd_gc(params: List[Tensor], grads: List[Tensor],
                  momentum_buffer_list: List[Optional[Tensor]],
                  centralized: List[bool], grad_scale: Optional[Tensor],
                  found_inf: Optional[Tensor], **hyper: Any) -> None:
    """The fused step (``fused=True``); which kernel runs is
    :func:`~mmdet_gc.optim.fused.fused_kernel`'s choice:

    - ``'gc'`` (CPU tensors, no GradScaler): centralized, contiguous
      tensors of float32, float64, float16 or bfloat16 go through one call
      of the C++ kernel (:mod:`.fused`); other centralized tensors
      (channels_last, strided, complex) take the single-tensor kernel, and
      tensors that are not centralized torch's fused SGD, so that a
      float32 / float64 group with GC off equals
      ``torch.optim.SGD(fused=True)``;
    - ``'torch'`` (other devices, a GradScaler's ``grad_scale`` /
      ``found_inf``, or ``MMDET_GC_CUDA_PATHS=1``): the centralized
      gradients ``GC((-)g + wd * s * p)`` are made into one scratch buffer
      and torch's own fused SGD steps on them with ``weight_decay=0``,
      unscaling by ``s`` and skipping on ``found_inf`` inside;
    - ``'spec'`` (no compiled kernel on the CPU): the single-tensor kernel.

    Arguments as :func:`sgd_gc`.
    """
    weight_decay, momentum, lr, dampening, nesterov, maximize = (
        hyper[k] for k in _HYPER)
    lists = [params, grads, momentum_buffer_list]
    bufs = momentum_buffer_list if momentum != 0 else [None] * len(params)
    kernel = _fused.fused_kernel(params, grad_scale, found_inf)
    if kernel == 'torch':
        _torch_fused_sgd_gc(*lists, centralized, grad_scale, found_inf, hyper)
        return
    if kernel == 'spec' or _fused.shares_written_memory([*params, *bufs],
                                                        grads):
        _single_tensor_sgd_gc(*lists, centralized, None, None, **hyper)
        return
    how = _fused.route(
        'sgd',
        'gc',
        params, [grads, bufs],
        centralized,
        scalars=(weight_decay, momentum, scalar(lr), 1 - dampening))
    k_idx = [i for i, h in enumerate(how) if h == 'gc']
    if k_idx:
        new_bufs = _fused.module().sgd_gc_(
            take(params, k_idx),
            take(grads, k_idx), take(bufs, k_idx), weight_decay, momentum,
            scalar(lr), dampening, nesterov, maximize, 1.)
        for i, buf in zip(k_idx, new_bufs):
            momentum_buffer_list[i] = buf
    # The rest: the specification, and torch's fused kernel in groups it
    # takes whole (all or none of its buffers made).
    for key, idx in _by_kernel(how, bufs, ('spec', 'torch')).items():
        sub = [take(lst, idx) for lst in lists]
        if key == 'spec':
            _single_tensor_sgd_gc(*sub, take(centralized, idx), None, None,
                                  **hyper)
        else:
            _torch_sgd(*sub, foreach=False, fused=True, **hyper)
        if momentum != 0:
            for i, buf in zip(idx, sub[2]):
                momentum_buffer_list[i] = buf


def _by_kernel(how: List[str], bufs: List[Optional[Tensor]],
               kernels: Sequence[str]) -> dict:
    """Indices by kernel (of ``kernels``), torch's fused SGD split by
    whether the buffers exist: it makes them on a first step only when all
    are missing."""
    groups: dict = {}
    for i, h in enumerate(how):
        if h in kernels:
            key = h if h == 'spec' else (h, bufs[i] is None)
            groups.setdefault(key, []).append(i)
    return groups


def _torch_fused_sgd_gc(params: List[Tensor], grads: List[Tensor],
                        momentum_buffer_list: List[Optional[Tensor]],
                        centralized: List[bool], grad_scale: Optional[Tensor],
                        found_inf: Optional[Tensor], hyper: dict) -> None:
    """torch's fused SGD on centralized gradients (see
    :func:`_fused_sgd_gc`): ``GC((-)g + wd * s * p)`` into one scratch
    buffer per device and dtype, then torch's kernel with
    ``weight_decay=0``, ``maximize=False``, unscaling by ``s`` and skipping
    on ``found_inf`` inside; plain tensors as torch.optim.SGD(fused=True)."""
    momentum = hyper['momentum']
    bufs = momentum_buffer_list if momentum != 0 else [None] * len(params)
    how = _fused.route('sgd', 'torch', params, [grads, bufs])
    new = [i for i, h in enumerate(how) if h == 'torch' and bufs[i] is None]
    if found_inf is not None and momentum != 0 and new:
        # torch makes a first step's buffers with ``empty_like`` and leaves
        # them so when it skips the step. Zeros instead: without dampening
        # a step from zero buffers is the first step, bit for bit, taken or
        # skipped; with dampening it is not, so the flag is read on the
        # host (only then).
        if hyper['dampening'] != 0:
            if bool(found_inf):
                return
        else:
            for i in new:
                momentum_buffer_list[i] = torch.zeros_like(
                    params[i], memory_format=torch.preserve_format)
    grads = _fused.torch_fused_grads(params, grads, how, centralized,
                                     hyper['weight_decay'], hyper['maximize'],
                                     grad_scale)
    lists = [params, grads, momentum_buffer_list]
    for key, idx in _by_kernel(how, bufs, ('torch', )).items():
        sub = [take(lst, idx) for lst in lists]
        for gc_on in (True, False):
            part = [
                j for j, i in enumerate(idx) if bool(centralized[i]) is gc_on
            ]
            if not part:
                continue
            one = [take(lst, part) for lst in sub]
            kw = dict(hyper, weight_decay=0., maximize=False) if gc_on \
                else hyper
            _torch_sgd(
                *one,
                foreach=False,
                fused=True,
                grad_scale=grad_scale,
                found_inf=found_inf,
                **kw)
            if momentum != 0:
                for j, buf in zip(part, one[2]):
                    momentum_buffer_list[idx[j]] = buf
    rest = [i for i, h in enumerate(how) if h == 'spec']
    unscaled = _fused.host_unscale(take(grads, rest), grad_scale,
                                   found_inf) if rest else None
    if unscaled is not None:  # None: nothing to do, or a skipped step
        sub = [take(params, rest), unscaled, take(momentum_buffer_list, rest)]
        _single_tensor_sgd_gc(*sub, take(centralized, rest), None, None,
                              **hyper)
        if momentum != 0:
            for i, buf in zip(rest, sub[2]):
                momentum_buffer_list[i] = buf
