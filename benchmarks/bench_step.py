"""Optimizer step time of the GC optimizers against torch.optim.

Gradient Centralization: Yong et al., ECCV 2020 (arXiv:2004.01461).

The parameter set is every trainable tensor of MMDetection's own Mask R-CNN
R50-FPN 1x config (``init_cfg=None``: nothing is downloaded), with fixed
random gradients. Every optimizer steps its own copy of the parameters,
timed in two designs (:func:`time_rows`): round-robin, every optimizer in
memory taking turns so that machine noise hits them alike, and alone, one
optimizer at a time on fresh parameters. The median step time of each row
is printed with its ratios to the best torch.optim for-loop / foreach row
of the same family, to torch's foreach row (the kernel GPU users run) and
to torch's fused row (which does no GC), with the targets checked in both
designs: GC foreach rows within 1.10x of torch's foreach, GC on the update
within 1.10x of the bare optimizer, the fused GC kernels within 1.05x of
torch's fused step and 0.6x of the best for-loop / foreach torch step.

Rows "(fused, torch kernel)" run the path a CUDA device takes for
``fused=True`` (torch's fused kernel on centralized gradients; on the CPU
under ``MMDET_GC_CUDA_PATHS=1``), rows "(compiled)" the step compiled with
``torch.compile(fullgraph=True)`` and a tensor lr (compiled during the
warm-up steps). On a CUDA device (``--device cuda``,
``tools/gpu_check.sh``) every step is timed to its completion
(``torch.cuda.synchronize``).

Usage::

    python benchmarks/bench_step.py [--steps 20] [--rows SGD Adam AdamW]
        [--design round-robin alone] [--device cuda]
"""
import argparse
import gc
import os
import statistics
import time
from typing import Callable, Dict, List

import torch
from torch import Tensor

import mmdet_gc
from mmdet_gc.optim.fused import extension_name, fused_unavailable_reason
from mmdet_gc.optim.gc import CUDA_PATHS_ENV, is_centralized
from mmdet_gc.utils import mmdet_config_path

SGD_HYPER = dict(lr=0.02, momentum=0.9, weight_decay=1e-4)
#: Every GC foreach row against torch's foreach row of its family.
FOREACH_TARGET = 1.10
#: GC on the update (any optimizer) against the optimizer bare.
UPDATE_TARGET = 1.10
#: A compiled GC kernel against torch's own fused step of its family (which
#: does no GC): GC adds a reduction per row, no pass over memory.
TORCH_FUSED_TARGET = 1.05
#: A compiled GC kernel against the best for-loop / foreach step of its
#: family.
FUSED_TARGET = 0.60


def mask_rcnn_params(device: str = 'cpu') -> List[Tensor]:
    """Trainable parameters of mmdet's Mask R-CNN R50-FPN 1x (detached)."""
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    cfg = Config.fromfile(
        mmdet_config_path('mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'))
    cfg.model.backbone.init_cfg = None
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    return [
        p.detach().to(device) for p in model.parameters() if p.requires_grad
    ]


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
        # The path CUDA takes (torch's fused SGD on centralized gradients),
        # and the compiled step.
        'SGD_GC (fused, torch kernel)':
        lambda ps: _cuda_path(mmdet_gc.SGD_GC(ps, fused=True, **SGD_HYPER)),
        'SGD_GC (compiled)':
        lambda ps: _compiled(mmdet_gc.SGD_GC(ps, **SGD_HYPER)),
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
        'Adam_GC (fused, torch kernel)':
        lambda ps: _cuda_path(mmdet_gc.Adam_GC(ps, fused=True, **hyper)),
        'Adam_GC (compiled)':
        lambda ps: _compiled(mmdet_gc.Adam_GC(ps, **hyper)),
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
        # The same with the compiled row-mean kernels behind the hooks.
        'AdamW + fused GC on update (for-loop)':
        lambda ps: _on_update(
            torch.optim.AdamW(ps, foreach=False, **hyper), fused=True),
        'AdamW + fused GC on update (foreach)':
        lambda ps: _on_update(
            torch.optim.AdamW(ps, foreach=True, **hyper), fused=True),
    }


class _Stepper:
    """An optimizer whose ``step`` runs ``run`` instead."""

    def __init__(self, optimizer: torch.optim.Optimizer,
                 run: Callable[[], None]) -> None:
        self.optimizer, self.step = optimizer, run


def _cuda_path(optimizer: torch.optim.Optimizer) -> _Stepper:
    """Each step under ``MMDET_GC_CUDA_PATHS=1``: the path a CUDA device
    takes (the same there)."""

    def run() -> None:
        before = os.environ.get(CUDA_PATHS_ENV)
        os.environ[CUDA_PATHS_ENV] = '1'
        try:
            optimizer.step()
        finally:
            if before is None:
                del os.environ[CUDA_PATHS_ENV]
            else:
                os.environ[CUDA_PATHS_ENV] = before

    return _Stepper(optimizer, run)


