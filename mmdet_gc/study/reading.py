"""Reading a run's or a study's work dir, as untrusted input.

What MMEngine writes: ``<work_dir>/<timestamp>/vis_data/scalars.json``
(training losses, validation metrics), ``<work_dir>/<timestamp>/
<timestamp>.json`` (``tools/test.py`` metrics), the dumped config
(``<work_dir>/<timestamp>/vis_data/config.py``, ``<work_dir>/<name>.py``)
and what ``--resume-with-config`` took from the config
(``<work_dir>/<timestamp>/resumed_with_config.txt``); a study's folders
(:mod:`.arms`) and the drift of its weight row means. What is malformed is
skipped, with one warning per file or folder (:class:`Skips`); what is
valid is read (:func:`read_run`, :func:`read_study`). A config is parsed,
never run.
"""
import ast
import glob
import json
import math
import os
import os.path as osp
import re
import sys
from dataclasses import dataclass, field
from typing import (Any, BinaryIO, Callable, Dict, Iterator, List, Optional,
                    Tuple)

from ..engine.hooks.resumable_checkpoint_hook import OVERRIDES_FILE
from ..engine.hooks.row_mean_drift_hook import DRIFT_FILE
from .arms import ARM_LR, SEED_DIR, Arm

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


def warn(message: str) -> None:
    """Print ``warning: MESSAGE`` to stderr."""
    print(f'warning: {message}', file=sys.stderr)


