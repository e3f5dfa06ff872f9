"""tools/gc_report.py: the paper-style table and curves of paired runs."""
import json
import os.path as osp
import subprocess
import sys

import pytest

from mmdet_gc.report import ReportError, markdown_table, read_run

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
