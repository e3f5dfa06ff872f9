"""Writing the reports: markdown tables, ``report.json`` and the files.

:func:`markdown_table` is the table of a few runs (``mmdet-gc report``);
:func:`study_markdown` and :func:`sweep_markdown` the tables of a study's
:func:`~.stats.summarize`; :func:`write_report` reads a study and writes
``report.md``, ``report.json`` and its figures (:mod:`.figures`) into its
work dir, each file replaced whole.
"""
import json
import math
import os
import os.path as osp
from typing import IO, Any, Callable, List, Optional, Sequence, Tuple

from .figures import plot_study, plot_sweep
from .reading import (COLUMNS, HEADERS, METRICS, TASKS, ReportError, Run,
                      read_study)
from .stats import summarize


def _fmt(value: Optional[float]) -> str:
    if value is None or value < 0:
        return '-'
    return f'{100 * value:.1f}'


def _cell(text: str) -> str:
    """``text`` as one markdown table cell: a ``|`` in it ends none."""
    return text.replace('|', '\\|')


def _difference(a: Optional[float], b: Optional[float]) -> str:
    """``b - a`` in AP points, or ``-`` where either is no AP."""
    if a is None or b is None or a < 0 or b < 0:
        return '-'
    return f'{100 * (b - a):+.1f}'


def markdown_table(runs: Sequence[Run]) -> str:
    """The paper-style table: AP, AP50, AP75, APs, APm, APl per task (%),
    then each run's optimizer and lr (``-`` where its config gives none).

    With two runs or more, a row ``B - A`` per later run B: its metrics
    minus the first run's (A), in AP points. It is the difference of one
    pair of runs, not a statistic: seed to seed, AP moves by about as much
    (``mmdet-gc study`` pairs runs over seeds).
    """
    tasks = [
        t for t in TASKS if any(r.final and f'coco/{t}_{c}' in r.final
                                for r in runs for c in COLUMNS)
    ] or ['bbox']
    keys = [f'coco/{t}_{c}' for t in tasks for c in COLUMNS]
    head = ['run'] + [
        f'{"box" if t == "bbox" else "mask"} {h}' for t in tasks
        for h in HEADERS
    ] + ['optimizer', 'lr']
    lines = [
        '| ' + ' | '.join(head) + ' |',
        '|' + '|'.join(['---'] + ['---:'] * len(keys) + ['---', '---:']) + '|'
    ]
    for run in runs:
        m = run.final or {}
        cells = [_fmt(m.get(k)) for k in keys] + [
            _cell(run.optimizer or '-'),
            '-' if run.lr is None else f'{run.lr:g}'
        ]
        lines.append('| ' + ' | '.join([_cell(run.name)] + cells) + ' |')
    first = (runs[0].final or {}) if runs else {}
    for run in runs[1:]:
        m = run.final or {}
        cells = [_difference(first.get(k), m.get(k)) for k in keys]
        lines.append('| ' +
                     ' | '.join([_cell(f'{run.name} - {runs[0].name}')] +
                                cells + ['', '']) + ' |')
    if len(runs) > 1:
        lines += [
            '', f'Rows "B - {_cell(runs[0].name)}": run B\'s AP minus the '
            'first run\'s, in AP points (one pair of runs: AP moves by about '
            'as much from seed to seed; `mmdet-gc study` pairs runs over '
            'seeds).'
        ]
    overrides = [(r.name, line) for r in runs for line in r.overrides]
    if overrides:
        lines += [
            '', "Resumed with the config's settings "
            '(`--resume-with-config`):'
        ]
        lines += [f'- {name}: {line}' for name, line in overrides]
    return '\n'.join(lines)


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
    png = osp.join(work, 'report.png')
    _write(png, lambda f: plot_study(results, summary, f, png), binary=True)
    if summary['sweep']:
        png_lr = osp.join(work, 'report_lr.png')
        _write(
            png_lr,
            lambda f: plot_sweep(results, summary['sweep'], f, png_lr),
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
