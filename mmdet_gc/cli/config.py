"""Reading a tool's config and rewriting it for the run: ``--cfg-options``,
the work dir, ``--gc``, the plain-data checkpoint hook and the loops and
hook that resume bitwise.

Every step raises :class:`~mmdet_gc.utils.InputError` (one line) on bad
input, before any work directory is made.
"""
import argparse
import os
import os.path as osp
from typing import Any, Optional

from mmengine.config import Config, ConfigDict

from ..optim import GC_OPTIMIZERS
from ..utils import InputError
from ..utils.messages import first_line


def config_file(path: str) -> str:
    """The file of a config given as a path or, as in ``_base_``, as
    ``PACKAGE::NAME`` (``mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py``):
    a stock config runs as it is, e.g. with ``--gc``.

    Raises:
        InputError: No such file, package or config.
    """
    if osp.isfile(path):
        return path
    if '::' not in path:
        raise InputError(f'config file not found: {path}')
    from mmengine.config.utils import (MODULE2PACKAGE,
                                       _get_external_cfg_base_path,
                                       _get_package_and_cfg_path)
    from mmengine.utils import get_installed_path, is_installed
    module = path.split('::')[0]
    if module not in MODULE2PACKAGE:
        raise InputError(
            f'config {path}: {module!r} is not a package MMEngine reads '
            'configs from (mmdet::..., mmdet_gc::...)')
    try:
        package, name = _get_package_and_cfg_path(path)
    except ValueError:  # not PACKAGE::FOLDER/NAME
        raise InputError(f'config file not found: {path} (a config of a '
                         'package is named PACKAGE::FOLDER/NAME.py)') from None
    if not is_installed(package):
        raise InputError(f'config {path}: package {package} is not '
                         'installed')
    try:
        return _get_external_cfg_base_path(get_installed_path(package), name)
    except FileNotFoundError:
        raise InputError(
            f'config file not found: {path} (no {name} in {package}\'s '
            'configs)') from None


def read_config(path: str) -> Config:
    """``Config.fromfile(path)``, with what stops it in one line.

    Raises:
        InputError: No such file, or one MMEngine cannot read (a syntax
            error, an unsupported file type, a missing base config...),
            named with the error.
    """
    path = config_file(path)
    try:
        return Config.fromfile(path)
    except SyntaxError as e:
        raise InputError(f'cannot read config {path}: SyntaxError: {e.msg} '
                         f'({e.filename}, line {e.lineno})') from e
    except (OSError, ValueError, KeyError, ImportError, TypeError,
            AssertionError, RuntimeError) as e:
        raise InputError(f'cannot read config {path}: {first_line(e)}') from e


def move_data_root(cfg: Config, new: Any) -> None:
    """Carry a ``data_root`` override to every path the config built from
    its top-level ``data_root`` (each dataset's ``data_root``, evaluators'
    ``ann_file``...): MMEngine resolves the variable when it reads the file,
    so ``--cfg-options data_root=...`` alone would change nothing else.
    Other ``--cfg-options`` are merged after this, so they still win.

    Args:
        cfg (Config): The config, changed in place.
        new (Any): The ``data_root`` given; nothing happens unless it and
            the config's ``data_root`` are strings.
    """
    old = cfg.get('data_root')
    if not (isinstance(old, str) and old and isinstance(new, str)):
        return
    stem = old if old.endswith('/') else old + '/'

    def moved(node: Any) -> Any:
        if isinstance(node, str):
            if node == old:
                return new
            if node.startswith(stem):
                return osp.join(new, node[len(stem):])
            return node
        if isinstance(node, dict):
            for key in list(node):
                node[key] = moved(node[key])
            return node
        if isinstance(node, (list, tuple)):
            return type(node)(moved(value) for value in node)
        return node

    for key in list(cfg.keys()):
        if key != 'data_root':
            cfg[key] = moved(cfg[key])


def merge_options(cfg: Config, options: Optional[dict], config: str) -> None:
    """Merge ``--cfg-options`` into ``cfg`` (read from ``config``).

    Raises:
        InputError: They cannot be merged, named with the error.
    """
    if options is None:
        return
    move_data_root(cfg, options.get('data_root'))
    try:
        cfg.merge_from_dict(options)
    except (TypeError, KeyError, ValueError, AttributeError) as e:
        raise InputError(f'--cfg-options cannot be merged into {config}: '
                         f'{first_line(e)}') from None


