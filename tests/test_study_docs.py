"""The study figures quoted in docs/en/studies.md, checked against a stored
report.

``tests/data/study_report.json`` is a report as ``mmdet-gc study`` writes
it (``report.json``). The work dir of the measured study is not in the
repository, so its per-run values are a reconstruction: box and mask AP
per seed at mmdet's three decimals, brightness-shift APs and row-mean
drifts, chosen (starting from the per-seed dots of the doc's figures) so
that the study code gives every figure the doc quotes; other metrics are
absent. It checks that the quoted figures agree with each other as the
study code computes them and that none is edited alone, not that they are
the measured ones: where ``work_dirs/study/report.json`` exists (``make
study study-lr``), the doc is checked against it too.
"""
import json
import math
import os.path as osp
import re
from typing import List, Tuple

from mmdet_gc.study import read_study, summarize

from tool_helpers import ROOT

DOC = osp.join(ROOT, 'docs', 'en', 'studies.md')
STORED = osp.join(ROOT, 'tests', 'data', 'study_report.json')
MEASURED = osp.join(ROOT, 'work_dirs', 'study', 'report.json')
STUDY = '## Miniature paired study'
SWEEP = '## Learning-rate sweep of the miniature study'
WORDS = dict(none=0, one=1, two=2, three=3, four=4, five=5)


def rebuild(work, report: dict) -> None:
    """A study's work dir with the runs of ``report``: each run's test
    metrics per offset, its row-mean drift and how training ended."""
    for r in report['runs']:
        run = work / r['arm'] / f'seed{r["seed"]}'
        vis = run / '20260101_000000' / 'vis_data'
        vis.mkdir(parents=True)
        (vis / 'scalars.json').write_text(''.join(
            json.dumps(dict(iter=i, step=i, loss=loss)) + '\n'
            for i, loss in ((1, 2.0), (2, 1.5))))
        if r['status'] == 'failed':
            (run / 'train.failed').write_text('')
            continue
        (run / 'train.done').write_text('')
        for offset, box in r['shifts'].items():
            out = run / f'shift{offset}' / '20260101_000001'
            out.mkdir(parents=True)
            metrics = r['metrics'] if offset == '0' else {'coco/bbox_mAP': box}
            (out /
             '20260101_000001.json').write_text(json.dumps(metrics) + '\n')
        if r['drift'] is not None:
            layers = {
                f'{k}.weight': dict(ndim=4 if k == 'conv' else 2, max_drift=v)
                for k, v in r['drift'].items()
            }
            (run / 'row_mean_drift.json').write_text(
                json.dumps(dict(iter=250, layers=layers)))


def _same(a, b) -> bool:
    """Equal as JSON holds them, NaN equal to NaN."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def test_the_stored_report_is_what_the_study_code_makes(tmp_path):
    """Its runs, read back from a work dir and summarized, give its
    statistics."""
    stored = json.load(open(STORED))
    rebuild(tmp_path, stored)
    results = read_study(str(tmp_path), stored['threshold'])
    assert [(r.arm, r.seed, r.status) for r in results] == \
        [(r['arm'], r['seed'], r['status']) for r in stored['runs']]
    summary = summarize(results, stored['base'], stored['sweep']['config_lr'])
    made = json.loads(json.dumps(summary, default=str))
    for key in ('arms', 'paired', 'pairs', 'sweep'):
        assert _same(made[key], stored[key]), key


# ---------------------------------------------------------------------------
# The doc against a report
# ---------------------------------------------------------------------------


def _as_doc(quoted: str, value: float, scale: float = 100) -> str:
    """``value * scale`` written as ``quoted`` writes a number: its
    decimals, its sign, or its ``1.2e-1`` form."""
    if 'e' in quoted:
        mantissa, exp = f'{value * scale:.{len(quoted.split("e")[0]) - 2}e}' \
            .split('e')
        return f'{mantissa}e{int(exp)}'
    decimals = len(quoted.split('.')[1]) if '.' in quoted else 0
    sign = '+' if quoted[0] == '+' else ''
    return f'{value * scale:{sign}.{decimals}f}'


def _check(quoted: str, value: float, scale: float = 100) -> None:
    assert quoted == _as_doc(quoted, value, scale), (quoted, value)


def _section(text: str, start: str, end: str = None) -> Tuple[int, int]:
    begin = text.index(start)
    return begin, text.index(end, begin) if end else len(text)


def _rows(text: str, span: Tuple[int, int],
          head: str) -> List[Tuple[Tuple[int, int], List[str]]]:
    """The body rows of the table in ``span`` whose header starts with
    ``head``: each row's span in ``text`` and its cells."""
    begin = text.index('\n' + head, *span) + 1
    rows, at = [], text.index('\n', text.index('\n', begin) + 1) + 1
    while text.startswith('|', at):
        end = text.index('\n', at)
        rows.append(
            ((at, end), [c.strip() for c in text[at:end].split('|')[1:-1]]))
        at = end + 1
    return rows


