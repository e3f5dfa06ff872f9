"""The statistics of a paired GC study, and its report.

Gradient Centralization: Yong et al., ECCV 2020 (arXiv:2004.01461). Per
metric, the paired difference of each arm to the base arm with a 95% t
interval and a paired t-test (:func:`paired_stats`), with failed and
diverged runs counted and kept in the statistics (:func:`summarize`);
:func:`write_report` writes ``report.md``, ``report.json`` and a figure.
A study's work dir is read as untrusted input (:func:`read_study`).
"""
import json
import math
import os
import os.path as osp
from dataclasses import dataclass
from typing import (IO, Any, Callable, Dict, List, Optional, Sequence, Tuple,
                    Union)

from ..engine.hooks.row_mean_drift_hook import DRIFT_FILE
from .plan import ARM_LR, SEED_DIR, Arm
from .report import (HEADERS, METRICS, ReportError, Skips, as_count, as_real,
                     bad_count, read_json, read_run, warn)


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
    """``name`` if it can name an arm: a row of the tables, text only, and
    an lr spelt as the study spells it where it names one
    (``SGD_GC_lr0.08``, not ``SGD_GC_lr0.080``)."""
    if not name.isprintable():
        return None
    if ARM_LR.fullmatch(name) and Arm.from_name(name).lr is None:
        return None
    return name


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
    for arm, _ in _subdirs(work, '', _arm,
                           'printable text, an lr as ARM_lr<LR> spells it'):
        arm_dir = osp.join(work, arm)
        for name, seed in _subdirs(arm_dir, 'seed', _seed,
                                   'seed<N>, N an integer >= 0'):
            out.append(
                _read_seed(osp.join(arm_dir, name), arm, seed, threshold))
    if not out:
        raise ReportError(f'{work}: no runs (expected <arm>/seed<N>/)')
    return out


def partner(arm: str, base: str = 'base') -> str:
    """The arm that ``arm`` pairs with: ``base`` at the same lr."""
    lr = Arm.from_name(arm).lr
    return base if lr is None else f'{base}_lr{lr:g}'


def summarize(results: List[RunResult],
              base: str = 'base',
              config_lr: Optional[float] = None) -> dict:
    """Per arm: mean and std of every metric, status counts, the shift
    curve and the drift; per other arm and metric: :func:`paired_stats`
    against ``base`` at the same lr (:func:`partner`) over the seeds both
    have; over more than one lr, the :func:`sweep` (``config_lr``: the lr
    of the arms without one of their own)."""

    def order(arm: str) -> tuple:  # by lr (the config's first), base first
        parsed = Arm.from_name(arm)
        return parsed.lr or 0, parsed.family != base, arm

    arms = sorted({r.arm for r in results}, key=order)
    by = {(r.arm, r.seed): r for r in results}
    out = dict(base=base, arms={}, paired={}, pairs={})
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
        other = partner(arm, base)
        seeds = sorted(r.seed for r in runs if (other, r.seed) in by)
        if arm == other or not seeds:
            continue
        out['pairs'][arm] = other
        out['paired'][arm] = {}
        for m in METRICS:
            both = [
                s for s in seeds
                if by[(other, s)].metrics.get(m, -1) >= 0 and by[(
                    arm, s)].metrics.get(m, -1) >= 0
            ]
            if both:
                out['paired'][arm][m] = paired_stats(
                    [by[(other, s)].metrics[m] for s in both],
                    [by[(arm, s)].metrics[m] for s in both])
    out['sweep'] = sweep(results, out, base, config_lr)
    return out


#: The two metrics of the sweep: box and mask AP.
SWEEP_METRICS = dict(box='coco/bbox_mAP', mask='coco/segm_mAP')


