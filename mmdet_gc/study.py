"""Paired GC studies: arms x seeds over one config, and their statistics.

Gradient Centralization: Yong et al., ECCV 2020 (arXiv:2004.01461). The
paper reports +0.4 to +0.9 COCO AP; detection AP moves by about as much
from seed to seed, so one pair of runs says little. A study trains every
arm (the config as it is, ``--gc`` arms, optionally at other learning
rates) with the same seeds, so that paired runs differ in GC only, and
reports per metric the paired difference to the base arm with a 95%
t interval and a paired t-test, with failed and diverged runs counted and
kept in the statistics.

Layout of a study's work dir: ``WORK/<arm>/seed<N>/`` is one
``mmdet-gc train`` run; its ``shift<OFFSET>/`` subfolders hold the
``mmdet-gc test`` evaluations of the final checkpoint under brightness
offsets (``shift0`` is the plain test); ``row_mean_drift.json`` (from
:class:`~mmdet_gc.diagnostics.RowMeanDriftHook`) the drift of the weight
row means; ``train.done`` / ``train.failed`` mark how training ended.
"""
import json
import math
import os
import os.path as osp
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import (IO, Any, Callable, Dict, List, Optional, Sequence, Tuple,
                    Union)

from .report import (HEADERS, METRICS, ReportError, Skips, as_count, as_real,
                     bad_count, read_json, read_run)

#: What :class:`~mmdet_gc.diagnostics.RowMeanDriftHook` writes in a run.
DRIFT_FILE = 'row_mean_drift.json'
#: A run's folder, as :func:`run_dir` names it.
SEED_DIR = re.compile(r'seed(0|[1-9][0-9]*)')


@dataclass(frozen=True)
class Arm:
    """One arm of a study: the config's optimizer or a GC one, at the
    config's lr or another."""
    gc: Optional[str] = None
    lr: Optional[float] = None

    @property
    def name(self) -> str:
        base = self.gc or 'base'
        return base if self.lr is None else f'{base}_lr{self.lr:g}'


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


def train_command(config: str,
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
                 options: Sequence[str] = ()) -> List[str]:
    """``mmdet-gc test`` of a run's final checkpoint under one offset."""
    ckpt = _last_checkpoint(run) or osp.join(run, 'CHECKPOINT')
    cmd = tool_command('test', config, ckpt, '--work-dir',
                       shift_dir(run, shift))
    if shift:
        cmd += ['--intensity-shift', f'{shift:g}']
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
        return test_command(self.config, run, shift, self.options)


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


# ---------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------


def paired_stats(base: Sequence[float],
                 other: Sequence[float]) -> Dict[str, float]:
    """The paired difference ``other - base``: mean, sample std, 95% t
    interval and the two-sided paired t-test p-value.

    Args:
        base, other: One value per seed, in the same seed order.

    Returns:
        dict: ``n``, ``mean``, ``std``, ``ci_low``, ``ci_high``, ``p``
        (``nan`` where ``n < 2`` or the differences do not vary).
    """
    from scipy import stats
    if len(base) != len(other):
        raise ValueError('paired samples need one value per seed each')
    diff = [o - b for b, o in zip(base, other)]
    n = len(diff)
    mean, std = mean_std(diff)
    if n < 2:
        return dict(
            n=n,
            mean=mean,
            std=std,
            ci_low=math.nan,
            ci_high=math.nan,
            p=math.nan)
    half = stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)
    p = float(stats.ttest_rel(other, base).pvalue) if std > 0 else math.nan
    return dict(
        n=n, mean=mean, std=std, ci_low=mean - half, ci_high=mean + half, p=p)


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    std = math.sqrt(sum(
        (v - mean)**2 for v in values) / (n - 1)) if n > 1 else math.nan
    return mean, std


@dataclass
class RunResult:
    """What the report knows of one run."""
    arm: str
    seed: int
    status: str  # 'ok', 'diverged' (non-finite loss / AP below threshold),
    # 'failed' (no metrics)
    metrics: Dict[str, float]
    shifts: Dict[float, float]  # offset -> bbox AP
    losses: List[Tuple[int, float]]
    drift: Optional[Dict[str, float]]  # max drift of conv / fc weights