def _compiled(optimizer: torch.optim.Optimizer) -> _Stepper:
    """``torch.compile(step, fullgraph=True)`` with a tensor lr (as
    :class:`mmdet_gc.engine.CompiledOptimWrapper` runs it); compiled in
    the warm-up steps."""
    for group in optimizer.param_groups:
        group['lr'] = torch.tensor(float(group['lr']), dtype=torch.float64)
    return _Stepper(optimizer, torch.compile(optimizer.step, fullgraph=True))


def _on_update(optimizer: torch.optim.Optimizer,
               fused: bool = False) -> torch.optim.Optimizer:
    mmdet_gc.attach_gc(optimizer, on='update', fused=fused)
    return optimizer


FAMILIES = {'SGD': sgd_rows, 'Adam': adam_rows, 'AdamW': adamw_rows}


def _fresh(base: List[Tensor], grads: List[Tensor]) -> List[Tensor]:
    params = [p.clone().requires_grad_() for p in base]
    for p, g in zip(params, grads):
        p.grad = g  # shared, read-only: no optimizer writes a gradient
    return params


def time_rows(rows: Dict[str,
                         Callable], base: List[Tensor], grads: List[Tensor],
              steps: int, warmup: int, design: str) -> Dict[str, float]:
    """The median step time of every row.

    ``round-robin``: every optimizer on its own copy of the parameters, all
    in memory, taking turns step by step (noise hits every row alike);
    ``alone``: one optimizer at a time on fresh parameters, the others'
    memory freed (what a training run has in memory).
    """
    sync = torch.cuda.synchronize if base[0].is_cuda else (lambda: None)

    def timed(opt, times):
        sync()
        t0 = time.perf_counter()
        opt.step()
        sync()
        times.append(time.perf_counter() - t0)

    times: Dict[str, List[float]] = {name: [] for name in rows}
    if design == 'alone':
        for name, make in rows.items():
            opt = make(_fresh(base, grads))
            for _ in range(warmup + steps):
                timed(opt, times[name])
            del opt
            gc.collect()
    else:
        opts = {name: make(_fresh(base, grads)) for name, make in rows.items()}
        for it in range(warmup + steps):
            for name, opt in opts.items():  # round-robin
                timed(opt, times[name])
        del opts
        gc.collect()
    return {name: statistics.median(ts[warmup:]) for name, ts in times.items()}


def update_gc_passes(base: List[Tensor], steps: int, warmup: int,
                     med: Dict[str, float], family: str) -> None:
    """What GC on the update must add to a step, pass by pass.

    The hooks (:func:`mmdet_gc.attach_gc`, ``on='update'``) read every
    centralized weight before the step (its row means) and, after it, read
    it again and write it (the change of the row means removed). However
    fused, the correction cannot cost less than the record read plus one
    read-write pass over those weights: that floor and the hooks' own cost
    are timed here on the same parameters, as ratios to the bare steps.
    """
    from mmdet_gc.optim.gc import row_mean
    weights = [p.clone() for p in base if is_centralized(p, conv_only=False)]
    sync = torch.cuda.synchronize if base[0].is_cuda else (lambda: None)
    before = [row_mean(w) for w in weights]
    passes = {
        'record (row means before the step)':
        lambda: [row_mean(w) for w in weights],
        'restore, as the hooks do (mean, then subtract)':
        lambda: [w.sub_(row_mean(w).sub_(b)) for w, b in zip(weights, before)],
        'one read-write pass (the least a restore costs)':
        lambda: [w.sub_(b) for w, b in zip(weights, before)],
    }
    if not base[0].is_cuda and fused_unavailable_reason() is None:
        from mmdet_gc.optim.fused import module as built
        module = built()
        means = module.row_means(weights)
        passes['record, fused (row_means)'] = lambda: module.row_means(weights)
        passes['restore, fused (one pass per row)'] = (
            lambda: module.restore_row_means_(weights, means))
    times = {}
    for name, run in passes.items():
        ts = []
        for _ in range(warmup + steps):
            sync()
            t0 = time.perf_counter()
            run()
            sync()
            ts.append(time.perf_counter() - t0)
        times[name] = statistics.median(ts[warmup:])
    record, hooks, floor = list(times.values())[:3]
    print(f'  GC on the update, by pass, over the {len(weights)} '
          'centralized weights:')
    for name, t in times.items():
        print(f'    {name}: {t * 1e3:.1f} ms')
    for kernel in ('(for-loop)', '(foreach)'):
        bare = med[f'torch.optim.{family} {kernel}']
        fused = sum(list(times.values())[3:])
        print(f'    vs torch.optim.{family} {kernel}: the hooks add '
              f'{(record + hooks) / bare:.1%}' +
              (f', fused {fused / bare:.1%}' if fused else '') +
              f'; the floor (record + one read-write pass) '
              f'{(record + floor) / bare:.1%}')


