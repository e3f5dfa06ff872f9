"""What every GC optimizer shares: argument checks and parameter gathering.

Gradient Centralization: Yong et al., ECCV 2020 (arXiv:2004.01461).
"""
import math
import numbers
import warnings
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import _get_scalar_dtype

from .gc import is_centralized

#: The param-group keys that switch GC.
GC_KEYS = ('gc', 'gc_conv_only')


def check_non_negative(**values: Any) -> None:
    """Raise ``ValueError`` naming the first hyper-parameter that is not a
    finite number >= 0 (a tensor must have one element), in torch.optim's
    words, and ``TypeError`` naming one that is no number at all."""
    for name, value in values.items():
        if isinstance(value, Tensor):
            if value.numel() != 1:
                raise ValueError(f'Tensor {name} must be 1-element')
            value = value.item()
        if not isinstance(value, numbers.Real):  # e.g. a --cfg-options typo
            raise TypeError(f'{name} must be a number, not '
                            f'{type(value).__name__} {value!r}')
        if not math.isfinite(value) or value < 0.0:
            label = 'learning rate' if name == 'lr' else \
                'epsilon value' if name == 'eps' else f'{name} value'
            raise ValueError(f'Invalid {label}: {value} ({name} must be '
                             'finite and >= 0)')


def scalar(value: Any) -> float:
    """A hyper-parameter as a Python number (a 1-element tensor read),
    except in a compiled step, which keeps a tensor (a tensor lr is how a
    schedule changes it without compiling again)."""
    if isinstance(value, Tensor) and not torch.compiler.is_compiling():
        return value.item()
    return value


def _is_flattened(p: Tensor) -> bool:
    """A 1-D tensor that stands for a flattened matrix, where detectable.

    FSDP1 marks its flat parameters (and their ``use_orig_params`` views)
    with ``_fsdp_flattened``; DeepSpeed ZeRO-3 keeps the real shape in
    ``ds_shape``. ZeRO-1/2 flat partitions carry no mark and cannot be told
    apart from a bias.
    """
    if p.dim() != 1:
        return False
    fsdp = getattr(p, '_fsdp_flattened', False) or getattr(
        p, '_is_flat_param', False)
    return bool(fsdp) or len(getattr(p, 'ds_shape', ())) > 1


_warned: set = set()


def warn_if_flattened(params: Iterable[Tensor], owner: str) -> None:
    """Warn once per process when GC would silently skip flat matrices."""
    flat = [p for p in params if _is_flattened(p)]
    if flat and owner not in _warned:
        _warned.add(owner)
        warnings.warn(
            f'{owner}: {len(flat)} parameter(s) are flattened or sharded '
            'matrices (FSDP1 flat parameters or DeepSpeed ZeRO partitions); '
            'they are 1-D, so GC cannot find their output rows and skips '
            'them. Shard along dim 0 instead (FSDP2 fully_shard keeps each '
            'output row on one rank, so per-row GC stays exact there).',
            stacklevel=3)