def _drift(run: str) -> Optional[Dict[str, float]]:
    """The largest row-mean drift of a run's conv and fc weights; None
    without a valid :data:`DRIFT_FILE`."""
    path = osp.join(run, DRIFT_FILE)
    if not osp.lexists(path):
        return None
    layers = []  # (ndim, max_drift)
    with Skips(path) as skips:
        doc = read_json(path, skips)
        if skips:
            return None
        if not (isinstance(doc, dict) and isinstance(doc.get('layers'), dict)
                and bad_count(doc) is None):
            skips.skip_all('not a RowMeanDriftHook record (an object: '
                           '"layers" an object, "iter" an integer >= 0)')
            return None
        for name, layer in doc['layers'].items():
            if not isinstance(layer, dict):
                skips.add('layer', 'not an object', repr(name))
                continue
            ndim = as_count(layer.get('ndim'))
            drift = as_real(layer.get('max_drift'))
            # NaN passes: the hook writes it for weights that diverged.
            if ndim is None or drift is None or drift < 0:
                skips.add(
                    'layer', '"ndim" not an integer >= 0 or '
                    '"max_drift" not a number >= 0', repr(name))
                continue
            layers.append((ndim, drift))
    out = {}
    for kind, keep in (('conv', lambda n: n > 3), ('fc', lambda n: n == 2)):
        values = [d for n, d in layers if keep(n)]
        if values:
            out[kind] = max(values)
    return out


def _listdir(path: str, skips: Skips) -> List[str]:
    """The sorted names in ``path``; none where it cannot be listed."""
    try:
        return sorted(os.listdir(path))
    except OSError as e:
        skips.skip_all(f'cannot list it ({e.strerror or e})')
        return []


def _arm(name: str) -> Optional[str]:
    """``name`` if it can name an arm: a row of the tables, text only."""
    return name if name.isprintable() else None


def _seed(name: str) -> Optional[int]:
    """The seed of a ``seed<N>`` folder, as :func:`run_dir` names it."""
    match = SEED_DIR.fullmatch(name)
    return as_count(int(match.group(1))) if match else None


def _offset(name: str) -> Optional[float]:
    """The offset of a ``shift<OFFSET>`` folder, as :func:`shift_dir` names
    it."""
    try:
        offset = float(name[5:])
    except ValueError:
        return None
    if not math.isfinite(offset) or f'{offset:g}' != name[5:]:
        return None
    return offset + 0.  # -0 is the plain test too


def _subdirs(parent: str, prefix: str, parse: Callable[[str], Optional[Any]],
             form: str) -> List[Tuple[str, Any]]:
    """``(name, parse(name))`` of the folders in ``parent`` whose names
    start with ``prefix``; those ``parse`` refuses (None) are skipped, with
    one warning that says they are not ``form``."""
    out = []
    with Skips(parent) as skips:
        for name in _listdir(parent, skips):
            if not (name.startswith(prefix)
                    and osp.isdir(osp.join(parent, name))):
                continue
            value = parse(name)
            if value is None:
                skips.add('folder', f'name not {form}', repr(name))
            else:
                out.append((name, value))
    return out


def _read_seed(run: str, arm: str, seed: int, threshold: float) -> RunResult:
    """One run of :func:`read_study`."""
    losses, metrics, shifts = [], {}, {}
    try:
        losses = read_run(run).losses
    except ReportError:
        pass
    for name, offset in _subdirs(run, 'shift', _offset,
                                 'shift<OFFSET>, OFFSET a finite number'):
        try:
            final = read_run(osp.join(run, name)).test
        except ReportError:
            continue
        if final is not None:
            shifts[offset] = final.get('coco/bbox_mAP', math.nan)
            if offset == 0:
                metrics = {k: final[k] for k in METRICS if k in final}
    if osp.isfile(osp.join(run, 'train.failed')) or not metrics:
        status = 'failed'
        metrics = {k: 0. for k in METRICS}
    elif any(not math.isfinite(v) for _, v in losses) or \
            metrics.get('coco/bbox_mAP', 0.) <= threshold:
        status = 'diverged'
    else:
        status = 'ok'
    return RunResult(arm, seed, status, metrics, shifts, losses, _drift(run))


def read_study(work: str, threshold: float = 0.) -> List[RunResult]:
    """Every run of a study's work dir.

    A run is ``failed`` when training failed or it has no test metrics
    (its metrics count as 0 in the statistics), ``diverged`` when a logged
    loss is not finite or its bbox AP is at or below ``threshold``, else
    ``ok``. Nothing is dropped. The work dir is untrusted input: malformed
    records and folder names are skipped, with one warning per file or
    folder (:func:`~mmdet_gc.report.warn`).

    Raises:
        ReportError: No runs under ``work``.
    """
    if not osp.isdir(work):
        raise ReportError(f'{work}: no such study work dir')
    out = []
    for arm, _ in _subdirs(work, '', _arm, 'printable text'):
        arm_dir = osp.join(work, arm)
        for name, seed in _subdirs(arm_dir, 'seed', _seed,
                                   'seed<N>, N an integer >= 0'):
            out.append(
                _read_seed(osp.join(arm_dir, name), arm, seed, threshold))
    if not out:
        raise ReportError(f'{work}: no runs (expected <arm>/seed<N>/)')
    return out


