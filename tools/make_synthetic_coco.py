"""Write the synthetic COCO-format shapes dataset (no download).

    python tools/make_synthetic_coco.py data/synthetic_coco [--size 128]
    python tools/make_synthetic_coco.py data/coco_synthetic --like-coco
"""
import argparse

from mmdet_gc.datasets import make_synthetic_coco


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('out_dir', nargs='?', default='data/synthetic_coco')
    parser.add_argument('--num-train', type=int, default=200)
    parser.add_argument('--num-val', type=int, default=50)
    parser.add_argument('--size', type=int, default=128)
    parser.add_argument('--max-objects', type=int, default=3)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--like-coco',
        action='store_true',
        help='COCO 2017 layout and class names, for stock mmdet configs')
    args = parser.parse_args()
    files = make_synthetic_coco(
        args.out_dir,
        num_train=args.num_train,
        num_val=args.num_val,
        size=args.size,
        max_objects=args.max_objects,
        seed=args.seed,
        like_coco=args.like_coco)
    for split, path in files.items():
        print(f'{split}: {path}')


if __name__ == '__main__':
    main()