def sweep(results: List[RunResult],
          summary: dict,
          base: str = 'base',
          config_lr: Optional[float] = None) -> Optional[dict]:
    """A learning-rate sweep: each arm (``base``, each GC optimizer) at
    every lr it ran.

    Per arm and lr: runs, collapsed runs (diverged or failed) and box /
    mask AP mean ± std over every seed (mask AP where the study has it);
    per GC arm and lr, the paired difference to ``base`` at that lr (box
    and mask AP over every seed, and box AP over the seeds where both
    trained), with its 95% interval; per arm, the largest lr up to which it
    trained on every seed of the study (``stable``: at that lr and at each
    smaller one it ran, all the seeds, none collapsed).

    Returns:
        dict | None: None where the study ran one lr only.
    """
    cells: Dict[Tuple[str, str], str] = {}  # (family, lr as named) -> arm
    for arm in summary['arms']:
        parsed = Arm.from_name(arm)
        lr = parsed.lr if parsed.lr is not None else config_lr
        if lr is None:
            continue
        key = (parsed.family, f'{lr:g}')
        if key in cells:
            warn(f'arms {cells[key]} and {arm} both ran {parsed.family} at '
                 f'lr {key[1]}: the sweep shows {cells[key]}')
            continue
        cells[key] = arm
    lrs = sorted({lr for _, lr in cells}, key=float)
    if len(lrs) < 2:
        return None
    families = sorted({f for f, _ in cells}, key=lambda f: (f != base, f))
    by = {(r.arm, r.seed): r for r in results}
    seeds = sorted({r.seed for r in results})
    # A box-only study has no mask AP: a failed run's zeros are no AP.
    metrics = {
        k: m
        for k, m in SWEEP_METRICS.items()
        if any(r.status != 'failed' and m in r.metrics for r in results)
    }
    out = dict(
        config_lr=config_lr,
        lrs=[float(lr) for lr in lrs],
        seeds=len(seeds),
        arms={},
        paired={},
        stable={})
    for family in families:
        cols = out['arms'][family] = {}
        for lr in lrs:
            arm = cells.get((family, lr))
            if arm is None:
                continue
            s = summary['arms'][arm]
            cols[lr] = dict(
                arm=arm,
                n=len(s['seeds']),
                collapsed=s['diverged'] + s['failed'],
                **{
                    k:
                    s['metrics'][m] if k in metrics else dict(
                        mean=math.nan, std=math.nan, n=0)
                    for k, m in SWEEP_METRICS.items()
                })
        stable = None
        for lr, c in cols.items():  # in lr order
            if c['collapsed'] or c['n'] < len(seeds):
                break
            stable = float(lr)
        out['stable'][family] = stable
        if family == base or base not in families:
            continue
        out['paired'][family] = {}
        for lr in lrs:
            arm, other = cells.get((family, lr)), cells.get((base, lr))
            if arm is None or other is None:
                continue
            both = sorted(r.seed for r in results
                          if r.arm == arm and (other, r.seed) in by)
            pair = {}
            for key, m in metrics.items():
                have = [
                    s for s in both
                    if by[(other, s)].metrics.get(m, -1) >= 0 and by[(
                        arm, s)].metrics.get(m, -1) >= 0
                ]
                if have:
                    pair[key] = paired_stats(
                        [by[(other, s)].metrics[m] for s in have],
                        [by[(arm, s)].metrics[m] for s in have])
            trained = [
                s for s in both
                if by[(other, s)].status == 'ok' and by[(arm,
                                                         s)].status == 'ok'
            ]
            if trained and 'box' in metrics:
                m = SWEEP_METRICS['box']
                pair['box_trained'] = paired_stats(
                    [by[(other, s)].metrics[m] for s in trained],
                    [by[(arm, s)].metrics[m] for s in trained])
            out['paired'][family][lr] = pair
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
            '', f'Paired difference {arm} - {summary["pairs"][arm]} (AP '
            f'points, {next(iter(paired.values()))["n"]} seeds):', '',
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
    if summary.get('sweep'):
        out += ['', *sweep_markdown(summary['sweep'], summary['base'])]
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


def _interval(st: Optional[dict]) -> str:
    """``+1.2 [-0.3, +2.7]`` in AP points, or ``-``."""
    if not st:
        return '-'
    return (f'{_pct(st["mean"], True)} [{_pct(st["ci_low"], True)}, '
            f'{_pct(st["ci_high"], True)}]')