def load_config(args: argparse.Namespace) -> Config:
    """The config named by ``args.config`` with the shared flags applied.

    ``--cfg-options`` are merged, ``--launcher`` recorded, and the work dir
    resolved as MMDetection does: flag > config > ``./work_dirs/<name>``.
    ``PlainCheckpointHook`` is added (:func:`add_plain_checkpoint_hook`).

    Raises:
        InputError: The config file does not exist or cannot be read.
    """
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    cfg = read_config(args.config)
    cfg.launcher = args.launcher
    merge_options(cfg, args.cfg_options, args.config)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    args.added_plain_hook = add_plain_checkpoint_hook(cfg)
    return cfg


def _gc_names() -> str:
    return ', '.join(GC_OPTIMIZERS)


def apply_gc(cfg: Config, name: str) -> None:
    """Switch ``cfg``'s optimizer to the GC optimizer ``name`` in place.

    Every other optimizer argument (lr, momentum, weight decay, ...) and the
    rest of ``optim_wrapper`` (clipping, ``paramwise_cfg``) stay as they
    are, so a run differs from its baseline in GC only. ``fused=True``
    stays for the SGD and Adam families (:mod:`mmdet_gc.optim.fused`) and
    becomes ``foreach=True`` for the others (said on stderr).

    Args:
        cfg (Config): A training config with ``optim_wrapper.optimizer``.
        name (str): A GC optimizer, e.g. ``'SGD_GC'``.

    Raises:
        InputError: Unknown ``name``, a config without an optimizer, or an
            optimizer of another algorithm (e.g. ``SGD_GC`` over AdamW).
    """
    if name not in GC_OPTIMIZERS:
        raise InputError(f'unknown GC optimizer {name!r} for --gc; '
                         f'choose one of: {_gc_names()}')
    optimizer = cfg.get('optim_wrapper', {}).get('optimizer')
    if optimizer is None:
        raise InputError('--gc needs a config with optim_wrapper.optimizer')
    current = optimizer.get('type')
    current = getattr(current, '__name__', current)
    base = GC_OPTIMIZERS[name].base_algorithm
    known = GC_OPTIMIZERS.get(current)
    current_base = known.base_algorithm if known else current
    if current_base != base:
        raise InputError(
            f'--gc {name} is {base} with GC, but the config trains with '
            f'{current}; pick the GC optimizer of the same algorithm so '
            'that its arguments carry over')
    # Every GC optimizer has a fused step: a config's fused=True carries
    # over.
    optimizer['type'] = name


def add_plain_checkpoint_hook(cfg: Config) -> bool:
    """Add ``PlainCheckpointHook`` to ``cfg.custom_hooks`` unless it is
    there, so that every run's checkpoints are plain data (and ``--gc`` on
    an mmdet config is covered).

    Returns:
        bool: Whether it was added (the tools then say so in one line).
    """
    hooks = list(cfg.get('custom_hooks') or [])
    names = [getattr(h.get('type'), '__name__', h.get('type')) for h in hooks]
    added = 'PlainCheckpointHook' not in names
    if added:
        hooks.append(ConfigDict(type='PlainCheckpointHook'))
    cfg.custom_hooks = hooks
    return added


#: MMEngine's loops and hook, and ours that resume them bitwise.
RESUMABLE = {
    'IterBasedTrainLoop': 'ResumableIterBasedTrainLoop',
    'EpochBasedTrainLoop': 'ResumableEpochBasedTrainLoop',
    'CheckpointHook': 'ResumableCheckpointHook',
}


def make_resumable(cfg: Config) -> None:
    """Train with the loops and checkpoint hook that resume bitwise,
    mid-epoch and at once (:mod:`mmdet_gc.engine.runner.loops`,
    :class:`~mmdet_gc.engine.hooks.ResumableCheckpointHook`): MMEngine's
    ``IterBasedTrainLoop`` / ``EpochBasedTrainLoop`` (also as ``by_epoch``)
    and ``CheckpointHook`` become ours, with the same arguments. A loop or
    hook of another kind, or one named with its scope
    (``'mmengine.IterBasedTrainLoop'``), is left as it is."""
    train = cfg.get('train_cfg')
    if isinstance(train, dict):
        if 'by_epoch' in train and 'type' not in train:
            by_epoch = train.pop('by_epoch')
            train['type'] = 'EpochBasedTrainLoop' if by_epoch else \
                'IterBasedTrainLoop'
        kind = train.get('type')
        if isinstance(kind, str) and kind in RESUMABLE:
            train['type'] = RESUMABLE[kind]
    hook = (cfg.get('default_hooks') or {}).get('checkpoint')
    if isinstance(hook, dict) and isinstance(hook.get('type'), str) and \
            hook['type'] in RESUMABLE:
        hook['type'] = RESUMABLE[hook['type']]
