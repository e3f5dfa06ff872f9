"""Planning and running paired GC studies: arms x seeds over one config.

Gradient Centralization: Yong et al., ECCV 2020 (arXiv:2004.01461). The
paper reports +0.4 to +0.9 COCO AP; detection AP moves by about as much
from seed to seed, so one pair of runs says little. A study trains every
arm (the config as it is, ``--gc`` arms, optionally at other learning
rates) with the same seeds, so that paired runs differ in GC only
(:class:`Plan`, :func:`execute`); :mod:`.stats` reads and reports them.

Layout of a study's work dir: ``WORK/<arm>/seed<N>/`` is one
``mmdet-gc train`` run; its ``shift<OFFSET>/`` subfolders hold the
``mmdet-gc test`` evaluations of the final checkpoint under brightness
offsets (``shift0`` is the plain test); ``row_mean_drift.json`` (from
:class:`~mmdet_gc.engine.hooks.RowMeanDriftHook`) the drift of the weight
row means; ``train.done`` / ``train.failed`` mark how training ended.
"""
import math
import os
import os.path as osp
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from .report import Skips

#: A run's folder, as :func:`run_dir` names it.
SEED_DIR = re.compile(r'seed(0|[1-9][0-9]*)')
#: An arm at a learning rate of its own, as :attr:`Arm.name` spells it.
ARM_LR = re.compile(r'(.+)_lr([^_]+)')


@dataclass(frozen=True)
class Arm:
    """One arm of a study: the config's optimizer or a GC one, at the
    config's lr or another."""
    gc: Optional[str] = None
    lr: Optional[float] = None

    @property
    def family(self) -> str:
        """``base`` or the GC optimizer's name: the arm at any lr."""
        return self.gc or 'base'

    @property
    def name(self) -> str:
        return self.family if self.lr is None else \
            f'{self.family}_lr{self.lr:g}'

    @classmethod
    def from_name(cls, name: str) -> 'Arm':
        """The arm that :attr:`name` names: ``base``, ``SGD_GC``,
        ``SGD_GC_lr0.08``; any other folder name is an arm at the config's
        lr."""
        match = ARM_LR.fullmatch(name)
        family, lr = name, None
        if match:
            try:
                value = float(match.group(2))
            except ValueError:
                value = math.nan
            if 0 < value < math.inf and f'{value:g}' == match.group(2):
                family, lr = match.group(1), value
        return cls(None if family == 'base' else family, lr)


def make_arms(gc: Sequence[str], lrs: Sequence[float] = ()) -> List[Arm]:
    """The base arm and one arm per ``--gc`` name, at the config's lr and at
    each of ``lrs``."""
    out = []
    for lr in [None, *lrs]:
        out += [Arm(None, lr)] + [Arm(g, lr) for g in gc]
    return out


def run_name(arm: Arm, seed: int) -> str:
    """``ARM:SEED``, how ``--only`` names one run."""
    return f'{arm.name}:{seed}'


def run_dir(work: str, arm: Arm, seed: int) -> str:
    return osp.join(work, arm.name, f'seed{seed}')


def shift_dir(run: str, shift: float) -> str:
    return osp.join(run, f'shift{shift:g}')


def _last_checkpoint(run: str) -> Optional[str]:
    path = osp.join(run, 'last_checkpoint')
    if not osp.isfile(path):
        return None
    with Skips(path) as skips:
        try:
            with open(path, 'rb') as f:
                ckpt = f.read().decode().strip()
        except (OSError, UnicodeDecodeError) as e:
            skips.skip_all(f'cannot read a path in it ({e})')
            return None
    # isfile: False for a path with a NUL byte too.
    return ckpt if osp.isfile(ckpt) else None


def tool_command(command: str, *args: str) -> List[str]:
    """A ``mmdet-gc COMMAND ARGS`` line through this interpreter
    (``python -m mmdet_gc``), so that it runs from a checkout or an
    installed wheel alike, in any working directory."""
    return [sys.executable, '-m', 'mmdet_gc', command, *args]


def train_command(
    config: str,
    work: str,
    arm: Arm,
    seed: int,
    launcher: str = 'none',
    options: Sequence[str] = ()) -> List[str]:
    """``mmdet-gc train`` for one run; ``--resume`` when it was
    interrupted (a checkpoint but no ``train.done``)."""
    run = run_dir(work, arm, seed)
    opts = [f'randomness.seed={seed}', *options]
    if arm.lr is not None:
        opts.append(f'optim_wrapper.optimizer.lr={arm.lr}')
    cmd = tool_command('train', config, '--work-dir', run)
    if arm.gc:
        cmd += ['--gc', arm.gc]
    if _last_checkpoint(run):
        cmd.append('--resume')
    if launcher != 'none':
        cmd += ['--launcher', launcher]
    return cmd + ['--cfg-options', *opts]


