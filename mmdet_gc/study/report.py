"""Paired-run report: the paper-style COCO table and curves of work dirs.

Gradient Centralization: Yong et al., ECCV 2020 (arXiv:2004.01461). Compare
a baseline and a GC run trained with the same config, e.g.::

    python tools/train.py CONFIG --work-dir work_dirs/sgd
    python tools/train.py CONFIG --gc SGD_GC --work-dir work_dirs/sgd_gc
    python tools/gc_report.py work_dirs/sgd work_dirs/sgd_gc --plot gc.png

It reads what MMEngine writes: ``<work_dir>/<timestamp>/vis_data/
scalars.json`` (training losses, validation metrics) and
``<work_dir>/<timestamp>/<timestamp>.json`` (``tools/test.py`` metrics),
and what ``--resume-with-config`` took from the config
(``<work_dir>/<timestamp>/resumed_with_config.txt``).
"""
import glob
import json
import os.path as osp
import sys
from dataclasses import dataclass, field
from typing import (Any, BinaryIO, Dict, Iterator, List, Optional, Sequence,
                    Tuple)

from ..engine.hooks.resumable_checkpoint_hook import OVERRIDES_FILE

#: Columns of the paper's tables, per task, as mmdet's CocoMetric names them.
COLUMNS = ('mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l')
HEADERS = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl')
TASKS = ('bbox', 'segm')
#: The metrics the report and the study read.
METRICS = tuple(f'coco/{t}_{c}' for t in TASKS for c in COLUMNS)
#: The counts (step, iter, epoch) a log record may hold.
COUNTS = ('step', 'iter', 'epoch')
#: Counts above this are no training's: a bound keeps them plottable.
MAX_COUNT = 2**63 - 1


class ReportError(ValueError):
    """A work dir that cannot be reported, with the reason."""


# ---------------------------------------------------------------------------
# Reading a work dir: untrusted input. What is malformed is skipped, with one
# warning per file; what is valid is reported.
# ---------------------------------------------------------------------------


def warn(message: str) -> None:
    """Print ``warning: MESSAGE`` to stderr."""
    print(f'warning: {message}', file=sys.stderr)


class Skips:
    """What was skipped in one file or folder, told in one warning when the
    ``with`` block ends, e.g. ``warning: skipped 2 malformed lines in PATH:
    not a JSON object (line 3, line 7)``.

    Args:
        path (str): The file or folder, named in the warning.
    """
    #: How many items of one reason the warning lists.
    SHOWN = 5

    def __init__(self, path: str) -> None:
        self.path = path
        self.units: Dict[str, int] = {}
        self.reasons: Dict[str, List[str]] = {}
        self.whole: Optional[str] = None

    def add(self, unit: str, reason: str, item: str) -> None:
        """Skip one ``unit`` (``'line'``, ``'value'``, ``'folder'``...),
        ``item`` naming it."""
        self.units[unit] = self.units.get(unit, 0) + 1
        self.reasons.setdefault(reason, []).append(item[:60])

    def skip_all(self, reason: str) -> None:
        """Skip the whole file."""
        self.whole = reason

    def __bool__(self) -> bool:
        return bool(self.units) or self.whole is not None

    def message(self) -> Optional[str]:
        """The warning, or None when nothing was skipped."""
        if self.whole is not None:
            return f'skipped {self.path}: {self.whole}'
        if not self.units:
            return None
        what = ' and '.join(f'{n} malformed {u}{"s" if n > 1 else ""}'
                            for u, n in self.units.items())
        why = '; '.join(f'{r} ({", ".join(i[:self.SHOWN])}'
                        f'{", ..." if len(i) > self.SHOWN else ""})'
                        for r, i in self.reasons.items())
        return f'skipped {what} in {self.path}: {why}'

    def __enter__(self) -> 'Skips':
        return self

    def __exit__(self, *exc: Any) -> None:
        message = self.message()
        if message is not None:
            warn(message)


def as_count(value: Any) -> Optional[int]:
    """``value`` if it is a count as MMEngine logs one (an int, not a bool,
    in ``[0, MAX_COUNT]``), else None."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= MAX_COUNT else None


def as_real(value: Any) -> Optional[float]:
    """``value`` as a float if it is an int or a float (not a bool), NaN and
    infinities included, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:  # an int beyond the float range
        return None


def as_metric(value: Any) -> Optional[float]:
    """``value`` as a float if it can be a COCO AP (in ``[-1, 1]``: an AP is
    in ``[0, 1]``, and -1 where COCO computed none), else None."""
    value = as_real(value)
    return value if value is not None and -1 <= value <= 1 else None


def bad_count(record: dict) -> Optional[str]:
    """The first of :data:`COUNTS` that ``record`` holds and is no
    :func:`as_count`, else None."""
    return next(
        (k for k in COUNTS if k in record and as_count(record[k]) is None),
        None)