def bench(family: str, base: List[Tensor], grads: List[Tensor], steps: int,
          warmup: int, design: str) -> List[str]:
    """Time a family's rows in one design, print the table and the targets;
    returns the targets missed."""
    rows = FAMILIES[family]()
    med = time_rows(rows, base, grads, steps, warmup, design)
    # The best of torch's for-loop and foreach steps; its fused step (no
    # GC) is a row of its own.
    best_name = min(
        (n for n in med if n.startswith('torch.optim') and 'fused' not in n),
        key=med.get)
    torch_foreach = f'torch.optim.{family} (foreach)'
    torch_fused = f'torch.optim.{family} (fused)'
    print(f'\n{family} family, {design}: median of {steps} steps '
          f'(after {warmup} warm-up); ratios to {best_name}, to '
          f'{torch_foreach} and to {torch_fused}')
    print(f'| {"optimizer":<34} | {"ms / step":>9} | {"vs best":>7} | '
          f'{"vs foreach":>10} | {"vs fused":>8} |')
    print(f'|{"-" * 36}|{"-" * 11}|{"-" * 9}|{"-" * 12}|{"-" * 10}|')
    for name in rows:
        print(f'| {name:<34} | {med[name] * 1e3:9.1f} | '
              f'{med[name] / med[best_name]:6.2f}x | '
              f'{med[name] / med[torch_foreach]:9.2f}x | '
              f'{med[name] / med[torch_fused]:7.2f}x |')
    if any('on update' in name for name in rows):
        update_gc_passes(base, steps, warmup, med, family)
        # The same kernels with only three optimizers in memory.
        trio = [
            f'torch.optim.{family} (for-loop)',
            f'{family} + GC on update (for-loop)',
            f'{family} + fused GC on update (for-loop)'
        ]
        alone = time_rows({n: rows[n]
                           for n in trio}, base, grads, steps, warmup,
                          'round-robin')
        print('  side by side, only these three in memory: ' +
              ', '.join(f'{n} {t * 1e3:.1f} ms ({t / alone[trio[0]]:.2f}x)'
                        for n, t in alone.items()))
    missed = []
    for name in rows:
        if name.startswith('torch') or '(' not in name:
            continue
        kernel = name[name.rindex('('):]
        if 'on update' in name:
            checks = [(f'torch.optim.{family} {kernel}', UPDATE_TARGET)]
        elif kernel == '(fused)' and base[0].is_cuda:
            continue  # torch's fused kernels plus GC there: not measured yet
        elif kernel == '(fused)':
            checks = [(torch_fused, TORCH_FUSED_TARGET),
                      (best_name, FUSED_TARGET)]
        elif kernel == '(foreach)':
            checks = [(torch_foreach, FOREACH_TARGET)]
        else:
            continue
        for bare, limit in checks:
            ratio = med[name] / med[bare]
            verdict = 'within' if ratio <= limit else 'OVER'
            print(f'  {name}: {ratio:.2f}x {bare}, {verdict} the '
                  f'{limit:.2f}x target')
            if ratio > limit:
                missed.append(f'{name} ({design}): {ratio:.2f}x {bare}')
    return missed


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
    parser.add_argument(
        '--design',
        nargs='+',
        default=['round-robin', 'alone'],
        choices=['round-robin', 'alone'],
        help='how rows are timed: round-robin (every optimizer in memory, '
        'taking turns) and / or alone (one optimizer at a time on fresh '
        'parameters); default: both')
    parser.add_argument(
        '--device',
        default='cpu',
        help='where the parameters live: cpu (default) or cuda')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    base = mask_rcnn_params(args.device)
    gen = torch.Generator().manual_seed(0)
    grads = [(torch.randn(p.shape, generator=gen) * 1e-3).to(args.device)
             for p in base]
    n = sum(p.numel() for p in base)
    print(f'Mask R-CNN R50-FPN: {n / 1e6:.1f}M trainable parameters in '
          f'{len(base)} tensors; torch {torch.__version__}, ' +
          (torch.cuda.get_device_name(base[0].device) if base[0].device.type ==
           'cuda' else f'{torch.get_num_threads()} threads'))
    if args.rows and args.device == 'cpu':
        # Built (or loaded from its cache) here, not in a timed step.
        reason = fused_unavailable_reason()
        print('fused GC kernels: ' +
              (f'compiled ({extension_name()})' if reason is None else
               f'NOT available ({reason}): its rows time the fallback'))
    missed = []
    for design in args.design:
        for family in args.rows:
            missed += bench(family, base, grads, args.steps, args.warmup,
                            design)
    print('\nTargets: ' +
          ('all met' if not missed else f'{len(missed)} missed: ' +
           '; '.join(missed)))


if __name__ == '__main__':
    main()
