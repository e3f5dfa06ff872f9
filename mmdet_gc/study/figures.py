"""The figures of the reports: the curves of a few runs (``mmdet-gc
report``), a study's figure and its learning-rate sweep's.

Every figure gives a run or an arm one colour in all its panels
(:func:`colours`). A finite value too large to draw (beyond
:data:`DRAWABLE`) is left out, with one warning per figure (NaN and
infinite losses are gaps, as a diverged run leaves them). An axis over a
single value gets a margin as large as the value (an AP axis: 0 to 100).
Each function returns its :class:`~matplotlib.figure.Figure` (no pyplot:
nothing is shown) and saves it as a PNG where ``out`` is given.
"""
import math
from typing import (IO, TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple,
                    Union)

from .reading import Run, RunResult, Skips
from .stats import SWEEP_METRICS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.transforms import Bbox

#: The largest magnitude drawn: below it, matplotlib's limits and margins
#: and the std band's squares stay finite (1e308 overflows them).
DRAWABLE = 1e100
#: An AP axis over a single value, in %.
AP_RANGE = (0., 100.)
#: Where a figure goes: a path, a binary file, or nowhere.
Out = Optional[Union[str, IO[bytes]]]


def colours(names: Sequence[str]) -> Dict[str, str]:
    """One colour per name (matplotlib's colour cycle, in order), for every
    panel of a figure."""
    from matplotlib import rcParams
    cycle = rcParams['axes.prop_cycle'].by_key()['color']
    return {
        n: cycle[i % len(cycle)]
        for i, n in enumerate(dict.fromkeys(names))
    }


def _label(text: str) -> str:
    """``text`` as matplotlib shows it verbatim: a ``$`` in a run or arm
    name starts no formula (which may not parse)."""
    return text.replace('$', r'\$')


def _figure(panels: int,
            size: Tuple[float, float],
            sharex: bool = False) -> Tuple['Figure', List['Axes']]:
    """A figure of ``panels`` side by side, each ``size`` inches."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(size[0] * panels, size[1]))
    return fig, list(fig.subplots(1, panels, sharex=sharex))


def _drawable(value: float, skips: Skips, what: str, item: str) -> float:
    """``value``, or NaN (a gap) where it is finite and beyond
    :data:`DRAWABLE`, told to ``skips``."""
    if math.isfinite(value) and abs(value) > DRAWABLE:
        skips.add('value', f'{what} beyond ±{DRAWABLE:g}', item)
        return math.nan
    return value


def _settle(ax: 'Axes',
            axes: str = 'xy',
            ap: bool = False,
            lim: Optional['Bbox'] = None) -> None:
    """Limits of an axis over a single value (of ``lim``, default the data
    of ``ax``): ``value ± value`` (±1 at 0), or :data:`AP_RANGE` for an AP
    in it; matplotlib's own ±5% reads as a range of values."""
    lim = ax.dataLim if lim is None else lim
    for axis in axes:
        lo, hi = lim.intervalx if axis == 'x' else lim.intervaly
        if not (math.isfinite(lo) and lo == hi):
            continue
        span = (lo - abs(lo), lo + abs(lo)) if lo else (-1., 1.)
        if ap and axis == 'y' and AP_RANGE[0] <= lo <= AP_RANGE[1]:
            span = AP_RANGE
        (ax.set_xlim if axis == 'x' else ax.set_ylim)(*span)


def _finish(fig: 'Figure', out: Out) -> 'Figure':
    fig.tight_layout()
    if out is not None:
        fig.savefig(out, dpi=100, format='png')
    return fig


def _name(out: Out, name: Optional[str]) -> str:
    """The figure, as its warning names it."""
    return name or (out if isinstance(out, str) else 'the figure')


