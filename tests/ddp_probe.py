"""A hook for the DDP test: each rank saves its parameters after training.

Parameters only: MMEngine's DDP wrapper does not broadcast buffers, so BN
running statistics are per rank by design.
"""
import os.path as osp

import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class DumpParamsHook(Hook):
    """Write ``params_rank{rank}.pth`` into the work dir after training."""

    def after_train(self, runner) -> None:
        model = getattr(runner.model, 'module', runner.model)
        torch.save({
            k: v.detach().clone()
            for k, v in model.named_parameters()
        }, osp.join(runner.work_dir, f'params_rank{runner.rank}.pth'))
