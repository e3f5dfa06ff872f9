"""A paired GC study: arms x seeds over one config, then its report.

    mmdet-gc study CONFIG --gc SGD_GC [SGD_GCC] --seeds 0 1 2 3 4
        [--lr 0.08] [--shifts -40 -20 0 20 40] [--work-dir WORK]
        [--launcher pytorch] [--print-commands] [--only ARM:SEED]
        [--report-only] [--threshold 0.05] [--cfg-options ...]
    python tools/gc_study.py ...   (the same, from a checkout)

Every arm (the config as it is, "base"; each --gc optimizer; each again at
every --lr) trains with the same seeds (``randomness.seed``), so that the
paired runs differ in GC only: ``mmdet-gc train`` into WORK/ARM/seedN, then
``mmdet-gc test`` of its final checkpoint once per brightness offset.
Finished runs are skipped and interrupted ones resumed, so a study can be
stopped and continued. ``--print-commands`` prints one line per run (this
tool with ``--only ARM:SEED``) for a slurm job array or any cluster; run
the tool again with ``--report-only`` when they are done.

The report (WORK/report.md, .json, .png) gives per arm mean ± std of box
and mask AP, AP50, AP75, APs, APm and APl; per metric the paired
difference to the base arm at the same lr with a 95% t interval and a
paired t-test; failed and diverged runs, counted and kept; box AP under
each offset; and how far the weight row means moved (Yong et al., ECCV
2020: with SGD_GC they do not). With --lr, the learning-rate sweep too:
per arm and lr the collapsed runs and AP, per lr the paired difference,
the largest lr at which each arm trained on every seed, and
WORK/report_lr.png (collapse rate and AP against lr).
"""
import argparse
import math
import os
import os.path as osp
import shlex
import sys
from typing import Optional, Sequence

import mmdet_gc  # noqa: F401
from mmdet_gc.cli.args import CfgOptions, add_launcher_arg
from mmdet_gc.cli.config import apply_gc, merge_options, read_config
from mmdet_gc.study import (Plan, ReportError, execute, make_arms, run_name,
                            tool_command, write_report)
from mmdet_gc.utils import InputError


def parse_args(argv: Optional[Sequence[str]] = None,
               prog: Optional[str] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.split('\n')[0])
    parser.add_argument(
        'config', help='the training config every arm starts from')
    parser.add_argument(
        '--gc',
        nargs='+',
        default=[],
        metavar='NAME',
        help='a GC arm per optimizer (the base arm is the config as it is)')
    parser.add_argument(
        '--lr',
        nargs='+',
        type=float,
        default=[],
        help='also run every arm at these learning rates (a learning-rate '
        'sweep; the config\'s own lr is not repeated here)')
    parser.add_argument(
        '--seeds',
        nargs='+',
        type=int,
        default=[0, 1, 2],
        help='randomness.seed of each run; every arm runs every seed, so '
        'that runs pair up by seed (default: 0 1 2)')
    parser.add_argument(
        '--shifts',
        nargs='+',
        type=float,
        default=[0.],
        help='brightness offsets to evaluate under (0: the plain test)')
    parser.add_argument(
        '--work-dir',
        default='work_dirs/gc_study',
        help='the study\'s folder: WORK/<arm>/seed<N>/ per run, and the '
        'report (report.md, .json, .png); finished runs in it are skipped, '
        'interrupted ones resumed (default: work_dirs/gc_study)')
    add_launcher_arg(parser,
                     'job launcher, passed to every train and test run')
    parser.add_argument(
        '--threshold',
        type=float,
        default=0.,
        help='a run whose box AP is at or below this counts as diverged')
    parser.add_argument(
        '--print-commands',
        action='store_true',
        help='print one command line per run (each this tool with --only '
        'ARM:SEED), e.g. for a cluster job array, and run nothing')
    parser.add_argument(
        '--only',
        metavar='ARM:SEED',
        help='train and test this one run of the study (e.g. SGD_GC:3)')
    parser.add_argument(
        '--report-only',
        action='store_true',
        help='train nothing: write the report from the runs in --work-dir')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=CfgOptions,
        default={},
        help='passed to every train and test run')
    args = parser.parse_args(argv)
    args.prog = parser.prog
    return args


