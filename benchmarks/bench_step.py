"""Optimizer step time of the GC optimizers against torch.optim.

Gradient Centralization: Yong et al., ECCV 2020 (arXiv:2004.01461).

The parameter set is every trainable tensor of MMDetection's own Mask R-CNN
R50-FPN 1x config (``init_cfg=None``: nothing is downloaded), with fixed
random gradients. Every optimizer steps its own copy of the parameters; the
rows are timed round-robin in one run so that machine noise hits them
alike, and the median step time of each is printed with its ratios to the
best torch.optim for-loop / foreach row of the same family and to torch's
foreach row (the kernel GPU users run), with the targets checked: GC
foreach rows within 1.10x of torch's foreach, GC on the update within 1.05x
of the bare optimizer, the fused GC kernels within 0.6x of the best
for-loop / foreach torch step (and their ratio to torch's own fused step,
which has no GC).

Usage::

    python benchmarks/bench_step.py [--steps 20] [--rows SGD Adam AdamW]
"""
import argparse
import statistics
import time
from typing import Callable, Dict, List

import torch
from torch import Tensor

import mmdet_gc
from mmdet_gc.optim.fused import extension_name, fused_unavailable_reason
from mmdet_gc.optim.gc import is_centralized
from mmdet_gc.utils import mmdet_config_path

SGD_HYPER = dict(lr=0.02, momentum=0.9, weight_decay=1e-4)
#: Every GC foreach row against torch's foreach row of its family.
FOREACH_TARGET = 1.10
#: GC on the update (any optimizer) against the optimizer bare.
UPDATE_TARGET = 1.05
#: A compiled GC kernel against the best for-loop / foreach step of its
#: family.
FUSED_TARGET = 0.60


def mask_rcnn_params() -> List[Tensor]:
    """Trainable parameters of mmdet's Mask R-CNN R50-FPN 1x (detached)."""
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    cfg = Config.fromfile(
        mmdet_config_path('mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'))
    cfg.model.backbone.init_cfg = None
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    return [p.detach() for p in model.parameters() if p.requires_grad]


class NaiveSGD_GC:
    """A per-tensor loop that allocates a tensor per operation.

    The shape of the public reference code, ported to today's torch: it is
    the baseline that a fused, in-place kernel has to beat.
    """

    def __init__(self, params: List[Tensor], lr: float, momentum: float,
                 weight_decay: float) -> None:
        self.params = params
        self.lr, self.momentum, self.wd = lr, momentum, weight_decay
        self.bufs: Dict[int, Tensor] = {}

    @torch.no_grad()
    def step(self) -> None:
        for i, p in enumerate(self.params):
            d = p.grad + self.wd * p
            if is_centralized(p, conv_only=False):
                d = d - d.mean(dim=tuple(range(1, d.dim())), keepdim=True)
            buf = self.bufs.get(i)
            buf = d.clone() if buf is None else self.momentum * buf + d
            self.bufs[i] = buf
            p.sub_(self.lr * buf)


def sgd_rows() -> Dict[str, Callable]:
    return {
        'torch.optim.SGD (foreach)':
        lambda ps: torch.optim.SGD(ps, foreach=True, **SGD_HYPER),
        'torch.optim.SGD (for-loop)':
        lambda ps: torch.optim.SGD(ps, foreach=False, **SGD_HYPER),
        'SGD_GC (single-tensor)':
        lambda ps: mmdet_gc.SGD_GC(ps, foreach=False, **SGD_HYPER),
        'SGD_GC (foreach)':
        lambda ps: mmdet_gc.SGD_GC(ps, foreach=True, **SGD_HYPER),
        'SGD_GCC (single-tensor)':
        lambda ps: mmdet_gc.SGD_GCC(ps, foreach=False, **SGD_HYPER),
        # torch's own fused CPU SGD (no GC) and our compiled GC kernel.
        'torch.optim.SGD (fused)':
        lambda ps: torch.optim.SGD(ps, fused=True, **SGD_HYPER),
        'SGD_GC (fused)':
        lambda ps: mmdet_gc.SGD_GC(ps, fused=True, **SGD_HYPER),
        'SGD_GCC (fused)':
        lambda ps: mmdet_gc.SGD_GCC(ps, fused=True, **SGD_HYPER),
        'naive per-tensor SGD_GC loop':
        lambda ps: NaiveSGD_GC(ps, **SGD_HYPER),
    }


def adam_rows() -> Dict[str, Callable]:
    hyper = dict(lr=1e-4, weight_decay=1e-4)
    return {
        'torch.optim.Adam (foreach)':
        lambda ps: torch.optim.Adam(ps, foreach=True, **hyper),
        'torch.optim.Adam (for-loop)':
        lambda ps: torch.optim.Adam(ps, foreach=False, **hyper),
        'Adam_GC (single-tensor)':
        lambda ps: mmdet_gc.Adam_GC(ps, foreach=False, **hyper),
        'Adam_GC (foreach)':
        lambda ps: mmdet_gc.Adam_GC(ps, foreach=True, **hyper),
        'torch.optim.Adam (fused)':
        lambda ps: torch.optim.Adam(ps, fused=True, **hyper),
        'Adam_GC (fused)':
        lambda ps: mmdet_gc.Adam_GC(ps, fused=True, **hyper),
    }


