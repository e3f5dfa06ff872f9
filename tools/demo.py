"""The main job, end to end on an embedded default (no download).

1. writes the synthetic COCO-format shapes dataset (tools/make_synthetic_coco),
2. trains a small Mask R-CNN with SGD_GC through ``tools/train.py``,
3. evaluates the final checkpoint through ``tools/test.py`` (pycocotools),
4. prints COCO box and mask AP and the wall time.

    python tools/demo.py [--work-dir work_dirs/demo]
"""
import argparse
import glob
import json
import os.path as osp
import subprocess
import sys
import time

from mmengine.config import Config

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(ROOT, 'configs', 'demo',
                  'mask-rcnn_r18-tiny_fpn_sgd-gc_synthetic.py')


def run(cmd: list) -> None:
    print('+', ' '.join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--data-root', default='data/synthetic_coco')
    args = parser.parse_args()
    py = sys.executable
    start = time.perf_counter()

    if not osp.isfile(
            osp.join(ROOT, args.data_root, 'annotations',
                     'instances_val.json')):
        run([py, 'tools/make_synthetic_coco.py', args.data_root])
    data = [
        f'{k}.dataset.data_root={args.data_root}/'
        for k in ('train_dataloader', 'val_dataloader', 'test_dataloader')
    ]
    ann = f'{args.data_root}/annotations/instances_val.json'
    options = data + [
        f'val_evaluator.ann_file={ann}', f'test_evaluator.ann_file={ann}'
    ]
    run([
        py, 'tools/train.py', CONFIG, '--work-dir', args.work_dir,
        '--cfg-options', *options
    ])
    max_iters = Config.fromfile(CONFIG).train_cfg.max_iters
    ckpt = osp.join(ROOT, args.work_dir, f'iter_{max_iters}.pth')
    run([
        py, 'tools/test.py', CONFIG, ckpt, '--work-dir', args.work_dir,
        '--cfg-options', *options
    ])
    # tools/test.py logs its metrics to <work_dir>/<timestamp>/<ts>.json.
    logs = sorted(
        glob.glob(osp.join(ROOT, args.work_dir, '*', '*.json')),
        key=osp.getmtime)
    metrics = json.loads(open(logs[-1]).read().strip().splitlines()[-1])
    minutes = (time.perf_counter() - start) / 60
    print('\nmmdet-gc demo: Mask R-CNN (ResNet-18 at 1/2 width, FPN) + '
          f'SGD_GC, {max_iters} iterations on synthetic COCO (128 px)')
    print(f'  bbox mAP {metrics["coco/bbox_mAP"]:.3f}   '
          f'segm mAP {metrics["coco/segm_mAP"]:.3f}   '
          f'wall time {minutes:.1f} min (set-up excluded)')


if __name__ == '__main__':
    main()