@dataclass
class Record:
    """One valid record of an MMEngine JSON log."""
    step: int  # ``step``, else ``iter``, else 0
    epoch: Optional[int]
    loss: Optional[float]  # NaN or infinite where training diverged
    coco: bool  # an evaluation: it has ``coco/`` keys
    metrics: Dict[str, float]  # its valid :data:`METRICS`


def parse_record(raw: Any, skips: Skips, item: str) -> Optional[Record]:
    """Validate one decoded line of ``scalars.json`` or a test result.

    A line that is no object, or has a bad count or loss, is skipped; a bad
    metric value alone is dropped. Other keys are not read.

    Args:
        raw (Any): The decoded line.
        skips (Skips): Where a skip is recorded.
        item (str): The line, as the warning names it.

    Returns:
        Record | None: The record, or None where the line is skipped.
    """
    if not isinstance(raw, dict):
        skips.add('line', 'not a JSON object', item)
        return None
    key = bad_count(raw)
    if key is not None:
        skips.add('line', f'{key} not an integer >= 0', item)
        return None
    loss = as_real(raw['loss']) if 'loss' in raw else None
    if 'loss' in raw and loss is None:
        skips.add('line', 'loss not a number', item)
        return None
    metrics = {}
    for key in METRICS:
        if key in raw:
            value = as_metric(raw[key])
            if value is None:
                skips.add('value', f'{key} not a number in [-1, 1]', item)
            else:
                metrics[key] = value
    return Record(
        step=raw.get('step', raw.get('iter', 0)),
        epoch=raw.get('epoch'),
        loss=loss,
        coco=any(k.startswith('coco/') for k in raw),
        metrics=metrics)


def _open(path: str, skips: Skips) -> Optional[BinaryIO]:
    # A regular file only: a FIFO or a device would block or never end.
    if not osp.isfile(path):
        skips.skip_all('not a regular file')
        return None
    try:
        return open(path, 'rb')
    except OSError as e:
        skips.skip_all(f'cannot read it ({e.strerror or e})')
        return None


def _decode(data: bytes) -> Tuple[Any, Optional[str]]:
    """``(json.loads(data), None)``, or ``(None, why)`` where it is not
    JSON."""
    try:
        return json.loads(data), None
    except RecursionError:
        return None, 'nested too deep'
    except ValueError:  # not JSON, not UTF-8, or an int of > 4300 digits
        return None, 'not JSON'


def read_records(path: str, skips: Skips) -> Iterator[Record]:
    """The valid records of a JSON-lines log (``scalars.json``, a test
    result); what is skipped goes to ``skips``.

    A last line without its newline that is not JSON is ignored without a
    warning: MMEngine is still writing it, or a crash cut it off.
    """
    f = _open(path, skips)
    if f is None:
        return
    with f:
        try:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                item = f'line {number}'
                raw, why = _decode(line)
                if why is None:
                    record = parse_record(raw, skips, item)
                    if record is not None:
                        yield record
                elif line.endswith(b'\n'):
                    skips.add('line', why, item)
        except OSError as e:
            skips.skip_all(f'cannot read it ({e.strerror or e})')


#: The most of such a file read, and of its lines kept.
MAX_LINES_BYTES, MAX_LINES = 2**16, 100


def read_lines(path: str, skips: Skips) -> List[str]:
    """The printable lines of a small text file (at most
    :data:`MAX_LINES`); none, told to ``skips``, where it cannot be read."""
    f = _open(path, skips)
    if f is None:
        return []
    with f:
        try:
            data = f.read(MAX_LINES_BYTES + 1)
        except OSError as e:
            skips.skip_all(f'cannot read it ({e.strerror or e})')
            return []
    try:
        text = data[:MAX_LINES_BYTES].decode('utf-8')
    except UnicodeDecodeError:
        skips.skip_all('not UTF-8 text')
        return []
    lines = [''.join(c if c.isprintable() else ' ' for c in line)[:300]
             for line in text.splitlines() if line.strip()]
    return lines[:MAX_LINES]


def read_json(path: str, skips: Skips) -> Optional[Any]:
    """The document of a JSON file, or None (told to ``skips``) where it
    cannot be read or is not JSON."""
    f = _open(path, skips)
    if f is None:
        return None
    with f:
        try:
            data = f.read()
        except OSError as e:
            skips.skip_all(f'cannot read it ({e.strerror or e})')
            return None
    doc, why = _decode(data)
    if why is not None:
        skips.skip_all(why)
    return doc


# ---------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------


@dataclass
class Run:
    """What one work dir holds."""
    name: str
    losses: List[Tuple[int, float]] = field(default_factory=list)
    evals: List[Tuple[int, Dict[str, float]]] = field(default_factory=list)
    test: Optional[Dict[str, float]] = None
    #: What ``--resume-with-config`` took from the config, by resume.
    overrides: List[str] = field(default_factory=list)

    @property
    def final(self) -> Optional[Dict[str, float]]:
        """The test metrics if there are any, else the last validation."""
        if self.test is not None:
            return self.test
        return self.evals[-1][1] if self.evals else None


