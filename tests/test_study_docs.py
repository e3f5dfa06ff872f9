"""The study figures quoted in docs/en/studies.md, checked against the
report of the measured study.

``tests/data/study_report.json`` is the ``report.json`` that ``make study
study-lr`` wrote (``work_dirs/study``, 50 runs on 2 CPU cores, on
2026-12-07, from a fresh clone of commit 10d6aeb). Its runs, rebuilt into
a work dir, give its statistics again through the study code; every figure
the doc quotes is checked against it, and each digit of them is shown to
fail the check when edited alone. Where ``work_dirs/study/report.json``
exists here, the doc is checked against it too.
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
    metrics per offset and its row-mean drift."""
    for r in report['runs']:
        run = work / r['arm'] / f'seed{r["seed"]}'
        vis = run / '20260101_000000' / 'vis_data'
        vis.mkdir(parents=True)
        (vis / 'scalars.json').write_text(''.join(
            json.dumps(dict(iter=i, step=i, loss=loss)) + '\n'
            for i, loss in ((1, 2.0), (2, 1.5))))
        (run / 'train.done').write_text('')
        # A failed run here trained, and its test found nothing to score:
        # a record without metrics, as mmdet's CocoMetric leaves it.
        shifts = r['shifts'] or {'0': None}
        for offset, box in shifts.items():
            out = run / f'shift{offset}' / '20260101_000001'
            out.mkdir(parents=True)
            if box is None:
                metrics = dict(time=0.05)
            elif offset == '0':
                metrics = r['metrics']
            else:
                metrics = {'coco/bbox_mAP': box}
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
    gc = [r for r in runs if r['arm'] == 'SGD_GC']
    m = _find(
        text, study, r'baseline collapsed on (\d+) of (\d+) seeds \(box AP '
        r'(\S+)% to (\S+)%\) and SGD_GC on (\w+) \(seed (\d+), (\S+)%\); on '
        r'the (\w+) seed where both trained \(seed (\d+)\) SGD_GC scored '
        r'(\S+) against (\S+)\.')
    collapsed = sorted(r['metrics'][box] for r in base if r['status'] != 'ok')
    assert int(m.group(1)) == len(collapsed)
    assert int(m.group(2)) == len(base)
    _check(m.group(3), collapsed[0])
    _check(m.group(4), collapsed[-1])
    gc_collapsed = [r for r in gc if r['status'] != 'ok']
    assert WORDS[m.group(5)] == len(gc_collapsed) == 1
    assert int(m.group(6)) == gc_collapsed[0]['seed']
    _check(m.group(7), gc_collapsed[0]['metrics'][box])
    both = [
        r['seed'] for r in base
        if r['status'] == 'ok' and by[('SGD_GC', r['seed'])]['status'] == 'ok'
    ]
    assert WORDS[m.group(8)] == len(both) == 1
    assert int(m.group(9)) == both[0]
    _check(m.group(10), by[('SGD_GC', both[0])]['metrics'][box])
    _check(m.group(11), by[('base', both[0])]['metrics'][box])
    checked.append(m.span())
    m = _find(text, study,
              r'float32 rounding \((\S+), against (\S+) for SGD\)')
    _check(m.group(1), _largest(arms['SGD_GC']['max_row_mean_drift']), 1)
    _check(m.group(2), _largest(arms['base']['max_row_mean_drift']), 1)
    checked.append(m.span())
    m = _find(
        text, study, r'Under the ±(\d+) brightness shifts SGD_GC\'s box AP '
        r'moved by at most (\S+) points, and the baseline\'s, on the (\w+) '
        r'seed it trained, by (\S+) \(at (\S+)\)')
    offsets = ('-' + m.group(1), m.group(1))
    _check(
        m.group(2),
        max(
            abs(r['shifts'][o] - r['shifts']['0']) for r in gc
            for o in offsets))
    trained = [r for r in base if r['status'] == 'ok']
    assert WORDS[m.group(3)] == len(trained)
    moved, offset = max((abs(r['shifts'][o] - r['shifts']['0']), o)
                        for r in trained for o in offsets)
    _check(m.group(4), moved)
    assert m.group(5) == offset
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
        elif both is not None and both['n'] == 1:  # no interval from one
            assert math.isnan(both['ci_low']) and math.isnan(both['ci_high'])
            mean, n = re.fullmatch(r'(\S+) \((\d+)\)', cells[3]).groups()
            _check(mean, both['mean'])
            assert int(n) == 1
        else:
            _interval(cells[3].rsplit(' (', 1)[0], both)
            assert cells[3].endswith(f' ({both["n"]})')
        checked.append(span)

    m = _find(
        text, part, r'both arms train on every seed up to lr (\S+); at (\S+) '
        r'the baseline collapsed on (\d+) of (\d+) seeds and SGD_GC on '
        r'(\d+); at (\S+) both collapse on every seed')
    assert float(m.group(1)) == sweep['stable']['base'] == \
        sweep['stable']['SGD_GC']
    at = m.group(2)
    edge = sweep['arms']['base'][at], sweep['arms']['SGD_GC'][at]
    assert float(at) == 2 * float(m.group(1))
    assert (int(m.group(3)), int(m.group(4)),
            int(m.group(5))) == (edge[0]['collapsed'], edge[0]['n'],
                                 edge[1]['collapsed'])
    assert all(sweep['arms'][f][m.group(6)]['collapsed'] == sweep['arms'][f][
        m.group(6)]['n'] for f in families)
    checked.append(m.span())
    m = _find(
        text, part, r'\((\S+) and (\S+) box AP at (\S+) and (\S+), '
        r'intervals across zero; at (\S+), on the (\w+) seed where both '
        r'trained, (\S+), no interval from one seed\)')
    for quoted, lr in ((m.group(1), m.group(3)), (m.group(2), m.group(4))):
        st = paired[lr]['box']
        _check(quoted, st['mean'])
        assert st['ci_low'] < 0 < st['ci_high']
    both = paired[m.group(5)]['box_trained']
    assert WORDS[m.group(6)] == both['n'] == 1
    _check(m.group(7), both['mean'])
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
