"""Paired-run report: the paper-style COCO table and curves of work dirs.

Gradient Centralization: Yong et al., ECCV 2020 (arXiv:2004.01461). Compare
a baseline and a GC run trained with the same config, e.g.::

    python tools/train.py CONFIG --work-dir work_dirs/sgd
    python tools/train.py CONFIG --gc SGD_GC --work-dir work_dirs/sgd_gc
    python tools/gc_report.py work_dirs/sgd work_dirs/sgd_gc --plot gc.png

It reads what MMEngine writes: ``<work_dir>/<timestamp>/vis_data/
scalars.json`` (training losses, validation metrics) and
``<work_dir>/<timestamp>/<timestamp>.json`` (``tools/test.py`` metrics).
"""
import glob
import json
import os.path as osp
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

#: Columns of the paper's tables, per task, as mmdet's CocoMetric names them.
COLUMNS = ('mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l')
HEADERS = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl')
TASKS = ('bbox', 'segm')


class ReportError(ValueError):
    """A work dir that cannot be reported, with the reason."""


@dataclass
class Run:
    """What one work dir holds."""
    name: str
    losses: List[Tuple[int, float]] = field(default_factory=list)
    evals: List[Tuple[int, Dict[str, float]]] = field(default_factory=list)
    test: Optional[Dict[str, float]] = None

    @property
    def final(self) -> Optional[Dict[str, float]]:
        """The test metrics if there are any, else the last validation."""
        if self.test:
            return self.test
        return self.evals[-1][1] if self.evals else None


def _json_lines(path: str) -> List[dict]:
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut off by a crash
    return out


def _has_coco(record: dict) -> bool:
    return any(k.startswith('coco/') for k in record)


def read_run(work_dir: str, name: Optional[str] = None) -> Run:
    """Collect the losses and COCO metrics of one work dir.

    Raises:
        ReportError: No such directory, or no MMEngine logs in it.
    """
    if not osp.isdir(work_dir):
        raise ReportError(f'{work_dir}: no such work dir')
    run = Run(name or osp.basename(osp.normpath(work_dir)))
    scalars = sorted(
        glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    tests = sorted(glob.glob(osp.join(work_dir, '*', '*.json')))
    if not scalars and not tests:
        raise ReportError(
            f'{work_dir}: no MMEngine logs (expected <timestamp>/vis_data/'
            'scalars.json from tools/train.py or <timestamp>/<timestamp>'
            '.json from tools/test.py)')
    epoch_end: Dict[int, int] = {}  # epoch -> its last iteration
    evals = []
    for path in scalars:  # timestamps sort in time order; resumes append
        for rec in _json_lines(path):
            step = int(rec.get('step', rec.get('iter', 0)))
            if 'loss' in rec:
                run.losses.append((step, float(rec['loss'])))
                if 'epoch' in rec:
                    epoch = int(rec['epoch'])
                    epoch_end[epoch] = max(epoch_end.get(epoch, 0), step)
            elif _has_coco(rec):
                evals.append((step, rec))
    # MMEngine logs validation metrics by epoch in epoch-based runs (its
    # LoggerHook default): put them at that epoch's last iteration, on the
    # same axis as the losses.
    run.evals = [(epoch_end.get(s, s) if epoch_end else s, rec)
                 for s, rec in evals]
    for path in tests:
        for rec in _json_lines(path):
            if _has_coco(rec):
                run.test = rec
    return run


def _fmt(value: Optional[float]) -> str:
    if value is None or value < 0:
        return '-'
    return f'{100 * value:.1f}'


def markdown_table(runs: Sequence[Run]) -> str:
    """The paper-style table: AP, AP50, AP75, APs, APm, APl per task (%)."""
    tasks = [
        t for t in TASKS if any(r.final and f'coco/{t}_mAP' in r.final
                                for r in runs)
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