def read_run(work_dir: str, name: Optional[str] = None) -> Run:
    """Collect the losses and COCO metrics of one work dir.

    Malformed records are skipped, with a warning per file (:func:`warn`).

    Raises:
        ReportError: No such directory, no MMEngine logs in it, or nothing
            valid in them.
    """
    if not osp.isdir(work_dir):
        raise ReportError(f'{work_dir}: no such work dir')
    run = Run(name or osp.basename(osp.normpath(work_dir)))
    root = glob.escape(work_dir)  # a '[' in a folder name is no pattern
    scalars = sorted(
        glob.glob(osp.join(root, '*', 'vis_data', 'scalars.json')))
    tests = sorted(glob.glob(osp.join(root, '*', '*.json')))
    if not scalars and not tests:
        raise ReportError(
            f'{work_dir}: no MMEngine logs (expected <timestamp>/vis_data/'
            'scalars.json from tools/train.py or <timestamp>/<timestamp>'
            '.json from tools/test.py)')
    skipped = False
    epoch_end: Dict[int, int] = {}  # epoch -> its last iteration
    evals = []
    for path in scalars:  # timestamps sort in time order; resumes append
        with Skips(path) as skips:
            for rec in read_records(path, skips):
                if rec.loss is not None:
                    run.losses.append((rec.step, rec.loss))
                    if rec.epoch is not None:
                        epoch_end[rec.epoch] = max(
                            epoch_end.get(rec.epoch, 0), rec.step)
                elif rec.coco:
                    evals.append((rec.step, rec.metrics))
        skipped = skipped or bool(skips)
    # MMEngine logs validation metrics by epoch in epoch-based runs (its
    # LoggerHook default): put them at that epoch's last iteration, on the
    # same axis as the losses.
    run.evals = [(epoch_end.get(s, s) if epoch_end else s, m)
                 for s, m in evals]
    for path in tests:
        with Skips(path) as skips:
            for rec in read_records(path, skips):
                if rec.coco:
                    run.test = rec.metrics
        skipped = skipped or bool(skips)
    for path in sorted(glob.glob(osp.join(root, '*', OVERRIDES_FILE))):
        with Skips(path) as skips:
            run.overrides += read_lines(path, skips)
    if skipped and not (run.losses or run.evals or run.test is not None):
        raise ReportError(f'{work_dir}: nothing valid in its MMEngine logs '
                          '(see the warnings above)')
    return run


def _fmt(value: Optional[float]) -> str:
    if value is None or value < 0:
        return '-'
    return f'{100 * value:.1f}'


def markdown_table(runs: Sequence[Run]) -> str:
    """The paper-style table: AP, AP50, AP75, APs, APm, APl per task (%)."""
    tasks = [
        t for t in TASKS if any(r.final and f'coco/{t}_{c}' in r.final
                                for r in runs for c in COLUMNS)
    ] or ['bbox']
    head = ['run'] + [
        f'{"box" if t == "bbox" else "mask"} {h}' for t in tasks
        for h in HEADERS
    ]
    lines = [
        '| ' + ' | '.join(head) + ' |',
        '|' + '|'.join(['---'] + ['---:'] * (len(head) - 1)) + '|'
    ]
    for run in runs:
        m = run.final or {}
        cells = [_fmt(m.get(f'coco/{t}_{c}')) for t in tasks for c in COLUMNS]
        lines.append('| ' + ' | '.join([run.name] + cells) + ' |')
    overrides = [(r.name, line) for r in runs for line in r.overrides]
    if overrides:
        lines += ['', "Resumed with the config's settings "
                  '(`--resume-with-config`):']
        lines += [f'- {name}: {line}' for name, line in overrides]
    return '\n'.join(lines)


def plot_curves(runs: Sequence[Run], out_file: str) -> None:
    """Training loss and validation AP against iteration, into a PNG."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_ap) = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        if run.losses:
            steps, losses = zip(*run.losses)
            ax_loss.plot(steps, losses, label=run.name)
        for task, style in (('bbox', '-o'), ('segm', '--s')):
            pts = [(s, m[f'coco/{task}_mAP']) for s, m in run.evals
                   if f'coco/{task}_mAP' in m]
            if pts:
                xs, ys = zip(*pts)
                ax_ap.plot(
                    xs, [100 * y for y in ys],
                    style,
                    label=f'{run.name} {task}')
    ax_loss.set(title='training loss', xlabel='iteration', ylabel='loss')
    ax_ap.set(title='COCO AP (validation)', xlabel='iteration', ylabel='AP')
    for ax in (ax_loss, ax_ap):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_file, dpi=100)
    plt.close(fig)
