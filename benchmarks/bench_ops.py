"""Ops per optimizer step of the GC optimizers beside torch.optim's.

Gradient Centralization: Yong et al., ECCV 2020 (arXiv:2004.01461).

On a GPU every aten op a step dispatches is one kernel launch, and for the
hundreds of small tensors of a detector the launches, not the arithmetic,
set the step time. This script counts them: the aten ops one steady-state
``step()`` dispatches (after two warm-up steps, so that the state exists),
views left out (they launch nothing), and apart from them the host reads
(``aten._local_scalar_dense``: ``.item()``), which launch nothing where
they read a CPU tensor: torch's non-capturable Adam and Adagrad keep their
step counts on the CPU and read each one on the host, every step, and so do
our Adam kernels. It runs the paths a CUDA device takes
on the CPU (``MMDET_GC_CUDA_PATHS=1``: the row means of a step in one
segmented reduction, torch's fused kernels for ``fused=True``); the count
depends on the number of tensors and their kinds, not on their sizes, so
each parameter keeps its rank and number of rows with its other dims cut
to 2.

Rows: every GC optimizer (foreach and fused) beside torch's optimizer of
its family, at the trainable parameters of MMDetection's Mask R-CNN
R50-FPN 1x and at twice as many tensors (the set twice).

Usage::

    python benchmarks/bench_ops.py [--device cuda]
"""
import argparse
import os
from typing import Callable, Dict, List

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

import mmdet_gc
from mmdet_gc.optim import GC_OPTIMIZERS
from mmdet_gc.optim.gc import CUDA_PATHS_ENV

#: Hyper-parameters per family: every term of the step on.
HYPER = {
    'SGD': dict(lr=0.02, momentum=0.9, weight_decay=1e-4),
    'SGDW': dict(lr=0.02, momentum=0.9, weight_decay=1e-4),
    'Adam': dict(lr=1e-4, weight_decay=1e-4),
    'AdamW': dict(lr=1e-4, weight_decay=0.05),
    'Adagrad': dict(lr=0.01, weight_decay=1e-4),
}
#: torch.optim's optimizer of each family (SGDW: SGD, whose step it is but
#: for the decay).
TORCH = {
    'SGD': torch.optim.SGD,
    'SGDW': torch.optim.SGD,
    'Adam': torch.optim.Adam,
    'AdamW': torch.optim.AdamW,
    'Adagrad': torch.optim.Adagrad,
}

#: A read of a tensor's value on the host (``.item()``, ``bool(t)``).
HOST_READ = 'aten._local_scalar_dense.default'


class _Count(TorchDispatchMode):
    """Records the aten ops dispatched inside, views left out."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: List[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and func.namespace == 'aten':
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def launches(ops: List[str]) -> int:
    """The ops that launch a kernel: all but the host reads."""
    return sum(op != HOST_READ for op in ops)


def ops_per_step(make: Callable[[List[Tensor]], torch.optim.Optimizer],
                 shapes: List[torch.Size],
                 device: str = 'cpu') -> List[str]:
    """The ops of one steady-state step of ``make(params)`` over parameters
    of ``shapes`` (each with a gradient) on ``device``, host reads
    included."""
    gen = torch.Generator().manual_seed(0)
    params = [
        torch.randn(s, generator=gen).to(device).requires_grad_()
        for s in shapes
    ]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(device)
    opt = make(params)
    for _ in range(2):
        opt.step()
    with _Count() as count:
        opt.step()
    return count.ops


def small(shapes: List[torch.Size]) -> List[torch.Size]:
    """Each shape with its rows and rank kept, its other dims cut to 2."""
    return [torch.Size([s[0]] + [min(d, 2) for d in s[1:]]) for s in shapes]


def mask_rcnn_shapes() -> List[torch.Size]:
    """The shapes of Mask R-CNN R50-FPN 1x's trainable parameters."""
    from bench_step import mask_rcnn_params
    return [p.shape for p in mask_rcnn_params('meta')]


def rows() -> Dict[str, Callable]:
    """Every GC optimizer, foreach and fused, after torch's of its family."""
    out: Dict[str, Callable] = {}
    for base in ('SGD', 'Adam', 'AdamW', 'Adagrad'):
        hyper = HYPER[base]
        for mode in ('foreach', 'fused'):
            out[f'torch.optim.{base} ({mode})'] = (
                lambda ps, b=base, m=mode, h=hyper: TORCH[b](ps, **{
                    m: True
                }, **h))
    for name, cls in GC_OPTIMIZERS.items():
        hyper = HYPER[cls.base_algorithm]
        for mode in ('foreach', 'fused'):
            out[f'{name} ({mode})'] = (
                lambda ps, c=cls, m=mode, h=hyper: c(ps, **{m: True}, **h))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--device',
        default='cpu',
        help='cpu (the CUDA paths run on the CPU) or cuda (the paths '
        'themselves, tools/gpu_check.sh)')
    device = parser.parse_args().device
    os.environ[CUDA_PATHS_ENV] = '1'
    shapes = small(mask_rcnn_shapes())
    sets = {
        f'{len(shapes)} tensors': shapes,
        f'{2 * len(shapes)} tensors': shapes * 2
    }
    print(f'mmdet_gc {mmdet_gc.__version__}, torch {torch.__version__}; '
          'aten ops per step that launch a kernel (views and host reads '
          f'left out), on {device} (the paths CUDA takes); parameters: '
          'Mask R-CNN R50-FPN 1x (and twice); host reads: .item() of CPU '
          'step counts')
    header = f'{"optimizer":28s}' + ''.join(
        f'{k:>14s}' for k in sets) + f'{"host reads":>12s}'
    print(header)
    print('-' * len(header))
    for name, make in rows().items():
        ops = [ops_per_step(make, s, device) for s in sets.values()]
        print(f'{name:28s}' + ''.join(f'{launches(o):14d}' for o in ops) +
              f'{ops[0].count(HOST_READ):12d}')


if __name__ == '__main__':
    main()