def adamw_rows() -> Dict[str, Callable]:
    hyper = dict(lr=1e-4, weight_decay=0.05)
    return {
        'torch.optim.AdamW (foreach)':
        lambda ps: torch.optim.AdamW(ps, foreach=True, **hyper),
        'torch.optim.AdamW (for-loop)':
        lambda ps: torch.optim.AdamW(ps, foreach=False, **hyper),
        'AdamW_GCC2 (single-tensor)':
        lambda ps: mmdet_gc.AdamW_GCC2(ps, foreach=False, **hyper),
        'AdamW_GCC2 (foreach)':
        lambda ps: mmdet_gc.AdamW_GCC2(ps, foreach=True, **hyper),
        'AdamW_GC2 (single-tensor)':
        lambda ps: mmdet_gc.AdamW_GC2(ps, foreach=False, **hyper),
        'torch.optim.AdamW (fused)':
        lambda ps: torch.optim.AdamW(ps, fused=True, **hyper),
        'AdamW_GCC2 (fused)':
        lambda ps: mmdet_gc.AdamW_GCC2(ps, fused=True, **hyper),
        'AdamW_GC2 (fused)':
        lambda ps: mmdet_gc.AdamW_GC2(ps, fused=True, **hyper),
        # GC on the update of torch's own AdamW (any-optimizer hooks).
        'AdamW + GC on update (for-loop)':
        lambda ps: _on_update(torch.optim.AdamW(ps, foreach=False, **hyper)),
        'AdamW + GC on update (foreach)':
        lambda ps: _on_update(torch.optim.AdamW(ps, foreach=True, **hyper)),
    }


def _on_update(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    mmdet_gc.attach_gc(optimizer, on='update')
    return optimizer


FAMILIES = {'SGD': sgd_rows, 'Adam': adam_rows, 'AdamW': adamw_rows}


def bench(family: str, base: List[Tensor], grads: List[Tensor], steps: int,
          warmup: int) -> None:
    rows = FAMILIES[family]()
    opts = {}
    for name, make in rows.items():
        params = [p.clone().requires_grad_() for p in base]
        for p, g in zip(params, grads):
            p.grad = g  # shared, read-only: no optimizer writes a gradient
        opts[name] = make(params)
    times: Dict[str, List[float]] = {name: [] for name in rows}
    for it in range(warmup + steps):
        for name, opt in opts.items():  # round-robin: same noise for all
            t0 = time.perf_counter()
            opt.step()
            if it >= warmup:
                times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    # The best of torch's for-loop and foreach steps; its fused step (no
    # GC) is a row of its own.
    best_name = min((n for n in med
                     if n.startswith('torch.optim') and 'fused' not in n),
                    key=med.get)
    torch_foreach = f'torch.optim.{family} (foreach)'
    print(f'\n{family} family: median of {steps} steps '
          f'(after {warmup} warm-up); ratios to {best_name} and to '
          f'{torch_foreach}')
    print(f'| {"optimizer":<34} | {"ms / step":>9} | {"vs best":>7} | '
          f'{"vs foreach":>10} |')
    print(f'|{"-" * 36}|{"-" * 11}|{"-" * 9}|{"-" * 12}|')
    for name in rows:
        print(f'| {name:<34} | {med[name] * 1e3:9.1f} | '
              f'{med[name] / med[best_name]:6.2f}x | '
              f'{med[name] / med[torch_foreach]:9.2f}x |')
    # The targets: every GC foreach row within FOREACH_TARGET of torch's
    # foreach row; GC on the update of torch's optimizer within
    # UPDATE_TARGET of the same optimizer and kernel bare.
    for name in rows:
        if name.startswith('torch'):
            continue
        if '(' not in name:
            continue
        kernel = name[name.rindex('('):]
        if 'on update' in name:
            bare, limit = f'torch.optim.{family} {kernel}', UPDATE_TARGET
        elif kernel == '(fused)':
            bare, limit = best_name, FUSED_TARGET
            torch_fused = f'torch.optim.{family} (fused)'
            print(f'  {name}: {med[name] / med[torch_fused]:.2f}x '
                  f'{torch_fused} (no GC)')
        elif kernel == '(foreach)':
            bare, limit = torch_foreach, FOREACH_TARGET
        else:
            continue
        ratio = med[name] / med[bare]
        verdict = 'within' if ratio <= limit else 'OVER'
        print(f'  {name}: {ratio:.2f}x {bare}, {verdict} the {limit:.2f}x '
              'target')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--steps', type=int, default=20)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument(
        '--rows',
        nargs='+',
        default=list(FAMILIES),
        choices=list(FAMILIES),
        help='optimizer families to time')
    parser.add_argument('--threads', type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    base = mask_rcnn_params()
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(p.shape, generator=gen) * 1e-3 for p in base]
    n = sum(p.numel() for p in base)
    print(f'Mask R-CNN R50-FPN: {n / 1e6:.1f}M trainable parameters in '
          f'{len(base)} tensors; torch {torch.__version__}, '
          f'{torch.get_num_threads()} threads')
    if args.rows:
        # Built (or loaded from its cache) here, not in a timed step.
        reason = fused_unavailable_reason()
        print('fused GC kernels: ' +
              (f'compiled ({extension_name()})' if reason is None else
               f'NOT available ({reason}): its rows time the fallback'))
    for family in args.rows:
        bench(family, base, grads, args.steps, args.warmup)


if __name__ == '__main__':
    main()
