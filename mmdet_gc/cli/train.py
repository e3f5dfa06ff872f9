"""Train a detector with MMDetection 3.x, with the GC optimizers available.

``mmdet-gc train`` and ``tools/train.py``: MMDetection's own
``tools/train.py`` flags, plus ``--gc NAME``, which turns
any mmdet config into its GC counterpart (same lr, momentum, weight decay,
clipping and ``paramwise_cfg``) for paired baseline / GC runs.
"""
import argparse
import glob
import os.path as osp
import sys
from typing import Any, Optional, Sequence, Tuple

from mmdet.utils import setup_cache_size_limit_of_dynamo
from mmengine.config import Config

import mmdet_gc  # noqa: F401  (registers the GC optimizers)
from mmdet_gc.checkpoint import (CheckpointDoor, CheckpointError,
                                 check_resume_against_run,
                                 take_config_settings)
from mmdet_gc.cli.args import add_runner_args
from mmdet_gc.cli.build_checks import (build_run_or_fail, check_optimizer,
                                       check_run_parts)
from mmdet_gc.cli.checkpoint_checks import (check_checkpoint, check_prefix,
                                            discarded_if_refused,
                                            latest_checkpoint,
                                            pretrained_sources)
from mmdet_gc.cli.config import apply_gc, load_config, make_resumable
from mmdet_gc.cli.data_checks import check_dataset_paths
from mmdet_gc.cli.launch import prepare_or_exit, run_through_door
from mmdet_gc.utils import InputError


def parse_args(argv: Optional[Sequence[str]] = None,
               prog: Optional[str] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description='Train a detector')
    parser.add_argument('config', help='train config file path')
    parser.add_argument(
        '--gc',
        metavar='NAME',
        help='train with this GC optimizer instead of the config\'s own, '
        f'keeping its arguments (one of: {", ".join(mmdet_gc.GC_OPTIMIZERS)})')
    parser.add_argument(
        '--amp',
        action='store_true',
        default=False,
        help='enable automatic-mixed-precision training')
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='enable automatically scaling LR.')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='If specify checkpoint path, resume from it, while if not '
        'specify, try to auto resume from the latest checkpoint '
        'in the work directory.')
    parser.add_argument(
        '--resume-with-config',
        action='store_true',
        help='resume the weights, optimizer moments and counters of the '
        'checkpoint but the hyper-parameters and schedule of the config '
        '(where the two differ, --resume stops and names each setting)')
    add_runner_args(parser)
    args = parser.parse_args(argv)
    args.prog = parser.prog
    return args


def build_cfg(args: argparse.Namespace,
              door: CheckpointDoor) -> Tuple[Config, Any]:
    """The run's config from the flags, with every checkpoint the run will
    load read through ``door`` and checked against the run, and the run's
    objects built for the checks (the runner takes the model); raises
    InputError on bad input."""
    cfg = load_config(args)
    make_resumable(cfg)
    check_run_parts(cfg)
    if args.gc:
        apply_gc(cfg, args.gc)
    check_optimizer(cfg)

    if args.amp:
        from mmengine.device import get_device
        if get_device() == 'cpu':
            raise InputError(
                '--amp needs a CUDA, NPU, MLU or MUSA device: MMEngine\'s '
                'AmpOptimWrapper does not run on the CPU')
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'

    if args.auto_scale_lr:
        scale = cfg.get('auto_scale_lr')
        if isinstance(scale, dict) and 'enable' in scale and \
                'base_batch_size' in scale:
            cfg.auto_scale_lr.enable = True
        else:
            raise InputError('Can not find "auto_scale_lr" or '
                             '"auto_scale_lr.enable" or '
                             '"auto_scale_lr.base_batch_size" in your'
                             ' configuration file.')

    # What the runner will build, built now: a config (or --cfg-options
    # value) that cannot build it stops here, before the work dir; the
    # runner then takes this model (one build).
    run = build_run_or_fail(cfg, for_runner=True)

    trust = args.trust_checkpoint
    if args.resume is not None:
        cfg.resume = True
        cfg.load_from = None if args.resume == 'auto' else args.resume
    if cfg.get('resume'):  # --resume, or resume=True in the config
        resume_from = cfg.get('load_from')
        if resume_from is None:
            if trust:
                raise InputError(
                    '--trust-checkpoint needs the checkpoint named (--resume '
                    "PATH): it does not apply to what a work dir's "
                    'last_checkpoint names')
            resume_from, ckpt = newest_intact_checkpoint(door, cfg.work_dir)
        else:
            ckpt = check_checkpoint(
                door, resume_from, '--resume', resume=True, trust=trust)
        # The runner resumes exactly the checkpoint checked here.
        cfg.load_from = resume_from
        if resume_from is not None:
            # A refusal here is of the file: not kept in the hub cache.
            with discarded_if_refused(door, resume_from):
                check_resume(args, ckpt, resume_from, cfg, run)
    elif args.resume_with_config:
        raise InputError('--resume-with-config applies to --resume only')
    else:
        check_checkpoint(door, cfg.get('load_from'), 'load_from', trust=trust)
    # The weights the model starts from (e.g. torchvision://resnet50),
    # wherever the model's modules name them.
    for source, prefix in pretrained_sources(cfg.model, run.model):
        ckpt = check_checkpoint(door, source, 'init_cfg')
        if prefix and ckpt is not None:
            with discarded_if_refused(door, source):
                check_prefix(ckpt, source, prefix)

    loaders = ['train_dataloader']
    if cfg.get('val_cfg') is not None:
        loaders.append('val_dataloader')
    check_dataset_paths(cfg, tuple(loaders))

    return cfg, run