def _find(text: str, span: Tuple[int, int], pattern: str) -> re.Match:
    """``pattern`` in ``span``, its spaces any white space (lines wrap)."""
    match = re.compile(pattern.replace(' ', r'\s+')).search(text, *span)
    assert match is not None, f'not in the doc: {pattern}'
    return match


def _interval(cell: str, st: dict) -> None:
    """``+1.2 [-0.3, +2.7]`` against a :func:`paired_stats`."""
    match = re.fullmatch(r'(\S+) \[(\S+), (\S+)\]', cell)
    assert match, cell
    for quoted, key in zip(match.groups(), ('mean', 'ci_low', 'ci_high')):
        _check(quoted, st[key])


def _largest(drift: dict) -> float:
    return max(drift.values())


def check_doc(text: str, report: dict) -> List[Tuple[int, int]]:
    """Check every figure of the studies' sections of ``text`` (tables and
    prose) against ``report``.

    Returns:
        list[tuple[int, int]]: The spans of ``text`` checked.
    """
    arms, runs, sweep = report['arms'], report['runs'], report['sweep']
    box, mask = 'coco/bbox_mAP', 'coco/segm_mAP'
    checked = []
    study = _section(text, STUDY, SWEEP)

    def ap(cell, st):
        mean, std = cell.split(' ± ')
        _check(mean, st['mean'])
        _check(std, st['std'])

    m = _find(text, study, r'--threshold (\d\.\d+)`')
    _check(m.group(1), report['threshold'], 1)
    checked.append(m.span())
    m = _find(
        text, study, r'iterations at lr (\S+) on the synthetic shapes '
        r'\(128 px\), with torch\'s SGD \("base"\) and with SGD_GC, seeds '
        r'(\d+) to (\d+), and tests each final checkpoint plainly and with '
        r'every pixel shifted by (\S+) and (\S+) \(')
    _check(m.group(1), sweep['config_lr'], 1)
    seeds = list(range(int(m.group(2)), int(m.group(3)) + 1))
    assert all(arms[a]['seeds'] == seeds for a in arms)
    assert {'0', m.group(4),
            m.group(5).lstrip('+')} == set(arms['base']['shift_bbox_mAP'])
    checked.append(m.span())
    rows = _rows(text, study, '| arm | runs ok')
    assert [c[0].split()[0] for _, c in rows] == ['base', 'SGD_GC']
    for span, cells in rows:
        a = arms[cells[0].split()[0]]
        assert cells[1] == f'{a["ok"]} / {a["diverged"]} / {a["failed"]}'
        ap(cells[2], a['metrics'][box])
        ap(cells[3], a['metrics'][mask])
        for quoted, offset in zip(cells[4].split(' / '), ('-40', '0', '40')):
            _check(quoted, a['shift_bbox_mAP'][offset])
        for quoted, kind in zip(cells[5].split(' / '), ('conv', 'fc')):
            _check(quoted, a['max_row_mean_drift'][kind], 1)
        checked.append(span)

    m = _find(
        text, study, r'Paired difference SGD_GC - base over the (\d+) seeds: '
        r'box AP (\S+) points, 95% CI \[(\S+), (\S+)\], p = (\S+); mask AP '
        r'(\S+), CI \[(\S+), (\S+)\], p = ([\d.]+) ')
    for metric, at in ((box, 2), (mask, 6)):
        st = report['paired']['SGD_GC'][metric]
        assert int(m.group(1)) == st['n']
        for i, key in enumerate(('mean', 'ci_low', 'ci_high')):
            _check(m.group(at + i), st[key])
        _check(m.group(at + 3), st['p'], 1)
    checked.append(m.span())

    by = {(r['arm'], r['seed']): r for r in runs}
    base = [r for r in runs if r['arm'] == 'base']
    m = _find(
        text, study, r'baseline collapsed on (\d+) of (\d+) seeds \(box AP '
        r'(\S+)% and (\S+)%\) and SGD_GC on (\w+); where the baseline '
        r'trained \(seeds ([\d, ]+)\) it scored higher than SGD_GC on (\w+) '
        r'of the (\w+),')
    collapsed = sorted(r['metrics'][box] for r in base if r['status'] != 'ok')
    assert int(m.group(1)) == len(collapsed)
    assert int(m.group(2)) == len(base)
    _check(m.group(3), collapsed[0])
    _check(m.group(4), collapsed[1])
    assert WORDS[m.group(5)] == arms['SGD_GC']['diverged'] + \
        arms['SGD_GC']['failed']
    trained = sorted(r['seed'] for r in base if r['status'] == 'ok')
    assert [int(s) for s in m.group(6).split(',')] == trained
    assert WORDS[m.group(7)] == sum(
        by[('base', s)]['metrics'][box] > by[('SGD_GC', s)]['metrics'][box]
        for s in trained)
    assert WORDS[m.group(8)] == len(trained)
    checked.append(m.span())
    m = _find(text, study,
              r'float32 rounding \((\S+), against (\S+) for SGD\)')
    _check(m.group(1), _largest(arms['SGD_GC']['max_row_mean_drift']), 1)
    _check(m.group(2), _largest(arms['base']['max_row_mean_drift']), 1)
    checked.append(m.span())
    m = _find(
        text, study, r'box AP moved by at most (\S+) points under the ±(\d+) '
        r'brightness shifts, where the baseline\'s fell by up to (\d+) points '
        r'\(seed (\d+) at \+(\d+)\)')
    offsets = ('-' + m.group(2), m.group(2))
    moved = max(
        abs(r['shifts'][o] - r['shifts']['0']) for r in runs
        if r['arm'] == 'SGD_GC' for o in offsets)
    _check(m.group(1), moved)
    fall, seed, offset = max((r['shifts']['0'] - r['shifts'][o], r['seed'], o)
                             for r in base for o in offsets)
    _check(m.group(3), fall)
    assert (int(m.group(4)), m.group(5)) == (seed, offset)
    checked.append(m.span())

    # The learning-rate sweep.
    part = _section(text, SWEEP)
    m = _find(text, part,
              r'--lr (\S+) (\S+) (\S+) --shifts 0 --threshold (\S+)`\)')
    assert [float(x) for x in m.groups()[:3]
            ] == [lr for lr in sweep['lrs'] if lr != sweep['config_lr']]
    _check(m.group(4), report['threshold'], 1)
    checked.append(m.span())
    families = list(sweep['arms'])
    rows = _rows(text, part, '| lr | base (SGD): collapsed')
    assert [c[0] for _, c in rows] == [f'{lr:g}' for lr in sweep['lrs']]
    for span, cells in rows:
        for i, family in enumerate(families):
            c = sweep['arms'][family][cells[0]]
            assert cells[1 + 3 * i] == f'{c["collapsed"]} of {c["n"]}'
            ap(cells[2 + 3 * i], c['box'])
            ap(cells[3 + 3 * i], c['mask'])
        checked.append(span)
    rows = _rows(text, part, '| lr | box AP, every seed')
    paired = sweep['paired']['SGD_GC']
    assert [c[0] for _, c in rows] == list(paired)
    for span, cells in rows:
        pair = paired[cells[0]]
        for cell, key in zip(cells[1:3], ('box', 'mask')):
            if cell.endswith(' (all collapsed)'):
                _check(cell.split()[0], pair[key]['mean'])
                assert all(sweep['arms'][f][cells[0]]['collapsed'] ==
                           sweep['arms'][f][cells[0]]['n'] for f in families)
            else:
                _interval(cell, pair[key])
        both = pair.get('box_trained')
        if cells[3] == '- (0)':
            assert both is None
        else:
            _interval(cells[3].rsplit(' (', 1)[0], both)
            assert cells[3].endswith(f' ({both["n"]})')
        checked.append(span)

    m = _find(
        text, part, r'baseline trains on every seed up to lr (\S+) and '
        r'SGD_GC up to (\S+), one doubling more; at (\S+) both collapse on '
        r'every seed')
    assert (float(m.group(1)),
            float(m.group(2))) == (sweep['stable']['base'],
                                   sweep['stable']['SGD_GC'])
    assert sweep['stable']['SGD_GC'] == 2 * sweep['stable']['base']
    assert all(sweep['arms'][f][m.group(3)]['collapsed'] == sweep['arms'][f][
        m.group(3)]['n'] for f in families)
    checked.append(m.span())
    m = _find(
        text, part, r'\((\S+) and (\S+) box AP at (\S+) and (\S+), '
        r'intervals across zero; at (\S+), on the (\w+) seeds where the '
        r'baseline trained, (\S+) with an interval of \[(\S+), (\S+)\]\)')
    for quoted, lr in ((m.group(1), m.group(3)), (m.group(2), m.group(4))):
        st = paired[lr]['box']
        _check(quoted, st['mean'])
        assert st['ci_low'] < 0 < st['ci_high']
    both = paired[m.group(5)]['box_trained']
    assert WORDS[m.group(6)] == both['n']
    for quoted, key in zip(m.groups()[6:], ('mean', 'ci_low', 'ci_high')):
        _check(quoted, both[key])
    checked.append(m.span())
    m = _find(text, part,
              r'\(largest drift (\S+), against (\S+) to (\S+) for SGD\)')
    drifts = {
        f: [
            _largest(arms[c['arm']]['max_row_mean_drift'])
            for c in sweep['arms'][f].values()
        ]
        for f in families
    }
    _check(m.group(1), max(drifts['SGD_GC']), 1)
    _check(m.group(2), min(drifts['base']), 1)
    _check(m.group(3), max(drifts['base']), 1)
    checked.append(m.span())
    return checked


def test_the_docs_study_figures_match_the_report():
    """Against the stored report; and, where ``make study study-lr`` has
    run here, against the report it measured."""
    check_doc(open(DOC).read(), json.load(open(STORED)))
    if osp.isfile(MEASURED):
        check_doc(open(DOC).read(), json.load(open(MEASURED)))


def test_editing_any_checked_figure_fails():
    """Every digit the check covers is checked: a figure edited alone (one
    digit changed) fails it."""
    text, report = open(DOC).read(), json.load(open(STORED))
    spans = check_doc(text, report)
    digits = [i for a, b in spans for i in range(a, b) if text[i].isdigit()]
    assert len(digits) > 300
    missed = []
    for i in digits:
        edited = text[:i] + str((int(text[i]) + 1) % 10) + text[i + 1:]
        try:
            check_doc(edited, report)
        except (AssertionError, KeyError, ValueError):
            continue
        missed.append(text[max(0, i - 30):i + 10])
    assert missed == []
