"""Checkpoints of our runs as plain data.

:class:`PlainCheckpointHook` saves the message hub's ``HistoryBuffer``s and
numpy values as tensors, numbers, strings and dicts
(:func:`~mmdet_gc.checkpoint.plain.to_plain`), so that the file loads with
stock ``torch.load(weights_only=True)``, and restores them after a load
(:func:`~mmdet_gc.checkpoint.plain.from_plain`), so that ``--resume`` is bit
for bit; on resume it also keeps MMEngine's ``CheckpointHook`` to this run's
own files.
"""
import os.path as osp
from typing import Any, Optional

from mmengine.hooks import Hook

from ...checkpoint.errors import CheckpointError
from ...checkpoint.plain import (EXECUTED_META, DecodedCheckpoint, from_plain,
                                 to_plain)


class PlainCheckpointHook(Hook):
    """Save checkpoints as plain data; restore them after loading.

    ``before_save_checkpoint`` rewrites the checkpoint dict in place with
    :func:`to_plain`, so the file holds only what ``torch.load`` with
    ``weights_only=True`` accepts without any allow-list.
    ``after_load_checkpoint`` applies :func:`from_plain` before the runner
    hands the message hub its ``HistoryBuffer``s, so ``--resume`` restores
    the logged history (smoothed losses, ``save_best``) bit for bit.

    Its priority is ``LOWEST`` so that it sees what every other hook added
    to the checkpoint. The tools add it to any config that lacks it.
    """

    priority = 'LOWEST'

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        optimizer = _optimizer_type(runner)
        if optimizer is not None:  # for the resume check below
            checkpoint.setdefault('meta', {})['optimizer_type'] = optimizer
        _drop_scheduler_functions(checkpoint.get('param_schedulers'))
        plain = to_plain(checkpoint)
        checkpoint.clear()
        checkpoint.update(plain)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        try:
            # What the checkpoint door read is decoded already, and decoding
            # twice would turn an escaped marked dict into unchecked data.
            restored = checkpoint if isinstance(
                checkpoint, DecodedCheckpoint) else from_plain(checkpoint)
        except ValueError as e:
            raise CheckpointError(f'checkpoint is malformed: {e}') from None
        meta = restored.get('meta')
        if isinstance(meta, dict) and EXECUTED_META in meta:
            # Runner.resume would exec this string as a config file.
            del meta[EXECUTED_META]
            runner.logger.warning(
                'dropped meta.config from the loaded checkpoint: MMEngine '
                'would execute it as Python on resume')
        if getattr(runner, '_resume', False):
            _warn_on_other_optimizer(runner, restored)
            _confine_checkpoint_paths(runner, restored)
        if restored is not checkpoint:
            checkpoint.clear()
            checkpoint.update(restored)


def _drop_scheduler_functions(schedulers: Any) -> None:
    """Leave functions out of the scheduler states (OneCycleLR keeps its
    ``anneal_func``): they come from the scheduler's code, which sets them
    again when the run resumes, and a file holds data only."""
    lists = schedulers.values() if isinstance(schedulers, dict) else \
        [schedulers or []]
    for states in lists:
        for state in states:
            for key in [k for k, v in state.items() if callable(v)]:
                del state[key]


def _confine_checkpoint_paths(runner: Any, checkpoint: dict) -> None:
    """Keep MMEngine's CheckpointHook to this run's own files on resume.

    It removes ``runtime_info['best_ckpt*']`` when a better one comes, and
    ``iter_<id>.pth`` for the oldest ``keep_ckpt_ids``: paths and ids taken
    from the file. A best checkpoint outside the work dir is forgotten (not
    removed), and ids after the checkpoint's own step are dropped.
    """
    hub = checkpoint.get('message_hub') or {}
    info, resumed = hub.get('runtime_info'), hub.get('resumed_keys')
    if not isinstance(info, dict):
        return
    root = osp.realpath(runner.work_dir)
    for key in [k for k in info if k.startswith('best_ckpt')]:
        path = info[key]
        if not (isinstance(path, str)
                and osp.dirname(osp.realpath(path)) == root):
            del info[key]
            if isinstance(resumed, dict):
                resumed.pop(key, None)
            runner.logger.warning(
                f'forgot runtime_info.{key}={path!r} from the checkpoint: '
                f'it is not in this run\'s work dir {root}, so it will not '
                'be removed when a better checkpoint comes')
    ids = info.get('keep_ckpt_ids')
    if isinstance(ids, list):
        meta = checkpoint.get('meta') or {}
        last = max(meta.get('iter', 0), meta.get('epoch', 0))
        kept = sorted({i for i in ids if type(i) is int and 0 < i <= last})
        if kept != ids:
            runner.logger.warning(
                'keep_ckpt_ids from the checkpoint trimmed to the steps it '
                f'had reached: {kept}')
            info['keep_ckpt_ids'] = kept


def _optimizer_type(runner: Any) -> Optional[str]:
    """The class name of the runner's (single) optimizer, once built."""
    optimizer = getattr(
        getattr(runner, 'optim_wrapper', None), 'optimizer', None)
    return type(optimizer).__name__ if optimizer is not None else None


def _warn_on_other_optimizer(runner: Any, checkpoint: dict) -> None:
    """One warning when a run resumes another optimizer's state (SGD to
    SGD_GC or back, SGD_GC to SGD_GCC): the state carries over, and the
    config's optimizer and GC switches are used from then on."""
    current = _optimizer_type(runner)
    meta = checkpoint.get('meta') or {}
    saved = meta.get('optimizer_type')
    if current is None or saved == current:
        return
    if saved is None:  # a stock MMEngine checkpoint: ask its param groups
        groups = (checkpoint.get('optimizer') or {}).get('param_groups')
        if not isinstance(groups, list) or not groups:
            return
        was_gc = all(isinstance(g, dict) and 'gc' in g for g in groups)
        from ...optim import GCOptimizer
        if was_gc == isinstance(runner.optim_wrapper.optimizer, GCOptimizer):
            return
        saved = 'a GC optimizer' if was_gc else 'a non-GC optimizer'
    runner.logger.warning(
        f'resuming a checkpoint trained with {saved} under {current}: its '
        f'optimizer state (momentum buffers...) carries over, and {current} '
        'with the GC switches of this config is used from here')