def sweep_markdown(sweep: dict, base: str = 'base') -> List[str]:
    """The learning-rate sweep: per lr and arm, collapsed runs and box /
    mask AP; per lr, the paired GC - base differences; per arm, the largest
    lr up to which every seed trained."""
    families = list(sweep['arms'])
    head = ['lr'] + [
        f'{f}: {h}' for f in families
        for h in ('collapsed', 'box AP', 'mask AP')
    ]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]

    def ap(st):
        return '-' if not st['n'] else \
            f'{_pct(st["mean"])} ± {_pct(st["std"])}'

    for lr in (f'{x:g}' for x in sweep['lrs']):
        cells = [lr]
        for f in families:
            c = sweep['arms'][f].get(lr)
            cells += ['-'] * 3 if c is None else [
                f'{c["collapsed"]} of {c["n"]}',
                ap(c['box']),
                ap(c['mask'])
            ]
        lines.append('| ' + ' | '.join(cells) + ' |')
    config = sweep['config_lr']
    out = [
        'Learning-rate sweep' +
        (f' (the config\'s own lr: {config:g})' if config is not None else '')
        + ': collapsed runs (diverged or failed) of the seeds run; COCO AP '
        '(%), mean ± std over every seed, collapsed runs included.', ''
    ] + lines
    for family, per_lr in sweep['paired'].items():
        out += [
            '', f'Paired difference {family} - {base} at each lr (AP '
            'points, 95% t interval): over every seed, and box AP over the '
            'seeds where both trained.', '',
            '| lr | box AP | mask AP | box AP, both trained | seeds |',
            '|---|---|---|---|---|'
        ]
        for lr, pair in per_lr.items():
            trained = pair.get('box_trained')
            n = next(iter(pair.values()))['n'] if pair else 0
            out.append(f'| {lr} | {_interval(pair.get("box"))} | '
                       f'{_interval(pair.get("mask"))} | '
                       f'{_interval(trained)} | '
                       f'{n} ({trained["n"] if trained else 0} both '
                       'trained) |')
    stable = ', '.join(f'{f} {"none" if lr is None else f"{lr:g}"}'
                       for f, lr in sweep['stable'].items())
    out += [
        '', f'Largest lr up to which every one of the {sweep["seeds"]} '
        'seeds trained (at it and at every smaller lr run): ' + stable +
        ' (of ' + ', '.join(f'{x:g}' for x in sweep['lrs']) + ').'
    ]
    return out


def plot_sweep(results: List[RunResult], sweep: dict,
               path: Union[str, IO[bytes]]) -> None:
    """Collapse rate, box AP and mask AP against lr (log scale), one colour
    per arm; every seed a dot (a cross where it collapsed), the mean a
    line."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    families = list(sweep['arms'])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for i, family in enumerate(families):
        colour = f'C{i}'
        # Side by side at each lr: the arms' dots do not hide each other.
        nudge = 1 + 0.04 * (i - (len(families) - 1) / 2)
        cells = sweep['arms'][family]
        lrs = [float(lr) for lr in cells]
        axes[0].plot(
            lrs, [c['collapsed'] / c['n'] for c in cells.values()],
            'o-',
            color=colour,
            label=family)
        for ax, (key, metric) in zip(axes[1:], SWEEP_METRICS.items()):
            for collapsed, marker in ((False, 'o'), (True, 'x')):
                pts = [(float(lr) * nudge, 100 * r.metrics[metric])
                       for lr, c in cells.items() for r in results
                       if r.arm == c['arm'] and c[key]['n'] and r.metrics.get(
                           metric, -1) >= 0 and (r.status != 'ok') == collapsed
                       ]
                if pts:
                    ax.scatter(
                        *zip(*pts),
                        color=colour,
                        alpha=0.6,
                        s=20,
                        marker=marker)
            means = [(float(lr), 100 * c[key]['mean'])
                     for lr, c in cells.items() if c[key]['n']]
            if means:
                ax.plot(*zip(*means), '-', color=colour, label=family)
    axes[0].set(
        title='collapsed runs (diverged or failed)',
        ylabel='fraction of seeds',
        ylim=(-0.05, 1.05))
    for ax, task in zip(axes[1:], ('box', 'mask')):
        ax.set(
            title=f'{task} AP (every seed, x: collapsed; line: mean)',
            ylabel='AP (%)')
    for ax in axes:
        ax.set_xscale('log')
        ax.set_xticks(sweep['lrs'])
        ax.set_xticklabels([f'{x:g}' for x in sweep['lrs']])
        ax.minorticks_off()
        ax.set_xlabel('learning rate')
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100, format='png')
    plt.close(fig)


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
                 base: str = 'base',
                 config_lr: Optional[float] = None) -> Tuple[str, dict]:
    """Read a study, write ``report.md``, ``report.json`` and
    ``report.png`` into ``work`` (and ``report_lr.png`` for a sweep over
    learning rates, ``config_lr`` being the lr of the arms without one of
    their own); return the markdown and the summary.

    Raises:
        ReportError: No runs, or a report file cannot be written.
    """
    results = read_study(work, threshold)
    summary = summarize(results, base, config_lr)
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
    if summary['sweep']:
        _write(
            osp.join(work, 'report_lr.png'),
            lambda f: plot_sweep(results, summary['sweep'], f),
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
