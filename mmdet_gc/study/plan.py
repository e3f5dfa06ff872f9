"""Planning and running paired GC studies: arms x seeds over one config.

The paper reports +0.4 to +0.9 COCO AP; detection AP moves by about as
much from seed to seed, so one pair of runs says little. A study trains
every arm (the config as it is, ``--gc`` arms, optionally at other
learning rates, :mod:`.arms`) with the same seeds, so that paired runs
differ in GC only (:class:`Plan`, :func:`execute`); :mod:`.reading` reads
them back, :mod:`.stats` computes their statistics and :mod:`.writing`
writes the report.
"""
import os
import os.path as osp
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from .arms import Arm, run_dir, run_name, shift_dir
from .reading import last_checkpoint


def tool_command(command: str, *args: str) -> List[str]:
    """A ``mmdet-gc COMMAND ARGS`` line through this interpreter
    (``python -m mmdet_gc``), so that it runs from a checkout or an
    installed wheel alike, in any working directory."""
    return [sys.executable, '-m', 'mmdet_gc', command, *args]


# yapf: disable
def train_command(config: str,
                  work: str,
                  arm: Arm,
                  seed: int,
                  launcher: str = 'none',
                  options: Sequence[str] = ()) -> List[str]:
    # yapf: enable
    """``mmdet-gc train`` for one run; ``--resume`` when it was
    interrupted (a checkpoint but no ``train.done``)."""
    run = run_dir(work, arm, seed)
    opts = [f'randomness.seed={seed}', *options]
    if arm.lr is not None:
        opts.append(f'optim_wrapper.optimizer.lr={arm.lr}')
    cmd = tool_command('train', config, '--work-dir', run)
    if arm.gc:
        cmd += ['--gc', arm.gc]
    if last_checkpoint(run):
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
    ckpt = last_checkpoint(run) or osp.join(run, 'CHECKPOINT')
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