def test_command(config: str,
                 run: str,
                 shift: float,
                 options: Sequence[str] = (),
                 launcher: str = 'none') -> List[str]:
    """``mmdet-gc test`` of a run's final checkpoint under one offset."""
    ckpt = _last_checkpoint(run) or osp.join(run, 'CHECKPOINT')
    cmd = tool_command('test', config, ckpt, '--work-dir',
                       shift_dir(run, shift))
    if shift:
        cmd += ['--intensity-shift', f'{shift:g}']
    if launcher != 'none':
        cmd += ['--launcher', launcher]
    return cmd + (['--cfg-options', *options] if options else [])


@dataclass
class Plan:
    """A study to run: config, arms, seeds, offsets, and where."""
    config: str
    work: str
    arms: List[Arm]
    seeds: List[int]
    shifts: List[float] = field(default_factory=lambda: [0.])
    launcher: str = 'none'
    options: List[str] = field(default_factory=list)

    only: Optional[str] = None  # 'ARM:SEED': one run of the study

    def runs(self) -> List[Tuple[Arm, int]]:
        # Seed-major order: the pairs of a seed finish together, so a
        # stopped study still has complete pairs.
        runs = [(a, s) for s in self.seeds for a in self.arms]
        if self.only is not None:
            runs = [(a, s) for a, s in runs if run_name(a, s) == self.only]
        return runs

    def train(self, arm: Arm, seed: int) -> List[str]:
        return train_command(self.config, self.work, arm, seed, self.launcher,
                             self.options)

    def test(self, run: str, shift: float) -> List[str]:
        return test_command(self.config, run, shift, self.options,
                            self.launcher)


def _run(cmd: List[str], log: str, cwd: str) -> int:
    os.makedirs(osp.dirname(log), exist_ok=True)
    with open(log, 'a') as f:
        f.write('+ ' + shlex.join(cmd) + '\n')
        f.flush()
        return subprocess.run(
            cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT).returncode


def execute(plan: Plan, cwd: str, say=print) -> Dict[str, int]:
    """Run what is not done yet; finished runs are skipped, interrupted
    ones resumed. A run whose training fails is marked ``train.failed``
    and counted by the report; the study goes on. The runs start in
    ``cwd``, which relative paths of the plan are relative to.

    Returns:
        dict: How many runs were ``done`` before, ``ran`` now, ``failed``.
    """
    counts = dict(done=0, ran=0, failed=0)
    todo = []
    for arm, seed in plan.runs():
        run = run_dir(plan.work, arm, seed)
        finished = osp.isfile(osp.join(run, 'train.failed')) or (osp.isfile(
            osp.join(run, 'train.done')) and all(
                osp.isfile(osp.join(shift_dir(run, s), 'test.done'))
                for s in plan.shifts))
        if finished:
            counts['done'] += 1
        else:
            todo.append((arm, seed))
    start, durations = time.perf_counter(), []
    for k, (arm, seed) in enumerate(todo, 1):
        run = run_dir(plan.work, arm, seed)
        log = osp.join(run, 'study.log')
        t0 = time.perf_counter()
        eta = ''
        if durations:
            left = sum(durations) / len(durations) * (len(todo) - k + 1)
            eta = f', about {left / 60:.1f} min left'
        say(f'[study] run {k}/{len(todo)}: {arm.name} seed {seed} '
            f'({counts["done"]} done before{eta})')
        if not osp.isfile(osp.join(run, 'train.done')):
            if _run(plan.train(arm, seed), log, cwd) != 0:
                open(osp.join(run, 'train.failed'), 'w').close()
                counts['failed'] += 1
                say(f'[study]   training failed: see {log}')
                durations.append(time.perf_counter() - t0)
                continue
            open(osp.join(run, 'train.done'), 'w').close()
        for shift in plan.shifts:
            marker = osp.join(shift_dir(run, shift), 'test.done')
            if osp.isfile(marker):
                continue
            if _run(plan.test(run, shift), log, cwd) == 0:
                open(marker, 'w').close()
            else:
                say(f'[study]   evaluation at offset {shift:g} failed: '
                    f'see {log}')
        counts['ran'] += 1
        durations.append(time.perf_counter() - t0)
    say(f'[study] {counts["ran"]} run(s) in '
        f'{(time.perf_counter() - start) / 60:.1f} min, {counts["done"]} '
        f'were done before, {counts["failed"]} failed')
    return counts
