"""tools/gc_report.py: the paper-style table and curves of paired runs."""
import json
import math
import os
import os.path as osp
import subprocess
import sys

import pytest

from mmdet_gc.study import ReportError, markdown_table, read_run

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def coco(box, mask=None):
    out = {
        f'coco/bbox_{k}': box + i * 0.01
        for i, k in enumerate(('mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m',
                               'mAP_l'))
    }
    if mask is not None:
        out.update({
            f'coco/segm_{k}': mask
            for k in ('mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l')
        })
    return out


def write_run(root, name, box, mask, test=None):
    """A work dir laid out as MMEngine writes it."""
    vis = root / name / '20260101_000000' / 'vis_data'
    vis.mkdir(parents=True)
    lines = [dict(loss=2.0 - 0.1 * i, step=10 * i) for i in range(1, 6)]
    lines.append(dict(coco(box, mask), step=50))
    (vis / 'scalars.json').write_text('\n'.join(map(json.dumps, lines)))
    if test is not None:
        ts = root / name / '20260101_010000'
        ts.mkdir()
        (ts / '20260101_010000.json').write_text(json.dumps(test))
    return str(root / name)


def test_table_prefers_test_metrics_and_shows_percent(tmp_path):
    base = write_run(tmp_path, 'sgd', 0.364, 0.341)
    gc = write_run(tmp_path, 'sgd_gc', 0.2, 0.2, test=coco(0.370, 0.347))
    table = markdown_table([read_run(base), read_run(gc, 'SGD_GC')])
    lines = table.splitlines()
    assert lines[0].startswith('| run | box AP | box AP50 |')
    assert 'mask AP' in lines[0]
    assert lines[2].startswith('| sgd | 36.4 | 37.4 | 38.4 |')
    assert lines[3].startswith('| SGD_GC | 37.0 |')
    assert '| 34.7 |' in lines[3]