def summarize(results: List[RunResult], base: str = 'base') -> dict:
    """Per arm: mean and std of every metric, status counts, the shift
    curve and the drift; per other arm and metric: :func:`paired_stats`
    against ``base`` over the seeds both have."""
    arms = sorted({r.arm for r in results}, key=lambda a: (a != base, a))
    by = {(r.arm, r.seed): r for r in results}
    out = dict(base=base, arms={}, paired={})
    for arm in arms:
        runs = [r for r in results if r.arm == arm]
        stats = {}
        for m in METRICS:
            # COCO reports -1 where a size class has no objects.
            values = [r.metrics[m] for r in runs if r.metrics.get(m, -1) >= 0]
            mean, std = mean_std(values)
            stats[m] = dict(mean=mean, std=std, n=len(values))
        offsets = sorted({o for r in runs for o in r.shifts})
        shift = {
            f'{o:g}': mean_std([r.shifts[o] for r in runs if o in r.shifts])[0]
            for o in offsets
        }
        drift = {}
        for kind in ('conv', 'fc'):
            values = [
                r.drift[kind] for r in runs if r.drift and kind in r.drift
            ]
            if values:
                drift[kind] = max(values)
        out['arms'][arm] = dict(
            seeds=sorted(r.seed for r in runs),
            ok=sum(r.status == 'ok' for r in runs),
            diverged=sum(r.status == 'diverged' for r in runs),
            failed=sum(r.status == 'failed' for r in runs),
            metrics=stats,
            shift_bbox_mAP=shift,
            max_row_mean_drift=drift)
        seeds = sorted(r.seed for r in runs if (base, r.seed) in by)
        if arm == base or not seeds:
            continue
        out['paired'][arm] = {}
        for m in METRICS:
            both = [
                s for s in seeds if by[(base, s)].metrics.get(m, -1) >= 0
                and by[(arm, s)].metrics.get(m, -1) >= 0
            ]
            if both:
                out['paired'][arm][m] = paired_stats(
                    [by[(base, s)].metrics[m] for s in both],
                    [by[(arm, s)].metrics[m] for s in both])
    return out