def config_lr(cfg) -> Optional[float]:
    """The config's own learning rate (``optim_wrapper.optimizer.lr``), if
    it is a finite positive number."""
    lr = cfg.get('optim_wrapper')
    for key in ('optimizer', 'lr'):
        lr = lr.get(key) if isinstance(lr, dict) else None
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        return None
    try:
        lr = float(lr)
    except OverflowError:  # an int beyond the float range
        return None
    return lr if 0 < lr < math.inf else None


def check(args: argparse.Namespace) -> Optional[float]:
    """Fail before any work: config, --gc names, --lr, seeds, offsets.

    Returns:
        float | None: The config's own lr (:func:`config_lr`).
    """
    cfg = read_config(args.config)
    merge_options(cfg, args.cfg_options, args.config)
    own_type = (cfg.get('optim_wrapper') or {}).get('optimizer') or {}
    own_type = own_type.get('type') if isinstance(own_type, dict) else None
    for name in args.gc:
        if name == own_type:
            raise InputError(
                f'--gc {name}: the config\'s optimizer is {name} already, '
                'so the arms would be the same; start from the config of '
                'its plain optimizer (e.g. mmdet\'s own)')
        apply_gc(cfg.copy(), name)
    own = config_lr(cfg)
    if not all(0 < lr < math.inf for lr in args.lr):
        raise InputError(f'--lr must be positive and finite: {args.lr}')
    # A run's folder names its lr in 6 significant digits (ARM_lr0.08).
    odd = [lr for lr in args.lr if float(f'{lr:g}') != lr]
    if odd:
        raise InputError(f'--lr {odd[0]!r}: give at most 6 significant '
                         'digits (the run folders name the lr so)')
    if len({f'{lr:g}' for lr in args.lr}) != len(args.lr):
        raise InputError(f'--lr has repeats: {args.lr}')
    if own is not None and f'{own:g}' in {f'{lr:g}' for lr in args.lr}:
        raise InputError(f'--lr {own:g} is the config\'s own lr: its arms '
                         '(base and each --gc) already run it')
    if len(set(args.seeds)) != len(args.seeds):
        raise InputError(f'--seeds has repeats: {args.seeds}')
    # The report reads back only the run folders these name (seed<N>,
    # shift<OFFSET>).
    if any(s < 0 for s in args.seeds):
        raise InputError(f'--seeds must be >= 0: {args.seeds}')
    if not all(map(math.isfinite, args.shifts)):
        raise InputError(f'--shifts must be finite: {args.shifts}')
    if 0. not in args.shifts:
        raise InputError('--shifts must include 0 (the plain test)')
    if args.only:
        names = [
            run_name(a, s) for s in args.seeds
            for a in make_arms(args.gc, args.lr)
        ]
        if args.only not in names:
            raise InputError(f'--only {args.only} is not a run of this '
                             f'study; its runs: {", ".join(names)}')
    return own


def options(cfg_options: dict) -> list:
    return [f'{k}={v}' for k, v in cfg_options.items()]


def main(argv: Optional[Sequence[str]] = None,
         prog: Optional[str] = None) -> None:
    """Run the command (``argv``: its arguments, default ``sys.argv[1:]``;
    ``prog``: its name in usage and error lines)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv, prog)
    tool = args.prog
    try:
        own_lr = check(args)
    except InputError as e:
        sys.exit(f'{tool}: error: {e}')
    plan = Plan(
        config=args.config,
        work=args.work_dir,
        arms=make_arms(args.gc, args.lr),
        seeds=args.seeds,
        shifts=args.shifts,
        launcher=args.launcher,
        options=options(args.cfg_options),
        only=args.only)
    if args.print_commands:
        keep = [a for a in argv if a != '--print-commands']
        for arm, seed in plan.runs():
            print(
                shlex.join(
                    tool_command('study', *keep, '--only', run_name(arm,
                                                                    seed))))
        return
    if not args.report_only:
        execute(plan, os.getcwd(), say=lambda line: print(line, flush=True))
    if args.only:
        return
    try:
        text, _ = write_report(args.work_dir, args.threshold, config_lr=own_lr)
    except ReportError as e:
        sys.exit(f'{tool}: error: {e}')
    print(text)
    print(f'\nreport: {osp.join(args.work_dir, "report.md")} (.json, .png)')


if __name__ == '__main__':
    main()
