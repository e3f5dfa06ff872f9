"""An MMEngine optimizer wrapper whose optimizer step is compiled.

``torch.compile`` turns a GC step (the row means, the centralization and
the optimizer's update) into a few fused kernels. A compiled step is
specialized on the Python numbers it reads, and MMEngine's parameter
schedulers write a new float into ``param_group['lr']`` whenever they
change it, so a step compiled as it is would compile again at every new
learning rate. As torch documents for its own compiled optimizers, the
learning rate goes in as a tensor instead: this wrapper keeps one per
param group, fills it with the group's float before each step and hands
it to the compiled step, so a schedule never recompiles; the groups keep
their floats for the schedulers, the logs and the checkpoints.
"""
from typing import Any, Dict, List, Optional, Union

import torch
from mmengine.optim import OptimWrapper
from torch.optim import Optimizer


class CompiledOptimWrapper(OptimWrapper):
    """:class:`~mmengine.optim.OptimWrapper` with a compiled
    ``optimizer.step``.

    Gradient clipping and accumulation are the parent's; only the step is
    compiled, on the first call (a first step that creates the optimizer's
    state, as Adam's does, compiles once more on the second).

    Args:
        optimizer (Optimizer): The optimizer, e.g. ``SGD_GC``.
        compile (dict | bool): Keyword arguments of :func:`torch.compile`
            (``backend``, ``mode``...); True for its defaults. The step is
            compiled with ``fullgraph=True`` unless this says otherwise.
            Defaults to True.
        **kwargs: :class:`~mmengine.optim.OptimWrapper`'s (``clip_grad``,
            ``accumulative_counts``).

    Example:
        >>> optim_wrapper = dict(
        ...     type='CompiledOptimWrapper',
        ...     optimizer=dict(type='SGD_GC', lr=0.02, momentum=0.9,
        ...                    weight_decay=0.0001),
        ...     compile=dict(backend='inductor'))
    """

    def __init__(self,
                 optimizer: Optimizer,
                 compile: Union[bool, Dict[str, Any]] = True,
                 **kwargs: Any) -> None:
        super().__init__(optimizer, **kwargs)
        if not isinstance(compile, (bool, dict)):
            raise TypeError('CompiledOptimWrapper: compile must be a dict of '
                            'torch.compile arguments or a bool, not '
                            f'{type(compile).__name__}')
        self.compile_kwargs = dict(fullgraph=True)
        if isinstance(compile, dict):
            self.compile_kwargs.update(compile)
        self.compiled = compile is not False
        self._step: Optional[Any] = None
        self._lrs: List[torch.Tensor] = []

    def step(self, **kwargs: Any) -> None:
        """Clip the gradients if configured, then run the compiled step
        with each group's learning rate as a tensor."""
        if self.clip_grad_kwargs:
            self._clip_grad()
        if not self.compiled:
            self.optimizer.step(**kwargs)
            return
        if self._step is None:
            self._step = torch.compile(self.optimizer.step,
                                       **self.compile_kwargs)
        groups = self.optimizer.param_groups
        if len(self._lrs) != len(groups):
            self._lrs = [
                torch.tensor(float(g['lr']), dtype=torch.float64)
                for g in groups
            ]
        floats = [g['lr'] for g in groups]
        try:
            for group, lr, value in zip(groups, self._lrs, floats):
                lr.fill_(value)
                group['lr'] = lr
            self._step(**kwargs)
        finally:
            for group, value in zip(groups, floats):
                group['lr'] = value
