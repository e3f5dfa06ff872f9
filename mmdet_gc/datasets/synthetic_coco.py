"""A small synthetic COCO-format instance-segmentation dataset.

Images of coloured shapes (squares, discs, triangles) on a noisy
background, with their boxes and polygon masks, deterministic by seed. The
masks are the very polygons that were drawn, so a detector can reach a high
AP in a few minutes on a CPU: enough to show the whole train -> evaluate
path of MMDetection working without downloading anything. It exercises the
pipeline; it says nothing about GC's effect on COCO.
"""
import json
import math
import os
import os.path as osp
from typing import Dict, List, Tuple

import cv2
import numpy as np

#: The class names, in category-id order (ids start at 1 as in COCO).
CLASSES = ('square', 'disc', 'triangle')

#: The same classes under COCO names (``like_coco``), so that a stock
#: MMDetection COCO config, with its 80 classes, trains on them.
COCO_NAMES = ('tv', 'sports ball', 'kite')

# A distinct mean colour per class (BGR), jittered per instance.
_COLOURS = ((40, 40, 220), (220, 60, 40), (40, 200, 60))


def _shape_polygon(cls: int, cx: float, cy: float, r: float,
                   angle: float) -> np.ndarray:
    """Vertices (N, 2) of one shape of class ``cls`` centred at (cx, cy)."""
    if cls == 0:
        n, offset = 4, math.pi / 4
    elif cls == 1:
        n, offset = 24, 0.
    else:
        n, offset = 3, -math.pi / 2
    t = offset + angle + np.arange(n) * (2 * math.pi / n)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _make_image(rng: np.random.Generator, size: int,
                max_objects: int) -> Tuple[np.ndarray, List[Dict]]:
    img = rng.integers(90, 160, size=(size, size, 3), dtype=np.uint8)
    img = cv2.GaussianBlur(img, (5, 5), 0)
    anns, occupied = [], []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _try in range(20):  # rejection sampling: no overlaps
            r = float(rng.uniform(0.10, 0.22) * size)
            cx, cy = rng.uniform(r + 2, size - r - 2, size=2)
            if all(
                    math.hypot(cx - x, cy - y) > r + s + 2
                    for x, y, s in occupied):
                break
        else:
            continue
        occupied.append((cx, cy, r))
        cls = int(rng.integers(len(CLASSES)))
        poly = _shape_polygon(cls, cx, cy, r, float(rng.uniform(0, 0.5)))
        colour = np.clip(
            np.array(_COLOURS[cls]) + rng.integers(-25, 26, size=3), 0, 255)
        pts = np.round(poly).astype(np.int32)
        cv2.fillPoly(img, [pts], [int(c) for c in colour])
        x0, y0 = pts.min(axis=0)
        x1, y1 = pts.max(axis=0) + 1
        mask = np.zeros((size, size), np.uint8)
        cv2.fillPoly(mask, [pts], 1)
        anns.append(
            dict(
                category_id=cls + 1,
                bbox=[int(x0), int(y0),
                      int(x1 - x0),
                      int(y1 - y0)],
                area=float(mask.sum()),
                segmentation=[pts.astype(float).ravel().tolist()],
                iscrowd=0))
    return img, anns


def make_synthetic_coco(out_dir: str,
                        num_train: int = 200,
                        num_val: int = 50,
                        size: int = 128,
                        max_objects: int = 3,
                        seed: int = 0,
                        like_coco: bool = False) -> Dict[str, str]:
    """Write ``train`` and ``val`` splits in COCO format under ``out_dir``.

    Layout: ``annotations/instances_{split}.json`` and ``{split}/*.png``;
    with ``like_coco``, COCO 2017's (``train2017``, ``val2017``) and class
    names (:data:`COCO_NAMES`), so that a stock MMDetection COCO config
    reads it with ``--cfg-options data_root=...`` alone. The same
    arguments always write the same files.

    Args:
        out_dir (str): Dataset root.
        num_train (int): Training images. Defaults to 200.
        num_val (int): Validation images. Defaults to 50.
        size (int): Image side in pixels. Defaults to 128.
        max_objects (int): Most shapes per image. Defaults to 3.
        seed (int): Random seed. Defaults to 0.
        like_coco (bool): COCO 2017's layout and class names. Defaults to
            False.

    Returns:
        dict[str, str]: Annotation file of each split.
    """
    if num_train < 1 or num_val < 1 or size < 32 or max_objects < 1:
        raise ValueError('need num_train >= 1, num_val >= 1, size >= 32 and '
                         f'max_objects >= 1; got {num_train}, {num_val}, '
                         f'{size}, {max_objects}')
    rng = np.random.default_rng(seed)
    categories = [
        dict(id=i + 1, name=name, supercategory='shape')
        for i, name in enumerate(COCO_NAMES if like_coco else CLASSES)
    ]
    os.makedirs(osp.join(out_dir, 'annotations'), exist_ok=True)
    ann_files = {}
    ann_id = 1
    suffix = '2017' if like_coco else ''
    for split, count in (('train', num_train), ('val', num_val)):
        split += suffix
        os.makedirs(osp.join(out_dir, split), exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            img, anns = _make_image(rng, size, max_objects)
            name = f'{i:06d}.png'
            cv2.imwrite(osp.join(out_dir, split, name), img)
            images.append(
                dict(id=i + 1, file_name=name, width=size, height=size))
            for ann in anns:
                annotations.append(dict(ann, id=ann_id, image_id=i + 1))
                ann_id += 1
        ann_file = osp.join(out_dir, 'annotations', f'instances_{split}.json')
        with open(ann_file, 'w') as f:
            json.dump(
                dict(
                    images=images,
                    annotations=annotations,
                    categories=categories), f)
        ann_files[split[:len(split) - len(suffix)]] = ann_file
    return ann_files