class Skips:
    """What was skipped in one file or folder, told in one warning when the
    ``with`` block ends, e.g. ``warning: skipped 2 malformed lines in PATH:
    not a JSON object (line 3, line 7)``.

    Args:
        path (str): The file or folder, named in the warning.
        kind (str): What the skipped items are (``'malformed'``,
            ``'undrawable'``...).
    """
    #: How many items of one reason the warning lists.
    SHOWN = 5

    def __init__(self, path: str, kind: str = 'malformed') -> None:
        self.path = path
        self.kind = kind
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
        what = ' and '.join(f'{n} {self.kind} {u}{"s" if n > 1 else ""}'
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


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------


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


def _read(path: str, skips: Skips, limit: int = -1) -> Optional[bytes]:
    """The bytes of a regular file (at most ``limit + 1`` where ``limit``
    is given); None, told to ``skips``, where it cannot be read."""
    f = _open(path, skips)
    if f is None:
        return None
    with f:
        try:
            return f.read(limit + 1 if limit >= 0 else -1)
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
    data = _read(path, skips, MAX_LINES_BYTES)
    if data is None:
        return []
    try:
        text = data[:MAX_LINES_BYTES].decode('utf-8')
    except UnicodeDecodeError:
        skips.skip_all('not UTF-8 text')
        return []
    lines = [
        ''.join(c if c.isprintable() else ' ' for c in line)[:300]
        for line in text.splitlines() if line.strip()
    ]
    return lines[:MAX_LINES]


def read_json(path: str, skips: Skips) -> Optional[Any]:
    """The document of a JSON file, or None (told to ``skips``) where it
    cannot be read or is not JSON."""
    data = _read(path, skips)
    if data is None:
        return None
    doc, why = _decode(data)
    if why is not None:
        skips.skip_all(why)
    return doc


def last_checkpoint(run: str) -> Optional[str]:
    """The checkpoint that a run's ``last_checkpoint`` names, if it is a
    file."""
    path = osp.join(run, 'last_checkpoint')
    if not osp.isfile(path):
        return None
    with Skips(path) as skips:
        data = _read(path, skips, 4096)
        try:
            ckpt = (data or b'')[:4096].decode().strip()
        except UnicodeDecodeError:
            skips.skip_all('not UTF-8 text')
            return None
    # isfile: False for a path with a NUL byte too.
    return ckpt if ckpt and osp.isfile(ckpt) else None


# ---------------------------------------------------------------------------
# The optimizer and lr of a run, from its dumped config: parsed, not run.
# ---------------------------------------------------------------------------

#: The most of a dumped config read (MMEngine's are tens of KB).
MAX_CONFIG_BYTES = 2**20
#: An optimizer type as the report shows it: a registry name.
OPTIMIZER_NAME = re.compile(r'[A-Za-z_][\w.:]{0,59}')


def _child(node: Optional[ast.AST], key: str) -> Optional[ast.AST]:
    """The value node of ``key`` in a ``dict(...)`` or ``{...}`` node."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
            and node.func.id == 'dict':
        found = [k.value for k in node.keywords if k.arg == key]
    elif isinstance(node, ast.Dict):
        found = [
            v for k, v in zip(node.keys, node.values)
            if isinstance(k, ast.Constant) and k.value == key
        ]
    else:
        return None
    return found[-1] if found else None


def _leaf(node: Optional[ast.AST]) -> Any:
    """The value of a literal node (a dotted name as its text: a class in a
    pure-Python config); None for anything else."""
    if node is None:
        return None
    parts = []
    while isinstance(node, ast.Attribute):
        parts.insert(0, node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return '.'.join([node.id] + parts)
    if parts:
        return None
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def _optim_wrapper(path: str, skips: Skips) -> Optional[ast.AST]:
    """The node of the last top-level ``optim_wrapper = ...`` of a dumped
    config; None where it has none or cannot be parsed."""
    data = _read(path, skips, MAX_CONFIG_BYTES)
    if data is None:
        return None
    if len(data) > MAX_CONFIG_BYTES:
        skips.skip_all(f'larger than {MAX_CONFIG_BYTES} bytes')
        return None
    try:
        tree = ast.parse(data.decode('utf-8'))
    except (UnicodeDecodeError, SyntaxError, ValueError, MemoryError,
            RecursionError):
        skips.skip_all('not a Python config')
        return None
    found = [
        n.value for n in tree.body if isinstance(n, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == 'optim_wrapper'
            for t in n.targets)
    ]
    return found[-1] if found else None


def _optimizer(node: ast.AST,
               skips: Skips) -> Tuple[Optional[str], Optional[float]]:
    """The optimizer type (``+ GC`` under ``GCOptimWrapperConstructor``)
    and lr of an ``optim_wrapper`` node."""
    optimizer = _child(node, 'optimizer')
    name, lr = _leaf(_child(optimizer, 'type')), None
    if name is not None and not (isinstance(name, str)
                                 and OPTIMIZER_NAME.fullmatch(name)):
        skips.add('value', 'optim_wrapper.optimizer.type not a name', 'type')
        name = None
    if name and _leaf(_child(node, 'constructor')) == \
            'GCOptimWrapperConstructor':
        on = _leaf(_child(_child(node, 'gc'), 'on'))
        name += ' + GC on the update' if on == 'update' else ' + GC'
    raw = _child(optimizer, 'lr')
    if raw is not None:
        lr = as_real(_leaf(raw))
        if lr is None or not 0 < lr < math.inf:
            skips.add('value', 'optim_wrapper.optimizer.lr not a number > 0',
                      'lr')
            lr = None
    return name, lr


def read_settings(work_dir: str) -> Tuple[Optional[str], Optional[float]]:
    """The optimizer type and lr of a run: from its newest dumped config
    (``<timestamp>/vis_data/config.py``, else ``<work_dir>/*.py``); None
    for what no config gives."""
    root = glob.escape(work_dir)
    paths = sorted(
        glob.glob(osp.join(root, '*', 'vis_data', 'config.py')),
        reverse=True) + sorted(glob.glob(osp.join(root, '*.py')))
    for path in paths:
        with Skips(path) as skips:
            node = _optim_wrapper(path, skips)
            if node is not None:
                return _optimizer(node, skips)
    return None, None


# ---------------------------------------------------------------------------
# A run
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
    #: The optimizer type and lr of its config, where it has them.
    optimizer: Optional[str] = None
    lr: Optional[float] = None

    @property
    def final(self) -> Optional[Dict[str, float]]:
        """The test metrics if there are any, else the last validation."""
        if self.test is not None:
            return self.test
        return self.evals[-1][1] if self.evals else None


def read_run(work_dir: str,
             name: Optional[str] = None,
             settings: bool = True) -> Run:
    """Collect the losses and COCO metrics of one work dir, and (where
    ``settings``) its optimizer and lr (:func:`read_settings`).

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
    if settings:
        run.optimizer, run.lr = read_settings(work_dir)
    return run


# ---------------------------------------------------------------------------
# A study: WORK/<arm>/seed<N>/ (:mod:`.arms`)
# ---------------------------------------------------------------------------


@dataclass
class RunResult:
    """What the report knows of one run of a study."""
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
        losses = read_run(run, settings=False).losses
    except ReportError:
        pass
    for name, offset in _subdirs(run, 'shift', _offset,
                                 'shift<OFFSET>, OFFSET a finite number'):
        try:
            final = read_run(osp.join(run, name), settings=False).test
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
    folder (:func:`warn`).

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