def _pct(x: float, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return '-'
    return f'{100 * x:+.1f}' if signed else f'{100 * x:.1f}'


def study_markdown(summary: dict) -> str:
    """The per-arm table (mean ± std over seeds, in AP %), the paired
    differences to the base arm with their 95% CI and p, stability, the
    brightness-shift curves and the row-mean drift."""
    head = ['arm', 'seeds', 'ok / diverged / failed'
            ] + [f'{t} {h}' for t in ('box', 'mask') for h in HEADERS]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for arm, s in summary['arms'].items():
        cells = [
            '-' if not s['metrics'][m]['n'] else
            f'{_pct(s["metrics"][m]["mean"])} ± {_pct(s["metrics"][m]["std"])}'
            for m in METRICS
        ]
        lines.append('| ' + ' | '.join([
            arm,
            str(len(s['seeds'])),
            f'{s["ok"]} / {s["diverged"]} / {s["failed"]}'
        ] + cells) + ' |')
    out = [
        'Per arm: COCO AP (%), mean ± std over seeds; failed runs count '
        'as 0; "-": no objects of that size.', ''
    ] + lines
    for arm, paired in summary['paired'].items():
        if not paired:  # no metric that both arms computed (all -1)
            continue
        out += [
            '', f'Paired difference {arm} - {summary["base"]} (AP points, '
            f'{next(iter(paired.values()))["n"]} seeds):', '',
            '| metric | mean | 95% CI | p (paired t) |', '|---|---|---|---|'
        ]
        for m, st in paired.items():
            p = '-' if math.isnan(st['p']) else f'{st["p"]:.3f}'
            out.append(f'| {m[5:]} | {_pct(st["mean"], True)} | '
                       f'[{_pct(st["ci_low"], True)}, '
                       f'{_pct(st["ci_high"], True)}] | {p} |')
    offsets = sorted({
        float(o)
        for s in summary['arms'].values()
        for o in s['shift_bbox_mAP']
    })
    if len(offsets) > 1:
        out += [
            '', 'Box AP (%) under brightness offsets (mean over seeds):', '',
            '| arm | ' + ' | '.join(f'{o:+g}' for o in offsets) + ' |',
            '|---|' + '---|' * len(offsets)
        ]
        for arm, s in summary['arms'].items():
            out.append(f'| {arm} | ' + ' | '.join(
                _pct(s['shift_bbox_mAP'].get(f'{o:g}', math.nan))
                for o in offsets) + ' |')
    if any(s['max_row_mean_drift'] for s in summary['arms'].values()):
        out += [
            '', 'Largest drift of a weight row mean from its initial '
            'value (over layers and seeds):', '',
            '| arm | conv weights | fc weights |', '|---|---|---|'
        ]
        for arm, s in summary['arms'].items():
            d = s['max_row_mean_drift']
            out.append(f'| {arm} | ' +
                       ' | '.join(f'{d[k]:.2e}' if k in d else '-'
                                  for k in ('conv', 'fc')) + ' |')
    return '\n'.join(out)


def plot_study(results: List[RunResult], summary: dict,
               path: Union[str, IO[bytes]]) -> None:
    """Loss (mean ± std band over seeds), box AP under brightness offsets,
    and box / mask AP per seed as paired dots; one colour per arm in every
    panel, into a PNG (a path or a binary file)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np
    arms = list(summary['arms'])
    colour = {a: f'C{i}' for i, a in enumerate(arms)}
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    for arm in arms:
        runs = [r for r in results if r.arm == arm and r.losses]
        if runs:
            n = min(len(r.losses) for r in runs)
            it = [i for i, _ in runs[0].losses[:n]]
            v = np.array([[x for _, x in r.losses[:n]] for r in runs])
            m, s = v.mean(0), v.std(0)
            axes[0].plot(it, m, color=colour[arm], label=arm)
            axes[0].fill_between(
                it, m - s, m + s, color=colour[arm], alpha=0.2)
        shift = summary['arms'][arm]['shift_bbox_mAP']
        if shift:
            xs = sorted(shift, key=float)
            axes[1].plot([float(x) for x in xs], [100 * shift[x] for x in xs],
                         'o-',
                         color=colour[arm],
                         label=arm)
    axes[0].set(title='training loss (mean ± std)', xlabel='iteration')
    axes[1].set(
        title='box AP under brightness offset',
        xlabel='offset (pixel values)',
        ylabel='AP (%)')
    for ax, metric, title in ((axes[2], 'coco/bbox_mAP', 'box AP per seed'),
                              (axes[3], 'coco/segm_mAP', 'mask AP per seed')):
        seeds = sorted({r.seed for r in results})
        for arm_i, arm in enumerate(arms):
            ys = {
                r.seed: 100 * r.metrics.get(metric, 0.)
                for r in results if r.arm == arm
            }
            ax.scatter(
                [arm_i] * len(ys),
                list(ys.values()),
                color=colour[arm],
                zorder=3,
                label=arm)
        for seed in seeds:  # a line joins the runs of one seed
            pts = [(i, 100 * r.metrics.get(metric, 0.))
                   for i, arm in enumerate(arms) for r in results
                   if r.arm == arm and r.seed == seed]
            ax.plot([p[0] for p in pts], [p[1] for p in pts],
                    color='grey',
                    alpha=0.5,
                    zorder=1)
        ax.set(title=title, ylabel='AP (%)', xticks=range(len(arms)))
        ax.set_xticklabels(arms, rotation=20)
    for ax in axes[:2]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100, format='png')
    plt.close(fig)


def write_report(work: str,
                 threshold: float = 0.,
                 base: str = 'base') -> Tuple[str, dict]:
    """Read a study, write ``report.md``, ``report.json`` and
    ``report.png`` into ``work``; return the markdown and the summary.

    Raises:
        ReportError: No runs, or a report file cannot be written.
    """
    results = read_study(work, threshold)
    summary = summarize(results, base)
    summary['threshold'] = threshold
    summary['runs'] = [
        dict(
            arm=r.arm,
            seed=r.seed,
            status=r.status,
            metrics=r.metrics,
            shifts={
                f'{k:g}': v
                for k, v in r.shifts.items()
            },
            drift=r.drift) for r in results
    ]
    text = study_markdown(summary)
    _write(osp.join(work, 'report.md'), lambda f: f.write(text + '\n'))
    _write(
        osp.join(work, 'report.json'),
        lambda f: json.dump(summary, f, indent=1, default=str))
    _write(
        osp.join(work, 'report.png'),
        lambda f: plot_study(results, summary, f),
        binary=True)
    return text, summary


def _write(path: str,
           write: Callable[[IO], Any],
           binary: bool = False) -> None:
    """Write ``path`` anew: into a new file, then renamed over ``path``, so
    that what a work dir holds there (a symlink, a FIFO) is replaced, never
    written through or waited on.

    Raises:
        ReportError: ``path`` cannot be written (e.g. it is a folder).
    """
    tmp, made = f'{path}.{os.getpid()}.tmp', False
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        made = True
        kwargs = {} if binary else dict(encoding='utf-8')
        with open(fd, 'wb' if binary else 'w', **kwargs) as f:
            write(f)
        os.replace(tmp, path)
    except OSError as e:
        raise ReportError(
            f'{path}: cannot write it ({e.strerror or e})') from e
    finally:
        if made and osp.lexists(tmp):
            os.unlink(tmp)
