"""The dataset a config names, checked on disk before the run: every
annotation file and image folder, named where it is missing.
"""
import os
import os.path as osp
from typing import Iterator, List, Tuple

from mmengine.config import Config

from ..utils import InputError


def _datasets(dataset: dict) -> Iterator[dict]:
    """The leaf datasets of a dataset config (through mmdet's wrappers)."""
    if 'datasets' in dataset:
        for child in dataset['datasets']:
            yield from _datasets(child)
    elif 'dataset' in dataset:
        yield from _datasets(dataset['dataset'])
    else:
        yield dataset


def _is_local(path: str) -> bool:
    return '://' not in path


def dataset_paths(cfg: Config,
                  loaders: Tuple[str, ...]) -> List[Tuple[str, str, str]]:
    """``(loader, what, path)`` for every annotation file and image folder.

    Args:
        cfg (Config): The config.
        loaders (tuple[str]): Dataloader keys, e.g. ``('train_dataloader',
            'val_dataloader')``.
    """
    out = []
    for key in loaders:
        loader = cfg.get(key)
        if not loader:
            continue
        for ds in _datasets(loader['dataset']):
            root = ds.get('data_root') or ''
            ann = ds.get('ann_file')
            if ann:
                out.append((key, 'annotation file', osp.join(root, ann)))
            prefix = ds.get('data_prefix') or {}
            img = prefix.get('img', prefix.get('img_path'))
            if img is not None:
                out.append((key, 'image folder', osp.join(root, img)))
    for key in ('val_evaluator', 'test_evaluator'):
        metrics = cfg.get(key) or []
        for metric in metrics if isinstance(metrics, list) else [metrics]:
            ann = metric.get('ann_file')
            if key.split('_')[0] + '_dataloader' in loaders and ann:
                out.append((key, 'annotation file', ann))
    return out


def check_dataset_paths(cfg: Config, loaders: Tuple[str, ...]) -> None:
    """Fail early, naming each missing annotation file or image folder."""
    missing = [
        (key, what, path) for key, what, path in dataset_paths(cfg, loaders)
        if _is_local(path) and not (
            osp.isfile(path) if what == 'annotation file' else osp.isdir(path))
    ]
    if missing:
        where = ('; relative paths are taken from the current directory, '
                 f'{os.getcwd()}') if any(not osp.isabs(path)
                                          for _, _, path in missing) else ''
        raise InputError(
            'the dataset in the config is not where it says: ' +
            '; '.join(f'{key}: {what} not found: {path}'
                      for key, what, path in missing) + where +
            '. Fix data_root / ann_file / data_prefix (e.g. --cfg-options '
            'data_root=..., where the config sets a data_root)')
