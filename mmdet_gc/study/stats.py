"""The statistics of a paired GC study: pure functions of its runs.

Per metric, the paired difference of each arm to the base arm with a 95% t
interval and a paired t-test (:func:`paired_stats`), with failed and
diverged runs counted and kept in the statistics (:func:`summarize`); over
more than one learning rate, the sweep (:func:`sweep`). The runs come from
:func:`~.reading.read_study`; :mod:`.writing` writes the report.
"""
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .arms import Arm
from .reading import METRICS, RunResult, warn


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
    """The mean and the sample std (``nan`` where undefined)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    std = math.sqrt(sum(
        (v - mean)**2 for v in values) / (n - 1)) if n > 1 else math.nan
    return mean, std


def partner(arm: str, base: str = 'base') -> str:
    """The arm that ``arm`` pairs with: ``base`` at the same lr."""
    lr = Arm.from_name(arm).lr
    return base if lr is None else f'{base}_lr{lr:g}'


def summarize(results: List[RunResult],
              base: str = 'base',
              config_lr: Optional[float] = None,
              say: Callable[[str], None] = warn) -> dict:
    """Per arm: mean and std of every metric, status counts, the shift
    curve and the drift; per other arm and metric: :func:`paired_stats`
    against ``base`` at the same lr (:func:`partner`) over the seeds both
    have; over more than one lr, the :func:`sweep` (``config_lr``: the lr
    of the arms without one of their own; ``say``: where its notes go)."""

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
    out['sweep'] = sweep(results, out, base, config_lr, say)
    return out


#: The two metrics of the sweep: box and mask AP.
SWEEP_METRICS = dict(box='coco/bbox_mAP', mask='coco/segm_mAP')


def sweep(results: List[RunResult],
          summary: dict,
          base: str = 'base',
          config_lr: Optional[float] = None,
          say: Callable[[str], None] = warn) -> Optional[dict]:
    """A learning-rate sweep: each arm (``base``, each GC optimizer) at
    every lr it ran.

    Per arm and lr: runs, collapsed runs (diverged or failed) and box /
    mask AP mean ± std over every seed (mask AP where the study has it);
    per GC arm and lr, the paired difference to ``base`` at that lr (box
    and mask AP over every seed, and box AP over the seeds where both
    trained), with its 95% interval; per arm, the largest lr up to which it
    trained on every seed of the study (``stable``: at that lr and at each
    smaller one it ran, all the seeds, none collapsed).

    Two arms that ran one family at one lr (as the lr prints) are one
    cell: the first is shown, and ``say`` is told.

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
            say(f'arms {cells[key]} and {arm} both ran {parsed.family} at '
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
