"""How long a resumed run takes to reach its first trained iteration:
ours (the sampler's index stream skipped) beside MMEngine's stock
``IterBasedTrainLoop`` (every trained batch loaded and augmented again).

Part of mmdet-gc's long runs (a preempted GC run must continue the same
experiment, Yong et al., ECCV 2020 being a paired comparison).

A 1-iteration run of the demo config at 64 px on the synthetic COCO data
writes a checkpoint; copies of it are set to iteration ``k`` (``meta``,
the scheduler counters, the position), and ``tools/train.py --resume``
trains iteration ``k + 1`` from each: the time from the process start to
its log line of iteration ``k + 1`` (min / median / max over ``--repeat``
runs, ours and stock taking turns).

Usage::

    python benchmarks/bench_resume.py [--ks 10 2000] [--repeat 3]
"""
import argparse
import os
import os.path as osp
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import List

import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO = osp.join(ROOT, 'configs', 'demo',
                'mask-rcnn_r18-tiny_fpn_sgd-gc_synthetic.py')
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')


def write_config(folder: str, data_root: str, max_iters: int,
                 stock: bool) -> str:
    loop = 'mmengine.IterBasedTrainLoop' if stock else 'IterBasedTrainLoop'
    ann = osp.join(data_root, 'annotations', 'instances_val.json')
    text = f"""
    _base_ = {DEMO!r}
    img_scale = (64, 64)
    train_dataloader = dict(batch_size=2, dataset=dict(
        data_root={data_root + '/'!r}))
    val_dataloader = dict(dataset=dict(data_root={data_root + '/'!r}))
    test_dataloader = val_dataloader
    val_evaluator = dict(ann_file={ann!r})
    test_evaluator = val_evaluator
    train_cfg = dict(type={loop!r}, max_iters={max_iters},
                     val_interval=10**9)
    default_hooks = dict(logger=dict(interval=1),
                         checkpoint=dict(interval=10**9))
    randomness = dict(seed=0)
    """
    path = osp.join(folder, f'resume_{max_iters}_{int(stock)}.py')
    with open(path, 'w') as f:
        f.write(textwrap.dedent(text))
    return path


def at_iteration(src: str, dst: str, k: int) -> None:
    """``src`` (a checkpoint after iteration 1) as if saved after ``k``
    (its lr then differs from the schedule's at ``k``: the runs take the
    config's, with ``--resume-with-config``)."""
    ckpt = torch.load(src, map_location='cpu')
    ckpt['meta']['iter'] = k
    for state in ckpt.get('param_schedulers', []):
        state['last_step'] = k
        state['_global_step'] = k
    ckpt['resume_state']['batch'] = k
    torch.save(ckpt, dst)


def first_iteration_seconds(cfg: str, work: str, k: int) -> float:
    """Seconds from starting ``tools/train.py --resume`` to its log line
    of iteration ``k + 1``; the run is stopped there."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, 'tools/train.py', cfg, '--work-dir', work,
         '--resume', '--resume-with-config'],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    mark = f'Iter(train) [{k + 1}/'
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if mark in line:
            seconds = time.perf_counter() - start
            proc.kill()
            proc.wait()
            return seconds
    proc.wait()
    raise RuntimeError(f'{cfg} ended (status {proc.returncode}) before '
                       f'iteration {k + 1}:\n' + ''.join(lines[-5:]))


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--ks', type=int, nargs='+', default=[10, 2000])
    parser.add_argument('--repeat', type=int, default=3)
    args = parser.parse_args(argv)
    sys.path.insert(0, ROOT)
    from mmdet_gc.datasets import make_synthetic_coco

    tmp = tempfile.mkdtemp(prefix='bench_resume_')
    try:
        data = osp.join(tmp, 'coco')
        make_synthetic_coco(data, num_train=8, num_val=4, size=64,
                            max_objects=2)
        first = osp.join(tmp, 'first')
        subprocess.run([
            sys.executable, 'tools/train.py',
            write_config(tmp, data, 1, False), '--work-dir', first
        ], cwd=ROOT, env=ENV, check=True, capture_output=True)
        rows = []
        for k in args.ks:
            times = {'ours': [], 'stock': []}
            for _ in range(args.repeat):
                for name in ('ours', 'stock'):
                    cfg = write_config(tmp, data, k + 1, name == 'stock')
                    work = osp.join(tmp, f'work_{name}_{k}')
                    shutil.rmtree(work, ignore_errors=True)
                    os.makedirs(work)
                    ckpt = osp.join(work, f'iter_{k}.pth')
                    at_iteration(osp.join(first, 'iter_1.pth'), ckpt, k)
                    with open(osp.join(work, 'last_checkpoint'), 'w') as f:
                        f.write(ckpt)
                    times[name].append(
                        first_iteration_seconds(cfg, work, k))
            rows.append((k, times))
        print('seconds from start to the first trained iteration after '
              '--resume (min / median / max of '
              f'{args.repeat}; demo config, 64 px, batch 2, 1 thread)')
        print(f'{"k":>6} | {"ours":>22} | {"MMEngine stock":>22} | ratio')
        for k, times in rows:
            cells = [
                '{:.2f} / {:.2f} / {:.2f}'.format(
                    min(t), statistics.median(t), max(t))
                for t in (times['ours'], times['stock'])
            ]
            ratio = statistics.median(times['stock']) / statistics.median(
                times['ours'])
            print(f'{k:>6} | {cells[0]:>22} | {cells[1]:>22} | '
                  f'stock {ratio:.2f}x ours')
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