def plot_curves(runs: Sequence[Run],
                out: Out = None,
                name: Optional[str] = None) -> 'Figure':
    """Training loss and validation AP against iteration: one colour per
    run in both panels; box AP solid with dots, mask AP dashed with
    squares.

    Args:
        runs (Sequence[Run]): The runs, from :func:`~.reading.read_run`.
        out (str | IO[bytes], optional): Where to save it as a PNG.
        name (str, optional): The figure, as a warning names it (default:
            ``out``).

    Returns:
        Figure: The figure.
    """
    # One iteration axis: a validation sits under its training loss.
    fig, (ax_loss, ax_ap) = _figure(2, (5.5, 4), sharex=True)
    colour = colours([r.name for r in runs])
    with Skips(_name(out, name), 'undrawable') as skips:
        for run in runs:
            if run.losses:
                xs = [s for s, _ in run.losses]
                ys = [
                    _drawable(y, skips, 'loss', f'{run.name} step {s}')
                    for s, y in run.losses
                ]
                ax_loss.plot(
                    xs,
                    ys,
                    marker='o' if len(xs) == 1 else None,
                    color=colour[run.name],
                    label=_label(run.name))
            for task, style in (('bbox', '-o'), ('segm', '--s')):
                # COCO's -1 (no objects of a kind) is no AP.
                pts = [(s, 100 * m[f'coco/{task}_mAP']) for s, m in run.evals
                       if m.get(f'coco/{task}_mAP', -1) >= 0]
                if pts:
                    ax_ap.plot(
                        *zip(*pts),
                        style,
                        color=colour[run.name],
                        label=_label(f'{run.name} '
                                     f'{"box" if task == "bbox" else "mask"}'))
    ax_loss.set(title='training loss', xlabel='iteration', ylabel='loss')
    ax_ap.set(
        title='COCO AP (validation)', xlabel='iteration', ylabel='AP (%)')
    from matplotlib.transforms import Bbox
    _settle(ax_loss, 'x', lim=Bbox.union([ax_loss.dataLim, ax_ap.dataLim]))
    _settle(ax_loss, 'y')
    _settle(ax_ap, 'y', ap=True)
    for ax in (ax_loss, ax_ap):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    return _finish(fig, out)


def _loss_band(ax: 'Axes', runs: List[RunResult], colour: str, arm: str,
               skips: Skips) -> None:
    """The mean ± std of the losses of ``runs`` over their common
    iterations."""
    import numpy as np
    n = min(len(r.losses) for r in runs)
    it = [i for i, _ in runs[0].losses[:n]]
    v = np.array([[
        _drawable(x, skips, 'loss', f'{arm} seed {r.seed} step {i}')
        for i, x in r.losses[:n]
    ] for r in runs])
    with np.errstate(all='ignore'):  # an infinite loss: NaN, a gap
        m, s = v.mean(0), v.std(0)
        ax.plot(it, m, color=colour, label=_label(arm))
        ax.fill_between(it, m - s, m + s, color=colour, alpha=0.2)