class GCOptimizer(Optimizer):
    """Base of the GC optimizers: GC switches that live in param groups.

    Two param-group keys control GC, so MMEngine's ``paramwise_cfg`` can set
    them per group (e.g. ``custom_keys={'rpn_head': dict(gc=False)}``):

    - ``gc`` (bool): centralize this group's weights at all.
    - ``gc_conv_only`` (bool): centralize only tensors with ``ndim > 3``
      (conv weights: the ``_GCC`` rule) instead of every tensor with
      ``ndim > 1`` (conv and fc weights: the ``_GC`` rule).

    Subclasses set :attr:`gc_conv_only` (the default of that key) and
    :attr:`base_algorithm`, build ``defaults`` and implement
    ``_update_group``.
    """

    #: Default of the ``gc_conv_only`` param-group key for this class.
    gc_conv_only: bool = False
    #: Name of the torch.optim optimizer this one adds GC to.
    base_algorithm: str = ''
    #: torch.optim's execution modes this class refuses at ``True``
    #: (accepted at ``None`` / ``False`` only): GC needs each weight row's
    #: mean, which none of those paths computes.
    refused_modes: Tuple[str, ...] = ('fused', 'differentiable')
    #: Whether the fused step takes a GradScaler's ``grad_scale`` and
    #: ``found_inf`` (unscaling and skipping inside, as torch's fused
    #: kernels): set on an instance built with ``fused=True``.
    amp_scaling_in_fused_step: bool = True

    def __init__(self, params: Any, defaults: Dict[str, Any]) -> None:
        defaults.setdefault('gc', True)
        if defaults.get('gc_conv_only') is None:
            defaults['gc_conv_only'] = self.gc_conv_only
        super().__init__(params, defaults)
        if defaults.get('fused') and self.amp_scaling_in_fused_step:
            # GradScaler then hands its scale and inf flag to step() and
            # neither unscales nor syncs with the host itself.
            self._step_supports_amp_scaling = True

    def amp_scaling(self) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """The ``(grad_scale, found_inf)`` a GradScaler set for this step
        (``(None, None)`` without one)."""
        return (getattr(self, 'grad_scale',
                        None), getattr(self, 'found_inf', None))

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        for mode in self.refused_modes:
            if param_group.get(mode, self.defaults.get(mode)):
                raise ValueError(
                    f'{type(self).__name__} does not support {mode}=True: '
                    'GC needs the mean of each weight row, which torch\'s '
                    f'{mode} path does not compute. Leave {mode} unset; '
                    'foreach=True gives the multi-tensor kernel')
        if all(
                param_group.get(k, self.defaults.get(k))
                for k in ('fused', 'foreach')):
            # Our fused kernels (mmdet_gc.optim.fused), as torch says of its
            # own.
            raise ValueError(f'{type(self).__name__}: `fused` and '
                             '`foreach` cannot be `True` together')
        super().add_param_group(param_group)
        warn_if_flattened(self.param_groups[-1]['params'], type(self).__name__)

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault('gc', True)
            group.setdefault('gc_conv_only', self.gc_conv_only)
            group.setdefault('maximize', False)
            group.setdefault('foreach', None)
            for mode in self.refused_modes:
                group.setdefault(mode, None if mode == 'fused' else False)
        # Older checkpoints (and torch's test_load_nontensor_step) hold
        # ``step`` as a number; the kernels want a tensor, as torch's do.
        for p_state in self.state.values():
            step = p_state.get('step') if isinstance(p_state, dict) else None
            if step is not None and not torch.is_tensor(step):
                p_state['step'] = torch.tensor(
                    float(step), dtype=_get_scalar_dtype())

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Load a state as torch.optim does, keeping this optimizer's GC
        switches.

        ``gc`` and ``gc_conv_only`` say what this optimizer is (``SGD_GCC``
        or ``SGD_GC``, a layer's ``gc=False`` in the config), not where
        training stands, so the values it was built with win over the
        loaded ones; a difference is reported in one warning. A state saved
        by torch.optim (without these keys) leaves them as they are.
        """
        mine = [{k: g[k] for k in GC_KEYS} for g in self.param_groups]
        saved = [{
            k: g[k]
            for k in GC_KEYS if k in g
        } for g in state_dict['param_groups']]
        super().load_state_dict(state_dict)
        changed = []
        for i, (group, kept,
                loaded) in enumerate(zip(self.param_groups, mine, saved)):
            for key in GC_KEYS:
                if key in loaded and loaded[key] != kept[key]:
                    changed.append(
                        f'group {i} {key!r}: {loaded[key]} -> {kept[key]}')
                group[key] = kept[key]
        if changed:
            warnings.warn(
                f'{type(self).__name__}: the GC switches it was built with '
                'win over the loaded state\'s (' + '; '.join(changed) + ')',
                stacklevel=2)

    def _gather(
        self,
        group: Dict[str,
                    Any]) -> Tuple[List[Tensor], List[Tensor], List[bool]]:
        """Parameters of ``group`` that have a gradient, with the GC mask."""
        params, grads, centralized = [], [], []
        for p in group['params']:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(
                    f'{type(self).__name__} does not support sparse '
                    f'gradients (parameter of shape {tuple(p.shape)}); GC '
                    'is defined on dense weight gradients. Put sparse '
                    'embeddings in another optimizer.')
            params.append(p)
            grads.append(p.grad)
            centralized.append(
                bool(group['gc'])
                and is_centralized(p, bool(group['gc_conv_only'])))
        return params, grads, centralized

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """Perform a single optimization step.

        Args:
            closure (callable, optional): Re-evaluates the model and returns
                the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._update_group(group, *self._gather(group))
        return loss

    def _update_group(self, group: Dict[str, Any], params: List[Tensor],
                      grads: List[Tensor], centralized: List[bool]) -> None:
        """Update the parameters of one group that have a gradient."""
        raise NotImplementedError
