"""The demo, end to end, from a checkout or an installed wheel.

``mmdet-gc demo`` (and ``make demo``, through ``tools/demo.py``):

1. writes the synthetic COCO-format shapes dataset (no download) unless
   ``--data-root`` holds it already,
2. trains the small Mask R-CNN of ``mmdet_gc::demo/`` with SGD_GC
   (``mmdet-gc train``),
3. evaluates the final checkpoint (``mmdet-gc test``, pycocotools),
4. prints COCO box and mask AP and the wall time.
"""
import argparse
import glob
import json
import os.path as osp
import subprocess
import sys
import time
from typing import List, Optional, Sequence

CONFIG = 'demo/mask-rcnn_r18-tiny_fpn_sgd-gc_synthetic.py'


def parse_args(argv: Optional[Sequence[str]] = None,
               prog: Optional[str] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.split('\n')[0])
    parser.add_argument(
        '--work-dir',
        default='work_dirs/demo',
        help='where training and testing write (default: work_dirs/demo)')
    parser.add_argument(
        '--data-root',
        default='data/synthetic_coco',
        help='the synthetic dataset: written here first if it is not there '
        '(default: data/synthetic_coco)')
    parser.add_argument(
        '--max-iters',
        type=int,
        help='training iterations (default: the config\'s, 400)')
    parser.add_argument(
        '--num-train',
        type=int,
        default=200,
        help='training images to make (default: 200)')
    parser.add_argument(
        '--num-val',
        type=int,
        default=50,
        help='validation images to make (default: 50)')
    args = parser.parse_args(argv)
    args.prog = parser.prog
    return args


def _run(cmd: List[str]) -> None:
    print('+', ' '.join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main(argv: Optional[Sequence[str]] = None,
         prog: Optional[str] = None) -> None:
    """Run the command (``argv``: its arguments, default ``sys.argv[1:]``;
    ``prog``: its name in usage and error lines)."""
    args = parse_args(argv, prog)
    from mmengine.config import Config

    from mmdet_gc.datasets import make_synthetic_coco
    from mmdet_gc.utils import config_path
    start = time.perf_counter()
    ann = osp.join(args.data_root, 'annotations', 'instances_val.json')
    if not osp.isfile(ann):
        print(f'writing the synthetic dataset to {args.data_root}', flush=True)
        make_synthetic_coco(
            args.data_root, num_train=args.num_train, num_val=args.num_val)
    config = config_path(CONFIG)
    max_iters = args.max_iters or Config.fromfile(config).train_cfg.max_iters
    # One setting: the tools move every path built from the config's
    # data_root (mmdet_gc.cli.config.move_data_root).
    options = [f'data_root={osp.join(args.data_root, "")}']
    command = [sys.executable, '-m', 'mmdet_gc']
    try:
        _run([
            *command, 'train', config, '--work-dir', args.work_dir,
            '--cfg-options', *options, f'train_cfg.max_iters={max_iters}'
        ])
        _run([
            *command, 'test', config,
            osp.join(args.work_dir, f'iter_{max_iters}.pth'), '--work-dir',
            args.work_dir, '--cfg-options', *options
        ])
    except subprocess.CalledProcessError as e:
        sys.exit(f'{args.prog}: error: {e.cmd[3]} failed (exit status '
                 f'{e.returncode}); its output is above')
    # mmdet-gc test logs its metrics to <work_dir>/<timestamp>/<ts>.json.
    logs = sorted(
        glob.glob(osp.join(args.work_dir, '*', '*.json')), key=osp.getmtime)
    metrics = json.loads(open(logs[-1]).read().strip().splitlines()[-1])
    minutes = (time.perf_counter() - start) / 60
    print('\nmmdet-gc demo: Mask R-CNN (ResNet-18 at 1/2 width, FPN) + '
          f'SGD_GC, {max_iters} iterations on synthetic COCO (128 px)')
    print(f'  bbox mAP {metrics["coco/bbox_mAP"]:.3f}   '
          f'segm mAP {metrics["coco/segm_mAP"]:.3f}   '
          f'wall time {minutes:.1f} min (set-up excluded)')


if __name__ == '__main__':
    main()