def test_cli_writes_table_and_png(tmp_path):
    a = write_run(tmp_path, 'a', 0.3, None)
    b = write_run(tmp_path, 'b', 0.31, None)
    png = tmp_path / 'curves.png'
    out = subprocess.run(
        [sys.executable, 'tools/gc_report.py', a, b, '--plot',
         str(png)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True)
    assert '| a | 30.0 |' in out.stdout and 'mask AP' not in out.stdout
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_missing_and_partial_work_dirs(tmp_path):
    with pytest.raises(ReportError, match='no such work dir'):
        read_run(str(tmp_path / 'nope'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ReportError, match='no MMEngine logs'):
        read_run(str(tmp_path / 'empty'))
    # Training logs but no evaluation yet: an empty row and a note.
    vis = tmp_path / 'partial' / '20260101_000000' / 'vis_data'
    vis.mkdir(parents=True)
    (vis / 'scalars.json'
     ).write_text(json.dumps(dict(loss=1.0, step=1)) + '\n{"loss": 0.9, "st')
    run = read_run(str(tmp_path / 'partial'))
    assert run.losses == [(1, 1.0)] and run.final is None
    out = subprocess.run([
        sys.executable, 'tools/gc_report.py',
        str(tmp_path / 'partial'),
        str(tmp_path / 'nope')
    ],
                         cwd=ROOT,
                         capture_output=True,
                         text=True)
    assert out.returncode != 0 and 'no such work dir' in out.stderr
    out = subprocess.run(
        [sys.executable, 'tools/gc_report.py',
         str(tmp_path / 'partial')],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True)
    assert '| partial | - |' in out.stdout
    assert 'no COCO metrics yet' in out.stderr


def test_epoch_based_validation_is_placed_at_its_last_iteration(tmp_path):
    vis = tmp_path / 'ep' / '20260101_000000' / 'vis_data'
    vis.mkdir(parents=True)
    lines = [
        dict(loss=1.0, epoch=e, step=s)
        for e, s in ((1, 50), (1, 100), (2, 150), (2, 200))
    ]
    lines += [dict(coco(0.1), step=1), dict(coco(0.2), step=2)]
    (vis / 'scalars.json').write_text('\n'.join(map(json.dumps, lines)))
    run = read_run(str(tmp_path / 'ep'))
    assert [s for s, _ in run.evals] == [100, 200]
    assert run.final['coco/bbox_mAP'] == 0.2


# A work dir is untrusted input: a malformed line, value, record or file is
# skipped with one warning naming the file, and the rest is reported.

#: Lines that are skipped whole, each between two valid lines.
BAD_LINES = {
    'list': b'[1, 2]',
    'number': b'3',
    'string': b'"loss"',
    'null': b'null',
    'not JSON': b'{"loss": 1.0,, "step": 60}',
    'not UTF-8': b'\xff\xfe{"loss": 1.0}',
    'nested too deep': b'[' * 100000,
    'int of 5000 digits': b'{"loss": 1.0, "step": ' + b'9' * 5000 + b'}',
    'step string': b'{"loss": 1.0, "step": "x"}',
    'step float': b'{"loss": 1.0, "step": 60.0}',
    'step bool': b'{"loss": 1.0, "step": true}',
    'step negative': b'{"loss": 1.0, "step": -1}',
    'step beyond int64': b'{"loss": 1.0, "step": ' + b'9' * 30 + b'}',
    'step infinite': b'{"loss": 1.0, "step": Infinity}',
    'iter object': b'{"loss": 1.0, "iter": {}}',
    'epoch list': b'{"loss": 1.0, "epoch": [1], "step": 60}',
    'loss list': b'{"loss": [1], "step": 60}',
    'loss string': b'{"loss": "1.0", "step": 60}',
    'loss bool': b'{"loss": false, "step": 60}',
    'loss beyond float': b'{"loss": 1' + b'0' * 400 + b', "step": 60}',
}
#: Values of ``coco/bbox_mAP`` that are dropped (the record's other
#: metrics are kept).
BAD_METRICS = {
    'string': '"high"',
    'list': '[0.3]',
    'bool': 'true',
    'null': 'null',
    'NaN': 'NaN',
    'infinite': 'Infinity',
    'out of range': '1e308',
}


def _scalars(work_dir):
    return osp.join(work_dir, '20260101_000000', 'vis_data', 'scalars.json')


def _insert_line(path, line, at=2):
    with open(path, 'rb') as f:
        lines = f.read().split(b'\n')
    lines.insert(at, line)
    with open(path, 'wb') as f:
        f.write(b'\n'.join(lines))


def _report(capsys, *argv):
    """``mmdet-gc report ARGV``: its stdout, and its stderr lines."""
    from mmdet_gc.cli.report import main
    main(list(argv), prog='mmdet-gc report')  # no SystemExit: status 0
    out = capsys.readouterr()
    return out.out, out.err.splitlines()


def _one_warning(err, path):
    warnings = [line for line in err if line.startswith('warning:')]
    assert len(warnings) == 1 and path in warnings[0], err
    assert 'Traceback' not in '\n'.join(err)
    return warnings[0]


@pytest.mark.parametrize('kind', BAD_LINES)
def test_malformed_scalars_line_is_skipped_with_one_warning(
        tmp_path, capsys, kind):
    clean = write_run(tmp_path / 'clean', 'run', 0.3, 0.2)
    want, _ = _report(capsys, clean)
    bad = write_run(tmp_path, 'run', 0.3, 0.2)
    # Twice, and once as the last line (with its newline): each is counted.
    for at in (1, 3):
        _insert_line(_scalars(bad), BAD_LINES[kind], at)
    with open(_scalars(bad), 'ab') as f:
        f.write(b'\n' + BAD_LINES[kind] + b'\n')
    out, err = _report(capsys, bad)
    assert out == want
    assert 'skipped 3 malformed lines' in _one_warning(err, _scalars(bad))
    assert read_run(bad).losses == read_run(clean).losses


@pytest.mark.parametrize('kind', BAD_METRICS)
def test_malformed_metric_is_dropped_with_one_warning(tmp_path, capsys, kind):
    bad = write_run(tmp_path, 'run', 0.3, 0.2)
    text = open(_scalars(bad)).read()
    value = json.dumps(0.3)
    assert text.count(f'"coco/bbox_mAP": {value}') == 1
    with open(_scalars(bad), 'w') as f:
        f.write(
            text.replace(f'"coco/bbox_mAP": {value}',
                         f'"coco/bbox_mAP": {BAD_METRICS[kind]}'))
    out, err = _report(capsys, bad)
    # The validation's other metrics are kept: only box AP is missing.
    assert '| run | - | 31.0 | 32.0 |' in out
    warning = _one_warning(err, _scalars(bad))
    assert 'skipped 1 malformed value' in warning
    assert 'coco/bbox_mAP' in warning


@pytest.mark.parametrize('content', [
    '[{"coco/bbox_mAP": 0.5}]', '3', '"coco/bbox_mAP"', 'null',
    '{"coco/bbox_mAP": 0.5}\n{"coco/bbox_mAP": 0.5,,}\n'
])
def test_malformed_test_result_falls_back_to_validation(
        tmp_path, capsys, content):
    want, _ = _report(capsys, write_run(tmp_path / 'clean', 'run', 0.3, None))
    bad = write_run(tmp_path, 'run', 0.3, None, test={})
    path = osp.join(bad, '20260101_010000', '20260101_010000.json')
    with open(path, 'w') as f:
        f.write(content)
    out, err = _report(capsys, bad)
    if content.startswith('{'):  # its first line is valid
        assert '| run | 50.0 |' in out
    else:
        assert out == want
    _one_warning(err, path)


def test_string_metric_in_test_result(tmp_path, capsys):
    test = dict(coco(0.4), **{'coco/bbox_mAP': 'high'})
    # mmdet writes this string next to the metrics: it is not read.
    test['coco/bbox_mAP_copypaste'] = '0.400 0.410 0.420 0.430 0.440 0.450'
    bad = write_run(tmp_path, 'run', 0.3, None, test=test)
    out, err = _report(capsys, bad)
    assert '| run | - | 41.0 | 42.0 |' in out
    _one_warning(err, osp.join(bad, '20260101_010000', '20260101_010000.json'))


@pytest.mark.parametrize('kind', ['folder', 'fifo'])
def test_scalars_that_is_not_a_file_is_skipped(tmp_path, capsys, deadline,
                                               kind):
    bad = write_run(tmp_path, 'run', 0.3, None, test=coco(0.4))
    os.remove(_scalars(bad))
    if kind == 'folder':
        os.mkdir(_scalars(bad))
    else:  # opening it would wait for a writer forever
        os.mkfifo(_scalars(bad))
    out, err = _report(capsys, bad)
    assert '| run | 40.0 |' in out
    assert 'not a regular file' in _one_warning(err, _scalars(bad))


def test_legitimate_logs_give_no_warning(tmp_path, capsys):
    """What MMEngine writes passes as it is: a NaN or infinite loss (a
    diverged run), -1 for a metric COCO did not compute, strings and lists
    in keys the report does not read, a last line cut off mid-write."""
    work = write_run(tmp_path, 'run', 0.3, None)
    lines = [
        dict(loss=float('nan'), step=60, lr=[0.02], epoch=1, iter=60),
        dict(loss=float('inf'), step=70, memory=120),
        dict(coco(0.3), step=70, **{'coco/bbox_mAP_s': -1.0}),
    ]
    with open(_scalars(work), 'a') as f:
        f.write('\n' + '\n'.join(map(json.dumps, lines)) + '\n{"loss": 0.')
    out, err = _report(capsys, work)
    assert err == []
    assert '| run | 30.0 | 31.0 | 32.0 | - |' in out
    run = read_run(work)
    assert run.losses[-2][0] == 60 and math.isnan(run.losses[-2][1])
    assert run.losses[-1] == (70, float('inf'))


def test_nothing_valid_is_one_line_error(tmp_path):
    vis = tmp_path / 'bad' / '20260101_000000' / 'vis_data'
    vis.mkdir(parents=True)
    (vis / 'scalars.json').write_text('[1]\n{"loss": "x"}\n')
    out = subprocess.run(
        [sys.executable, '-m', 'mmdet_gc', 'report',
         str(tmp_path / 'bad')],
        cwd=ROOT,
        capture_output=True,
        text=True)
    assert out.returncode == 1 and 'Traceback' not in out.stderr
    err = out.stderr.splitlines()
    warnings = [line for line in err if line.startswith('warning:')]
    assert len(warnings) == 1 and 'skipped 2 malformed lines' in warnings[0]
    assert err[-1].endswith('nothing valid in its MMEngine logs (see the '
                            'warnings above)')


def test_cli_on_a_damaged_work_dir(tmp_path):
    """``python -m mmdet_gc report`` on a work dir with every kind of damage
    at once: status 0, the table and the curves of the valid rest, one
    warning per damaged file, no traceback."""
    bad = write_run(tmp_path, 'run[1]', 0.3, None, test=coco(0.4))
    for at, line in enumerate(BAD_LINES.values(), 1):
        _insert_line(_scalars(bad), line, at)
    test = osp.join(bad, '20260101_010000', '20260101_010000.json')
    with open(test, 'a') as f:
        f.write('\n[]\n')
    png = tmp_path / 'curves.png'
    out = subprocess.run(
        [sys.executable, '-m', 'mmdet_gc', 'report', bad, '--plot',
         str(png)],
        cwd=ROOT,
        capture_output=True,
        text=True)
    assert out.returncode == 0, out.stderr
    assert 'Traceback' not in out.stderr
    assert '| run[1] | 40.0 |' in out.stdout
    warnings = [
        line for line in out.stderr.splitlines() if line.startswith('warning:')
    ]
    assert len(warnings) == 2, out.stderr
    assert f'skipped {len(BAD_LINES)} malformed lines in {_scalars(bad)}' \
        in warnings[0]
    assert f'skipped 1 malformed line in {test}' in warnings[1]
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


# The optimizer and lr of each run, the differences to the first run, and
# the curves: one colour per run, a single point on a sensible axis, values
# too large to draw left out with one warning.

SGD_CONFIG = """optim_wrapper = dict(
    clip_grad=None,
    optimizer=dict(lr=0.02, momentum=0.9, type='SGD', weight_decay=0.0001),
    type='OptimWrapper')
"""


def _config(work_dir, text, where='vis_data', stamp='20260101_000000'):
    """A config as MMEngine dumps it: into ``<stamp>/vis_data/config.py``
    or the work dir itself."""
    if where == 'vis_data':
        path = osp.join(work_dir, stamp, 'vis_data', 'config.py')
    else:
        path = osp.join(work_dir, where)
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write(text)
    return path


def _cells(table, name):
    row = next(line for line in table.splitlines()
               if line.startswith(f'| {name} |'))
    return [c.strip() for c in row.split('|')[1:-1]]


def test_table_shows_each_runs_optimizer_and_lr(tmp_path, capsys):
    runs = {n: write_run(tmp_path, n, 0.3, None) for n in 'abcdefg'}
    _config(runs['a'], SGD_CONFIG)
    # The work dir's own dump, and a newer start resumed at another lr.
    _config(runs['b'], SGD_CONFIG.replace("'SGD'", "'SGD_GC'"), 'cfg.py')
    _config(
        runs['b'], SGD_CONFIG.replace('0.02', '0.01'), stamp='20260102_000000')
    _config(
        runs['c'], "optim_wrapper = dict(type='OptimWrapper', "
        "constructor='GCOptimWrapperConstructor', gc=dict(on='update'), "
        "optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05))\n")
    # d: no config. Untrusted: a name that would break the table, a lr
    # that is no number; a file that is not Python; code, never run.
    _config(runs['e'],
            "optim_wrapper = dict(optimizer=dict(type='SGD | x', lr='0.1'))")
    _config(runs['f'], 'optim_wrapper = dict(optimizer=dict(type=\n')
    pwned = tmp_path / 'pwned'
    _config(runs['g'], f'open({str(pwned)!r}, "w")\n' + SGD_CONFIG)
    table = markdown_table([read_run(runs[n]) for n in 'abcdefg'])
    err = capsys.readouterr().err.splitlines()
    assert table.splitlines()[0].endswith('| optimizer | lr |')
    assert _cells(table, 'a')[-2:] == ['SGD', '0.02']
    assert _cells(table, 'b')[-2:] == ['SGD', '0.01']
    assert _cells(table, 'c')[-2:] == ['AdamW + GC on the update', '0.0001']
    assert _cells(table, 'd')[-2:] == ['-', '-']
    assert _cells(table, 'e')[-2:] == ['-', '-']
    assert _cells(table, 'f')[-2:] == ['-', '-']
    assert _cells(table, 'g')[-2:] == ['SGD', '0.02']
    assert not pwned.exists()
    assert len(err) == 2, err
    assert 'e/20260101_000000/vis_data/config.py' in err[0]
    assert 'skipped 2 malformed values' in err[0]
    assert err[1].endswith('f/20260101_000000/vis_data/config.py: not a '
                           'Python config')


def test_difference_rows_to_the_first_run(tmp_path):
    base = write_run(tmp_path, 'sgd', 0.364, 0.341)
    gc = write_run(tmp_path, 'sgd_gc', 0.2, 0.2, test=coco(0.370, 0.347))
    box = write_run(tmp_path, 'box_only', 0.35, None)
    table = markdown_table([read_run(d) for d in (base, gc, box)])
    # AP points, each metric against the first run's; none where either
    # run has no such metric.
    assert _cells(table, 'sgd_gc - sgd')[1:] == ['+0.6'] * 6 + ['+0.6'] * 6 \
        + ['', '']
    assert _cells(table, 'box_only - sgd')[1:7] == ['-1.4'] * 6
    assert _cells(table, 'box_only - sgd')[7:13] == ['-'] * 6
    assert 'Rows "B - sgd": run B\'s AP minus the first run\'s' in table
    one = markdown_table([read_run(base)])
    assert ' - sgd' not in one and 'Rows' not in one


def _colours_by_run(fig, names):
    """Per run, the colours of its lines in every panel (a label names its
    run first)."""
    from matplotlib.colors import to_hex
    shown = {n.replace('$', r'\$'): n for n in names}
    out = {n: set() for n in names}
    for ax in fig.axes:
        for line in ax.lines:
            text = line.get_label()
            run = shown.get(text) or shown[text.rsplit(' ', 1)[0]]
            out[run].add(to_hex(line.get_color()))
    return out


def test_curves_give_a_run_one_colour_in_every_panel(tmp_path):
    from mmdet_gc.study import plot_curves
    names = ['sgd', 'sgd_gc', r'$\foo$']  # a $ starts no formula
    runs = [
        read_run(write_run(tmp_path, f'r{i}', 0.3, 0.2), n)
        for i, n in enumerate(names)
    ]
    png = tmp_path / 'c.png'
    fig = plot_curves(runs, str(png))
    colours = _colours_by_run(fig, names)
    assert all(len(c) == 1 for c in colours.values()), colours
    assert len(set.union(*colours.values())) == len(names)
    # Loss, box AP and mask AP: three lines per run.
    assert sum(len(ax.lines) for ax in fig.axes) == 3 * len(names)
    assert png.read_bytes()[:4] == b'\x89PNG'


def test_a_single_point_gets_a_sensible_axis(tmp_path):
    from mmdet_gc.study import plot_curves
    vis = tmp_path / 'one' / '20260101_000000' / 'vis_data'
    vis.mkdir(parents=True)
    (vis / 'scalars.json').write_text(
        json.dumps(dict(loss=2.0, step=50)) + '\n' +
        json.dumps(dict(coco(0.4), step=50)) + '\n')
    fig = plot_curves([read_run(str(tmp_path / 'one'))])
    ax_loss, ax_ap = fig.axes
    assert ax_ap.get_ylim() == (0, 100)  # an AP: its whole range
    assert ax_loss.get_ylim() == (0, 4)  # the value ± the value
    assert ax_loss.get_xlim() == (0, 100)  # one iteration axis
    assert ax_loss.lines[0].get_marker() == 'o'  # a point, not a line


@pytest.mark.parametrize(
    'losses', [[1e308], [-1e308], [1e308, -1e308, 1.5]],
    ids=['1e308', '-1e308', 'mix'])
def test_values_too_large_to_draw_are_left_out_with_one_line(
        tmp_path, capsys, losses):
    """``mmdet-gc report --plot`` on losses matplotlib cannot draw: status
    0, the table, the curves of the rest, one warning line."""
    work = write_run(tmp_path, 'run', 0.3, None)
    with open(_scalars(work), 'a') as f:
        for i, loss in enumerate(losses):
            f.write('\n' + json.dumps(dict(loss=loss, step=60 + i)))
    png = tmp_path / 'c.png'
    out, err = _report(capsys, work, '--plot', str(png))
    assert '| run | 30.0 |' in out and f'curves: {png}' in out
    assert len(err) == 1, err
    n = sum(abs(v) > 1e100 for v in losses)
    assert err[0] == (f'warning: skipped {n} undrawable value'
                      f'{"s" if n > 1 else ""} in {png}: loss beyond ±1e+100'
                      f' ({", ".join(f"run step {60 + i}" for i in range(n))}'
                      ')')
    assert png.read_bytes()[:4] == b'\x89PNG'
