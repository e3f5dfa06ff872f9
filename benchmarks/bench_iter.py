"""What GC costs in a Mask R-CNN R50-FPN training iteration (CPU).

Gradient Centralization: Yong et al., ECCV 2020 (arXiv:2004.01461).

Two copies of MMDetection's own Mask R-CNN R50-FPN 1x model
(``init_cfg=None``), one trained with torch.optim.SGD and one with SGD_GC
(lr 0.02 per 16 images, scaled to the batch as mmdet's ``auto_scale_lr``
does; momentum 0.9, weight decay 1e-4), take turns on the same
synthetic batches through MMEngine's ``model.train_step`` (data
preprocessing, forward, backward, optimizer step). Step pre/post hooks time
the optimizer step inside each iteration, so the GC overhead is

    (median SGD_GC step - median SGD step) / median SGD iteration

measured side by side in one run.

On a CUDA device (``--device cuda``; ``tools/gpu_check.sh`` runs 50
iterations at 800 px) every timing waits for the device
(``torch.cuda.synchronize``), and the first and last losses of each run
are printed: the same batches, so they differ by the optimizer only.

Usage::

    python benchmarks/bench_iter.py [--iters 8] [--size 320] [--batch 2]
        [--device cuda]
"""
import argparse
import copy
import statistics
import time
from typing import Callable, Dict, List

import torch

import mmdet_gc  # noqa: F401
from mmdet_gc.utils import mmdet_config_path


def build(opt_type: str, model: torch.nn.Module, batch: int,
          sync: Callable[[], None]):
    from mmengine.optim import build_optim_wrapper
    wrapper = build_optim_wrapper(
        model,
        dict(
            optimizer=dict(
                type=opt_type,
                lr=0.02 * batch / 16,
                momentum=0.9,
                weight_decay=1e-4)))
    times: Dict[str, List[float]] = {'step': []}
    t0 = [0.]

    def pre(*_):
        sync()
        t0[0] = time.perf_counter()

    def post(*_):
        sync()
        times['step'].append(time.perf_counter() - t0[0])

    wrapper.optimizer.register_step_pre_hook(pre)
    wrapper.optimizer.register_step_post_hook(post)
    return wrapper, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--iters', type=int, default=8)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--size', type=int, default=320)
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument(
        '--device',
        default='cpu',
        help='where the models train: cpu (default) or cuda')
    args = parser.parse_args()
    cuda = args.device.startswith('cuda')
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    from mmdet.registry import MODELS
    from mmdet.testing import demo_mm_inputs
    from mmengine.config import Config
    from mmengine.logging import MMLogger
    from mmengine.registry import init_default_scope

    MMLogger.get_instance('mmengine', log_level='WARNING')
    init_default_scope('mmdet')
    cfg = Config.fromfile(
        mmdet_config_path('mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'))
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(0)
    base = MODELS.build(cfg.model)
    runs = {}
    for opt_type in ('SGD', 'SGD_GC'):
        model = copy.deepcopy(base).to(args.device).train()
        runs[opt_type] = (model, *build(opt_type, model, args.batch, sync))
    iter_times: Dict[str, List[float]] = {k: [] for k in runs}
    losses: Dict[str, List[float]] = {k: [] for k in runs}
    for it in range(args.warmup + args.iters):
        batch = demo_mm_inputs(
            batch_size=args.batch,
            image_shapes=[(3, args.size, args.size)] * args.batch,
            num_items=[3] * args.batch,
            num_classes=80,
            with_mask=True)
        for name, (model, wrapper, _) in runs.items():  # take turns
            data = copy.deepcopy(batch)
            sync()
            t0 = time.perf_counter()
            log = model.train_step(data, wrapper)
            sync()
            if it >= args.warmup:
                iter_times[name].append(time.perf_counter() - t0)
            losses[name].append(float(torch.as_tensor(log['loss']).detach()))
    med = {
        name: (statistics.median(iter_times[name]),
               statistics.median(times['step'][args.warmup:]))
        for name, (_, _, times) in runs.items()
    }
    n = sum(p.numel() for p in base.parameters() if p.requires_grad)
    where = (
        torch.cuda.get_device_name(args.device)
        if cuda else f'{torch.get_num_threads()} threads')
    print(f'Mask R-CNN R50-FPN ({n / 1e6:.1f}M trainable), batch '
          f'{args.batch} x {args.size} px, {where}, median of {args.iters} '
          'iterations')
    print('| optimizer | iteration (s) | optimizer step (ms) | '
          'loss: first | last |')
    print('|---|---:|---:|---:|---:|')
    for name, (it_t, st_t) in med.items():
        print(f'| {name} | {it_t:.3f} | {st_t * 1e3:.1f} | '
              f'{losses[name][0]:.4f} | {losses[name][-1]:.4f} |')
    overhead = (med['SGD_GC'][1] - med['SGD'][1]) / med['SGD'][0]
    print(f'GC overhead: {100 * overhead:.2f}% of an iteration '
          '(step-time difference / SGD iteration time)')
    stats_cost(runs['SGD_GC'], med['SGD_GC'][0], args.iters)


def stats_cost(run,
               iteration: float,
               repeats: int,
               interval: int = 50) -> None:
    """What GCStatsHook costs: one logging pass over the model's weights
    and gradients, against the iteration time measured above."""
    from types import SimpleNamespace

    from mmengine.logging import MessageHub

    from mmdet_gc.engine.hooks import GCStatsHook
    model, wrapper, _ = run
    gen = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen).to(p.device)
    sync = torch.cuda.synchronize if p.is_cuda else (lambda: None)
    runner = SimpleNamespace(
        model=model,
        optim_wrapper=wrapper,
        message_hub=MessageHub.get_instance('bench_gc_stats'),
        iter=0)
    hook = GCStatsHook(interval=interval)
    hook.before_train(runner)
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        hook.log(runner)
        sync()
        times.append(time.perf_counter() - t0)
    hook.after_train(runner)
    cost = statistics.median(times)
    print(f'GCStatsHook: {cost * 1e3:.1f} ms per logged iteration, '
          f'{100 * cost / iteration:.2f}% of an SGD_GC iteration; every '
          f'{interval} iterations: {100 * cost / iteration / interval:.3f}%')


if __name__ == '__main__':
    main()