def plot_study(results: List[RunResult],
               summary: dict,
               out: Out = None,
               name: Optional[str] = None) -> 'Figure':
    """Loss (mean ± std band over seeds), box AP under brightness offsets,
    and box / mask AP per seed as paired dots; one colour per arm in every
    panel.

    Args:
        results (list[RunResult]): The runs, from
            :func:`~.reading.read_study`.
        summary (dict): Their :func:`~.stats.summarize`.
        out (str | IO[bytes], optional): Where to save it as a PNG.
        name (str, optional): The figure, as a warning names it.

    Returns:
        Figure: The figure.
    """
    arms = list(summary['arms'])
    colour = colours(arms)
    fig, axes = _figure(4, (5, 4.5))
    with Skips(_name(out, name), 'undrawable') as skips:
        for arm in arms:
            runs = [r for r in results if r.arm == arm and r.losses]
            if runs:
                _loss_band(axes[0], runs, colour[arm], arm, skips)
            shift = summary['arms'][arm]['shift_bbox_mAP']
            if shift:
                xs = sorted(shift, key=float)
                axes[1].plot([
                    _drawable(float(x), skips, 'offset', f'{arm} {x}')
                    for x in xs
                ], [100 * shift[x] for x in xs],
                             'o-',
                             color=colour[arm],
                             label=_label(arm))
    axes[0].set(title='training loss (mean ± std)', xlabel='iteration')
    axes[1].set(
        title='box AP under brightness offset',
        xlabel='offset (pixel values)',
        ylabel='AP (%)')
    seeds = sorted({r.seed for r in results})
    for ax, metric, title in ((axes[2], 'coco/bbox_mAP', 'box AP per seed'),
                              (axes[3], 'coco/segm_mAP', 'mask AP per seed')):
        for arm_i, arm in enumerate(arms):
            ys = [
                100 * r.metrics.get(metric, 0.) for r in results
                if r.arm == arm
            ]
            ax.scatter(
                [arm_i] * len(ys),
                ys,
                color=colour[arm],
                zorder=3,
                label=_label(arm))
        for seed in seeds:  # a line joins the runs of one seed
            pts = [(i, 100 * r.metrics.get(metric, 0.))
                   for i, arm in enumerate(arms) for r in results
                   if r.arm == arm and r.seed == seed]
            ax.plot(*zip(*pts), color='grey', alpha=0.5, zorder=1)
        ax.set(title=title, ylabel='AP (%)', xticks=range(len(arms)))
        ax.set_xticklabels([_label(a) for a in arms], rotation=20)
    for i, ax in enumerate(axes):
        _settle(ax, 'xy' if i < 2 else 'y', ap=i > 0)
    for ax in axes[:2]:
        if ax.lines:
            ax.legend()
    return _finish(fig, out)


def plot_sweep(results: List[RunResult],
               sweep: dict,
               out: Out = None,
               name: Optional[str] = None) -> 'Figure':
    """Collapse rate, box AP and mask AP against lr (log scale), one colour
    per arm in every panel; every seed a dot (a cross where it collapsed),
    the mean a line. ``results``, ``out``, ``name`` and the figure
    returned: as :func:`plot_study`'s; ``sweep``: their
    :func:`~.stats.sweep`.
    """
    families = list(sweep['arms'])
    colour = colours(families)
    fig, axes = _figure(3, (5, 4.5))
    lrs = []
    with Skips(_name(out, name), 'undrawable') as skips:
        for lr in sweep['lrs']:  # on a log axis
            if 1 / DRAWABLE <= lr <= DRAWABLE:
                lrs.append(lr)
            else:
                skips.add('value', f'lr beyond {1 / DRAWABLE:g} to '
                          f'{DRAWABLE:g}', f'{lr:g}')
    for i, family in enumerate(families):
        # Side by side at each lr: the arms' dots do not hide each other.
        nudge = 1 + 0.04 * (i - (len(families) - 1) / 2)
        cells = {
            lr: c
            for lr, c in sweep['arms'][family].items() if float(lr) in lrs
        }
        axes[0].plot([float(lr) for lr in cells],
                     [c['collapsed'] / c['n'] for c in cells.values()],
                     'o-',
                     color=colour[family],
                     label=_label(family))
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
                        color=colour[family],
                        alpha=0.6,
                        s=20,
                        marker=marker)
            means = [(float(lr), 100 * c[key]['mean'])
                     for lr, c in cells.items() if c[key]['n']]
            if means:
                ax.plot(
                    *zip(*means),
                    '-',
                    color=colour[family],
                    label=_label(family))
    axes[0].set(
        title='collapsed runs (diverged or failed)',
        ylabel='fraction of seeds',
        ylim=(-0.05, 1.05))
    for ax, task in zip(axes[1:], ('box', 'mask')):
        ax.set(
            title=f'{task} AP (every seed, x: collapsed; line: mean)',
            ylabel='AP (%)')
        _settle(ax, 'y', ap=True)
    for ax in axes:
        if lrs:
            ax.set_xscale('log')
            ax.set_xticks(lrs)
            ax.set_xticklabels([f'{x:g}' for x in lrs])
        ax.minorticks_off()
        ax.set_xlabel('learning rate')
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    return _finish(fig, out)