def check_resume(args: argparse.Namespace, ckpt: dict, source: str,
                 cfg: Config, run: Any) -> None:
    """``--resume`` of ``ckpt`` (read from ``source``) against the run's
    objects: counters, groups and states that fit, and settings that
    differ from the config only with ``--resume-with-config`` (then the
    config's are taken); raises InputError on a mismatch."""
    try:
        differences = check_resume_against_run(ckpt, source, cfg, run)
    except CheckpointError as e:
        raise InputError(f'--resume {e}') from None
    if differences and not args.resume_with_config:
        raise InputError(
            f'--resume: checkpoint {source} would restore settings that '
            'differ from the config:\n' + '\n'.join(f'  {d}'
                                                    for d in differences) +
            "\npass --resume-with-config to go on with the config's values",
            lines=True)
    if differences:
        try:
            take_config_settings(ckpt, run, differences)
        except CheckpointError as e:
            raise InputError(str(e)) from None


def newest_intact_checkpoint(door: CheckpointDoor, work_dir: str) -> tuple:
    """What ``--resume`` without a path resumes: the checkpoint the work
    dir's ``last_checkpoint`` names or, where that one (or the pointer) is
    truncated or unreadable, the newest checkpoint of the work dir that
    reads whole, each one skipped named in one line.

    Returns:
        tuple: The path and the checked checkpoint, or ``(None, None)``.
    """
    candidates, skipped = [], []
    try:
        named = latest_checkpoint(work_dir)
    except InputError as e:
        skipped.append((e, f'warning: {e}'))
        named = None
    if named is not None:
        candidates.append(named)
    elif not skipped:
        return None, None
    found = [
        p for p in glob.glob(osp.join(glob.escape(work_dir), '*.pth'))
        if osp.isfile(p)
    ]
    candidates += sorted(found, key=osp.getmtime, reverse=True)
    for path in dict.fromkeys(candidates):
        try:
            ckpt = check_checkpoint(door, path, '--resume', resume=True)
        except InputError as e:
            skipped.append((e, f'warning: skipping {path}: {e}'))
            continue
        for _, line in skipped:  # said only when another one resumes
            print(line, file=sys.stderr)
        return path, ckpt
    raise skipped[0][0]


def main(argv: Optional[Sequence[str]] = None,
         prog: Optional[str] = None) -> None:
    """Run the command (``argv``: its arguments, default ``sys.argv[1:]``;
    ``prog``: its name in usage and error lines)."""
    args = parse_args(argv, prog)
    # Reduce the number of repeated compilations and improve training speed.
    setup_cache_size_limit_of_dynamo()
    cfg, door, run = prepare_or_exit(build_cfg, args, args.prog)
    run_through_door(
        cfg, door, args.prog, lambda runner: runner.train(), run=run)


if __name__ == '__main__':
    main()
