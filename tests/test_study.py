"""Paired GC studies: the statistics against hand-computed values, the
report on a fake study with failed and diverged runs, skip / resume,
``--print-commands``, the brightness shift, and a two-arm x two-seed study
end to end (Yong et al., ECCV 2020: the effect of GC, measured over
seeds)."""
import json
import math
import os
import os.path as osp
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config

from mmdet_gc.datasets import IntensityShift
from mmdet_gc.engine.hooks.row_mean_drift_hook import (conv_fc_weights,
                                                       row_means)
from mmdet_gc.study import METRICS, Arm, Plan, execute, make_arms, paired_stats
from mmdet_gc.study import plan as study_plan
from mmdet_gc.study import read_study, study_markdown, summarize, write_report

from tool_helpers import DEMO, ENV, ROOT, run_tool, tiny_config


def test_paired_stats_against_hand_computed_values():
    base, gc = [0.30, 0.32, 0.31], [0.33, 0.33, 0.35]
    st = paired_stats(base, gc)
    # Differences 0.03, 0.01, 0.04: mean 0.02667, sample std 0.015275;
    # t(0.975, df=2) = 4.302653 (tables), so the half width is
    # 4.302653 * 0.015275 / sqrt(3) = 0.037946; t = 3.0237, p = 0.0942.
    assert st['n'] == 3
    assert st['mean'] == pytest.approx(0.026667, abs=1e-6)
    assert st['std'] == pytest.approx(0.015275, abs=1e-6)
    assert st['ci_low'] == pytest.approx(0.026667 - 0.037946, abs=1e-5)
    assert st['ci_high'] == pytest.approx(0.026667 + 0.037946, abs=1e-5)
    assert st['p'] == pytest.approx(0.0942, abs=5e-4)
    one = paired_stats([0.3], [0.4])
    assert one['mean'] == pytest.approx(0.1) and math.isnan(one['ci_low'])
    with pytest.raises(ValueError, match='one value per seed'):
        paired_stats([0.3, 0.2], [0.4])


def _write_run(work, arm, seed, box, losses, shifts=(0., ), failed=False):
    run = work / arm / f'seed{seed}'
    vis = run / '20260101_000000' / 'vis_data'
    vis.mkdir(parents=True)
    with open(vis / 'scalars.json', 'w') as f:
        for i, loss in enumerate(losses):
            f.write(json.dumps(dict(iter=i + 1, loss=loss)) + '\n')
    if failed:
        (run / 'train.failed').write_text('')
        return
    (run / 'train.done').write_text('')
    for shift in shifts:
        out = run / f'shift{shift:g}' / '20260101_000001'
        out.mkdir(parents=True)
        metrics = {m: box - abs(shift) / 1000 for m in METRICS}
        (out / '20260101_000001.json').write_text(json.dumps(metrics) + '\n')
        (run / f'shift{shift:g}' / 'test.done').write_text('')


def _fake_study(work):
    for seed, (b, g) in enumerate([(0.30, 0.33), (0.32, 0.33), (0.31, 0.35)]):
        _write_run(work, 'base', seed, b, [2.0, 1.5], shifts=(-40., 0.))
        _write_run(work, 'SGD_GC', seed, g, [2.0, 1.4], shifts=(-40., 0.))
    # A fourth seed: the base run diverged (nan loss), the GC run failed.
    _write_run(work, 'base', 3, 0.01, [2.0, float('nan')], shifts=(-40., 0.))
    _write_run(work, 'SGD_GC', 3, 0., [2.0], failed=True)
    return work


@pytest.fixture
def fake_study(tmp_path):
    return _fake_study(tmp_path / 'study')


def test_report_counts_failed_and_diverged_runs_and_keeps_them(fake_study):
    results = read_study(str(fake_study), threshold=0.05)
    status = {(r.arm, r.seed): r.status for r in results}
    assert status[('base', 3)] == 'diverged'
    assert status[('SGD_GC', 3)] == 'failed'
    summary = summarize(results)
    assert list(summary['arms']) == ['base', 'SGD_GC']
    base, gc = summary['arms']['base'], summary['arms']['SGD_GC']
    assert (base['ok'], base['diverged'], base['failed']) == (3, 1, 0)
    assert (gc['ok'], gc['diverged'], gc['failed']) == (3, 0, 1)
    # Nothing dropped: the failed run counts as AP 0, the diverged one as
    # what it scored.
    m = 'coco/bbox_mAP'
    assert gc['metrics'][m]['n'] == 4
    assert gc['metrics'][m]['mean'] == pytest.approx((0.33 + 0.33 + 0.35) / 4)
    assert base['metrics'][m]['mean'] == pytest.approx(
        (0.30 + 0.32 + 0.31 + 0.01) / 4)
    paired = summary['paired']['SGD_GC'][m]
    want = paired_stats([0.30, 0.32, 0.31, 0.01], [0.33, 0.33, 0.35, 0.])
    assert paired == pytest.approx(want)
    assert base['shift_bbox_mAP'] == pytest.approx({
        '-40': (0.30 + 0.32 + 0.31 + 0.01) / 4 - 0.04,
        '0': (0.30 + 0.32 + 0.31 + 0.01) / 4
    })


def test_report_files(fake_study):
    text, summary = write_report(str(fake_study), threshold=0.05)
    assert 'Paired difference SGD_GC - base' in text
    assert '| base | 4 | 3 / 1 / 0 |' in text
    assert '| SGD_GC | 4 | 3 / 0 / 1 |' in text
    saved = json.load(open(fake_study / 'report.json'))
    assert saved['arms']['SGD_GC']['failed'] == 1
    assert len(saved['runs']) == 8
    assert osp.getsize(fake_study / 'report.png') > 10000


def _fake_sweep(work):
    """base trains at lr 0.02 only; SGD_GC up to 0.04 (the config's own lr,
    its arms unsuffixed)."""
    box = {
        'base_lr0.02': [0.30, 0.31, 0.32],
        'base': [0.33, 0.34, 0.20],  # seed 2: NaN loss
        'base_lr0.08': [0., 0., 0.01],  # failed, failed, below threshold
        'SGD_GC_lr0.02': [0.31, 0.31, 0.33],
        'SGD_GC': [0.34, 0.36, 0.35],
        'SGD_GC_lr0.08': [0.30, 0.02, 0.32],
    }
    for arm, values in box.items():
        for seed, b in enumerate(values):
            nan = arm == 'base' and seed == 2
            _write_run(
                work,
                arm,
                seed,
                b, [2.0, float('nan') if nan else 1.5],
                failed=arm == 'base_lr0.08' and seed < 2)
    return work


def test_sweep_counts_collapses_and_pairs_each_lr(tmp_path):
    work = _fake_sweep(tmp_path / 'sweep')
    results = read_study(str(work), threshold=0.05)
    summary = summarize(results, config_lr=0.04)
    assert list(summary['arms']) == [
        'base', 'SGD_GC', 'base_lr0.02', 'SGD_GC_lr0.02', 'base_lr0.08',
        'SGD_GC_lr0.08'
    ]
    # Each GC arm pairs with the base arm at its own lr.
    assert summary['pairs'] == {
        'SGD_GC': 'base',
        'SGD_GC_lr0.02': 'base_lr0.02',
        'SGD_GC_lr0.08': 'base_lr0.08'
    }
    sweep = summary['sweep']
    assert sweep['lrs'] == [0.02, 0.04, 0.08]
    collapsed = {
        f:
        [sweep['arms'][f][lr]['collapsed'] for lr in ('0.02', '0.04', '0.08')]
        for f in ('base', 'SGD_GC')
    }
    assert collapsed == dict(base=[0, 1, 3], SGD_GC=[0, 0, 1])
    assert sweep['stable'] == dict(base=0.02, SGD_GC=0.04)
    at = sweep['arms']['base']['0.04']
    assert at['arm'] == 'base' and at['n'] == 3
    assert at['box']['mean'] == pytest.approx((0.33 + 0.34 + 0.20) / 3)
    pair = sweep['paired']['SGD_GC']['0.04']
    assert pair['box'] == pytest.approx(
        paired_stats([0.33, 0.34, 0.20], [0.34, 0.36, 0.35]))
    assert pair['mask'] == pytest.approx(pair['box'])
    # Where both trained: seeds 0 and 1 only.
    assert pair['box_trained'] == pytest.approx(
        paired_stats([0.33, 0.34], [0.34, 0.36]))
    # Failed runs count as AP 0 in the pair over every seed.
    assert sweep['paired']['SGD_GC']['0.08']['box'] == pytest.approx(
        paired_stats([0., 0., 0.01], [0.30, 0.02, 0.32]))
    assert 'box_trained' not in sweep['paired']['SGD_GC']['0.08']
    # Without the config's lr the unsuffixed arms have no place on the axis.
    assert summarize(results)['sweep']['lrs'] == [0.02, 0.08]
    # One lr: no sweep.
    assert summarize(
        read_study(str(_fake_study(tmp_path / 'one'))),
        config_lr=0.04)['sweep'] is None


def test_sweep_report_files(tmp_path):
    work = _fake_sweep(tmp_path / 'sweep')
    text, _ = write_report(str(work), threshold=0.05, config_lr=0.04)
    assert ('every one of the 3 seeds trained (at it and at every smaller '
            'lr run): base 0.02, SGD_GC 0.04 (of 0.02, 0.04, 0.08).') in text
    assert '| 0.08 | 3 of 3 | 0.3 ± 0.6 | 0.3 ± 0.6 | 1 of 3 |' in text
    assert 'Paired difference SGD_GC_lr0.08 - base_lr0.08' in text
    saved = json.load(open(work / 'report.json'))
    assert saved['sweep']['stable'] == dict(base=0.02, SGD_GC=0.04)
    assert osp.getsize(work / 'report_lr.png') > 10000


def test_sweep_of_untrusted_folders(tmp_path, capsys):
    """Folder names from an attack review: an lr spelt otherwise than the
    study spells it is no arm (never paired with another lr's base); two
    lrs that print alike are one; a sweep without a base arm has no
    pairs; an arm that ran fewer seeds, or collapsed at a smaller lr, is
    not stable there; a box-only study shows no mask AP."""
    work = tmp_path / 'w'
    for seed in range(2):
        _write_run(work, 'base', seed, 0.3, [2.0, 1.5])
        _write_run(work, 'base_lr0.08', seed, 0., [2.0], failed=True)
        _write_run(work, 'SGD_GC', seed, 0.32, [2.0, 1.5])
        _write_run(work, 'SGD_GC_lr0.08', seed, 0.31, [2.0, 1.5])
        _write_run(work, 'SGD_GC_lr0.080', seed, 0.9, [2.0, 1.5])
        _write_run(work, 'SGD_GC_lr1e-5', seed, 0.9, [2.0, 1.5])
    _write_run(work, 'SGD_GC_lr0.16', 0, 0.3, [2.0, 1.5])  # one seed only
    results = read_study(str(work), threshold=0.05)
    err = capsys.readouterr().err
    assert 'SGD_GC_lr0.080' in err and 'SGD_GC_lr1e-5' in err
    assert {r.arm
            for r in results} == {
                'base', 'base_lr0.08', 'SGD_GC', 'SGD_GC_lr0.08',
                'SGD_GC_lr0.16'
            }
    # The config's own lr prints as 0.08 too: one lr, the first arm kept.
    summary = summarize(results, config_lr=0.08000001)
    err = capsys.readouterr().err
    assert 'both ran base at lr 0.08' in err
    sweep = summary['sweep']
    assert sweep['lrs'] == [0.08, 0.16]
    assert sweep['stable'] == dict(base=0.08, SGD_GC=0.08)
    summary = summarize(results, config_lr=0.04)
    sweep = summary['sweep']
    assert sweep['stable'] == dict(base=0.04, SGD_GC=0.08)  # not 0.16
    assert sweep['arms']['base']['0.08']['collapsed'] == 2
    # A box-only study: no run wrote a mask AP (a failed run's metrics are
    # all zeros, mask AP too).
    for r in results:
        if r.status != 'failed':
            del r.metrics['coco/segm_mAP']
    sweep = summarize(results, config_lr=0.04)['sweep']
    assert sweep['arms']['base']['0.08']['mask']['n'] == 0
    assert 'mask' not in sweep['paired']['SGD_GC']['0.08']
    # Without a base arm: no pairs, no empty table.
    gc_only = [r for r in results if not r.arm.startswith('base')]
    summary = summarize(gc_only, config_lr=0.04)
    assert summary['sweep']['paired'] == {}
    assert 'Paired difference' not in study_markdown(summary)


def test_arms_and_commands(tmp_path):
    arms = make_arms(['SGD_GC', 'SGD_GCC'], [0.08])
    assert [a.name for a in arms] == [
        'base', 'SGD_GC', 'SGD_GCC', 'base_lr0.08', 'SGD_GC_lr0.08',
        'SGD_GCC_lr0.08'
    ]
    test = study_plan.test_command('c.py', str(tmp_path / 'r'), 40., ['a=1'],
                                   'slurm')
    assert test[-5:] == ['40', '--launcher', 'slurm', '--cfg-options', 'a=1']
    cmd = study_plan.train_command('c.py', str(tmp_path), Arm('SGD_GC', 0.08),
                                   3, 'pytorch', ['a=1'])
    assert cmd[1:] == [
        '-m', 'mmdet_gc', 'train', 'c.py', '--work-dir',
        str(tmp_path / 'SGD_GC_lr0.08' / 'seed3'), '--gc', 'SGD_GC',
        '--launcher', 'pytorch', '--cfg-options', 'randomness.seed=3', 'a=1',
        'optim_wrapper.optimizer.lr=0.08'
    ]


def test_execute_skips_finished_runs_and_resumes_interrupted_ones(
        tmp_path, monkeypatch):
    work = tmp_path / 'w'
    plan = Plan(
        'c.py', str(work), make_arms(['SGD_GC']), [0, 1], shifts=[0., 40.])
    calls = []

    def fake_run(cmd, log, cwd):
        calls.append(cmd)
        run = cmd[cmd.index('--work-dir') + 1]
        os.makedirs(run, exist_ok=True)
        if cmd[1:4] == ['-m', 'mmdet_gc', 'train']:
            ckpt = osp.join(run, 'iter_2.pth')
            open(ckpt, 'w').close()
            open(osp.join(run, 'last_checkpoint'), 'w').write(ckpt)
        return 0

    monkeypatch.setattr(study_plan, '_run', fake_run)
    # base seed 0 finished; SGD_GC seed 0 interrupted after a checkpoint.
    done = work / 'base' / 'seed0'
    for sub in ('shift0', 'shift40'):
        (done / sub).mkdir(parents=True)
        (done / sub / 'test.done').write_text('')
    (done / 'train.done').write_text('')
    cut = work / 'SGD_GC' / 'seed0'
    cut.mkdir(parents=True)
    (cut / 'iter_1.pth').write_text('')
    (cut / 'last_checkpoint').write_text(str(cut / 'iter_1.pth'))
    said = []
    counts = execute(plan, ROOT, say=said.append)
    assert counts == dict(done=1, ran=3, failed=0)
    trains = [c for c in calls if c[3] == 'train']
    assert len(trains) == 3
    assert '--resume' in trains[0] and str(cut) in trains[0]
    assert all('--resume' not in c for c in trains[1:])
    tests = [c for c in calls if c[3] == 'test']
    assert len(tests) == 6
    assert sum('--intensity-shift' in c for c in tests) == 3
    assert any('left' in s for s in said)  # an ETA once a run is timed
    calls.clear()
    assert execute(plan, ROOT, say=said.append)['done'] == 4 and not calls


def test_print_commands_one_line_per_run(tmp_path, data_root):
    cfg = tiny_config(tmp_path, data_root)
    out = run_tool('tools/gc_study.py', cfg, '--gc', 'SGD_GCC', '--seeds', '0',
                   '1', '--print-commands', '--work-dir', str(tmp_path / 'w'))
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 4
    only = [shlex.split(line)[-1] for line in lines]
    assert only == ['base:0', 'SGD_GCC:0', 'base:1', 'SGD_GCC:1']
    assert all('--print-commands' not in line for line in lines)
    assert not (tmp_path / 'w').exists()
    bad = run_tool('tools/gc_study.py', cfg, '--only', 'nope:0', ok=False)
    assert bad.returncode != 0 and 'base:0' in bad.stderr
    assert 'Traceback' not in bad.stderr


def test_print_commands_of_a_sweep_one_line_per_run(tmp_path):
    """A sweep's commands: every arm at every lr, the same seeds; each line
    is that one run (--only), for a cluster's job array."""
    study = osp.join(ROOT, 'configs', 'demo',
                     'mask-rcnn_r18-tiny_fpn_sgd_synthetic-study.py')
    out = run_tool('tools/gc_study.py', study, '--gc', 'SGD_GC', '--seeds',
                   '0', '1', '--lr', '0.02', '0.08', '--print-commands',
                   '--work-dir', str(tmp_path / 'w'))
    lines = out.stdout.strip().splitlines()
    only = [shlex.split(line)[-1] for line in lines]
    assert only == [
        f'{arm}:{seed}' for seed in (0, 1)
        for arm in ('base', 'SGD_GC', 'base_lr0.02', 'SGD_GC_lr0.02',
                    'base_lr0.08', 'SGD_GC_lr0.08')
    ]
    assert all('--lr 0.02 0.08' in line for line in lines)
    assert not (tmp_path / 'w').exists()


def test_intensity_shift_and_row_means():
    img = np.array([[0, 10, 250]], dtype=np.uint8)
    assert IntensityShift(20).transform({'img': img
                                         })['img'].tolist() == [[20, 30, 255]]
    assert IntensityShift(-20).transform({'img': img
                                          })['img'].tolist() == [[0, 0, 230]]
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.Linear(4, 5))
    means = row_means(conv_fc_weights(net))
    assert set(means) == {'0.weight', '1.weight'}
    torch.testing.assert_close(means['1.weight'],
                               net[1].weight.double().mean(1))


def test_the_test_tool_evaluates_under_a_brightness_offset(
        trained_run, tmp_path):
    """``tools/test.py --intensity-shift 40`` (a study's evaluation under an
    offset) runs the test pipeline with the offset and reports COCO AP."""
    work = tmp_path / 'shift40'
    proc = run_tool('tools/test.py', trained_run['cfg'], trained_run['iter_2'],
                    '--work-dir', str(work), '--intensity-shift', '40')
    assert 'coco/bbox_mAP' in proc.stdout + proc.stderr
    dumped = Config.fromfile(str(next(work.glob('*/vis_data/config.py'))))
    shifts = [
        t for t in dumped.test_dataloader.dataset.pipeline
        if t['type'] == 'IntensityShift'
    ]
    assert [t['offset'] for t in shifts] == [40.]


# A study's work dir is untrusted input: a malformed log line, record, file
# or folder name is skipped with one warning naming it; the report is made
# from the valid rest.


def _scalars(work, arm='base', seed=0):
    return work / arm / f'seed{seed}' / '20260101_000000' / 'vis_data' / \
        'scalars.json'


def _insert_line(path, line):
    lines = path.read_bytes().split(b'\n')
    path.write_bytes(b'\n'.join(lines[:1] + [line] + lines[1:]))


def _folders(*names, under=('base', )):

    def damage(work):
        for name in names:
            (work.joinpath(*under) / name).mkdir()
        return work.joinpath(*under)

    return damage


def _line(line):

    def damage(work):
        _insert_line(_scalars(work), line)
        return _scalars(work)

    return damage


def _file(name, content, under=('base', 'seed0')):

    def damage(work):
        path = work.joinpath(*under) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:  # a FIFO: opening it would wait forever
            os.mkfifo(path)
        else:
            path.write_text(content)
        return path

    return damage


#: Damage that leaves the report as it is: (what it does to a fake study)
#: -> the file or folder its one warning names.
HARMLESS = {
    'seed folders':
    _folders('seedX', 'seed-1', 'seed', 'seed01', 'seed1.0', 'seed١'),
    'shift folders':
    _folders(
        'shiftX',
        'shiftnan',
        'shiftinf',
        'shift',
        'shift0.0',
        'shift1_0',
        under=('base', 'seed0')),
    'arm folder not text':
    _folders('bad\nname', under=()),
    'line list':
    _line(b'[1]'),
    'line number':
    _line(b'3'),
    'line not JSON':
    _line(b'{"iter": 3,, "loss": 1.0}'),
    'step string':
    _line(b'{"step": "x", "loss": 1.0}'),
    'iter negative':
    _line(b'{"iter": -1, "loss": 1.0}'),
    'iter bool':
    _line(b'{"iter": true, "loss": 1.0}'),
    'loss list':
    _line(b'{"iter": 3, "loss": [1]}'),
    'loss string':
    _line(b'{"iter": 3, "loss": "nan"}'),
    # A test result in an extra offset folder, skipped whole.
    'test result list':
    _file(
        '20260101_000001.json',
        '[{"coco/bbox_mAP": 0.5}]',
        under=('base', 'seed0', 'shift20', '20260101_000001')),
    'test result number':
    _file(
        '20260101_000001.json',
        '0.5',
        under=('base', 'seed0', 'shift20', '20260101_000001')),
    'drift not JSON':
    _file('row_mean_drift.json', '{"layers": '),
    'drift list':
    _file('row_mean_drift.json', '[]'),
    'drift layers list':
    _file('row_mean_drift.json', '{"layers": []}'),
    'drift iter string':
    _file('row_mean_drift.json', '{"iter": "x", "layers": {}}'),
    'drift FIFO':
    _file('row_mean_drift.json', None, under=('SGD_GC', 'seed0')),
}


@pytest.mark.parametrize('kind', HARMLESS)
def test_damaged_study_reports_the_valid_rest(tmp_path, capsys, deadline,
                                              kind):
    from mmdet_gc.cli.study import main
    want, _ = write_report(str(_fake_study(tmp_path / 'clean')), 0.05)
    work = _fake_study(tmp_path / 'study')
    named = HARMLESS[kind](work)
    # No SystemExit: status 0.
    argv = [DEMO, '--report-only', '--threshold', '0.05', '--work-dir']
    main(argv + [str(work)], prog='mmdet-gc study')
    out = capsys.readouterr()
    assert want in out.out
    assert (work / 'report.md').read_text() == want + '\n'
    warnings = [
        line for line in out.err.splitlines() if line.startswith('warning:')
    ]
    assert len(warnings) == 1 and str(named) in warnings[0], out.err
    assert 'Traceback' not in out.err


def test_malformed_metric_in_a_test_result(fake_study, capsys):
    path = fake_study / 'SGD_GC' / 'seed1' / 'shift-40' / \
        '20260101_000001' / '20260101_000001.json'
    metrics = json.loads(path.read_text())
    metrics['coco/bbox_mAP'] = 'high'
    metrics['coco/bbox_mAP_50'] = float('inf')
    path.write_text(json.dumps(metrics) + '\n')
    results = {(r.arm, r.seed): r for r in read_study(str(fake_study))}
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and str(path) in err[0]
    assert 'skipped 2 malformed values' in err[0]
    # That offset's box AP is unknown; the run and its plain test are kept.
    assert math.isnan(results[('SGD_GC', 1)].shifts[-40.])
    assert results[('SGD_GC', 1)].shifts[0.] == pytest.approx(0.33)
    assert results[('SGD_GC', 1)].status == 'ok'


def test_drift_file_keeps_its_valid_layers(fake_study, capsys):
    path = fake_study / 'base' / 'seed0' / 'row_mean_drift.json'
    layers = {
        'conv.weight': dict(max_drift=0.5, ndim=4),
        'fc.weight': dict(max_drift=float('nan'), ndim=2),  # diverged
        'a.weight': dict(max_drift='x', ndim=4),
        'b.weight': dict(max_drift=0.7, ndim=True),
        'c.weight': dict(max_drift=-1., ndim=4),
        'd.weight': [0.9, 4],
    }
    path.write_text(json.dumps(dict(iter=2, layers=layers), indent=1))
    drift = {(r.arm, r.seed): r.drift for r in read_study(str(fake_study))}
    assert drift[('base', 0)]['conv'] == 0.5
    assert math.isnan(drift[('base', 0)]['fc'])
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and str(path) in err[0]
    assert 'skipped 4 malformed layers' in err[0]


def test_no_valid_run_folder_is_one_line_error(tmp_path):
    from mmdet_gc.cli.study import main
    work = tmp_path / 'study'
    (work / 'base' / 'seedX').mkdir(parents=True)
    with pytest.raises(SystemExit) as e:
        main([DEMO, '--report-only', '--work-dir', str(work)])
    assert str(e.value.code).endswith('no runs (expected <arm>/seed<N>/)')


def test_report_files_replace_what_the_work_dir_holds(fake_study, tmp_path,
                                                      deadline):
    """A planted link is replaced, not written through; a folder in the
    way is a one-line error."""
    from mmdet_gc.cli.study import main
    target = tmp_path / 'victim.txt'
    target.write_text('keep')
    (fake_study / 'report.md').symlink_to(target)
    os.mkfifo(fake_study / 'report.json')
    write_report(str(fake_study))
    assert target.read_text() == 'keep'
    assert not (fake_study / 'report.md').is_symlink()
    assert json.load(open(fake_study / 'report.json'))['base'] == 'base'
    os.remove(fake_study / 'report.png')
    (fake_study / 'report.png').mkdir()
    with pytest.raises(SystemExit) as e:
        main([DEMO, '--report-only', '--work-dir', str(fake_study)])
    assert 'report.png: cannot write it' in str(e.value.code)
    assert sorted(os.listdir(fake_study)) == [
        'SGD_GC', 'base', 'report.json', 'report.md', 'report.png'
    ]


@pytest.mark.parametrize('flags,error', [
    (['--seeds', '-1'], '--seeds must be >= 0'),
    (['--shifts', '0', 'nan'], '--shifts must be finite'),
    (['--lr', '0.02', '0'], '--lr must be positive and finite'),
    (['--lr', 'inf'], '--lr must be positive and finite'),
    (['--lr', '0.02', '0.020'], '--lr has repeats'),
    (['--lr', '0.04', '0.08'], "--lr 0.04 is the config's own lr"),
    (['--lr', '0.08', '--cfg-options', 'optim_wrapper.optimizer.lr=0.08'
      ], "--lr 0.08 is the config's own lr"),
    (['--lr', '0.1234567'], 'at most 6 significant digits'),
    (['--gc', 'SGD_GC'], "the config's optimizer is SGD_GC already"),
])
def test_flags_that_name_unreadable_folders(tmp_path, flags, error):
    from mmdet_gc.cli.study import main
    with pytest.raises(SystemExit) as e:
        main([DEMO, '--work-dir', str(tmp_path / 'w'), *flags])
    assert error in str(e.value.code)
    assert not (tmp_path / 'w').exists()


def test_cli_report_only_on_a_damaged_study(tmp_path):
    """``python -m mmdet_gc study --report-only`` with every kind of damage
    at once: status 0, the report of the valid rest, one warning per
    damaged file or folder, no traceback."""
    want, _ = write_report(str(_fake_study(tmp_path / 'clean')), 0.05)
    work = _fake_study(tmp_path / 'study')
    # Damage to one file adds up (one warning); a later one replaces an
    # earlier one's file.
    named = {str(damage(work)) for damage in HARMLESS.values()}
    out = subprocess.run([
        sys.executable, '-m', 'mmdet_gc', 'study', DEMO, '--report-only',
        '--threshold', '0.05', '--work-dir',
        str(work)
    ],
                         cwd=ROOT,
                         env=ENV,
                         capture_output=True,
                         text=True,
                         timeout=120)  # a FIFO opened would wait forever
    assert out.returncode == 0 and 'Traceback' not in out.stderr, out.stderr
    assert want in out.stdout
    warnings = [
        line for line in out.stderr.splitlines() if line.startswith('warning:')
    ]
    assert len(warnings) == len(named), out.stderr
    assert {n for n in named if any(n in w for w in warnings)} == named


def test_the_docs_study_commands_share_one_study():
    """The documented studies, their --print-commands and their
    --report-only name the same study (work dir, arms, seeds, offsets,
    learning rates), so the report finds the runs."""
    import re
    import shlex

    from mmdet_gc.cli.study import parse_args

    from tool_helpers import ROOT
    text = open(osp.join(ROOT, 'docs', 'en', 'studies.md')).read()
    lines = ' '.join(re.findall(r'```bash\n(.*?)```', text,
                                re.S)).replace('\\\n', ' ').splitlines()
    runs = [
        # The tool's own arguments: no redirection, no comment.
        parse_args(
            shlex.split(
                line.replace('$CFG', 'c.py').split('>')[0], comments=True)[2:])
        for line in lines if line.strip().startswith('python tools/gc_study')
    ]
    studies = {}
    for r in runs:
        studies.setdefault(r.work_dir, []).append(r)
    assert len(studies) == 2  # the study, and a learning-rate sweep
    for work, group in studies.items():
        assert len(group) == 3, work
        assert {r.print_commands for r in group} == {True, False}, work
        assert any(r.report_only for r in group), work
        # The launcher may differ: one machine, or a cluster's lines.
        keys = [(r.gc, r.seeds, r.shifts, r.lr) for r in group]
        assert len(set(map(str, keys))) == 1, keys
    assert sum(bool(g[0].lr) for g in studies.values()) == 1


@pytest.mark.parametrize('optim_wrapper,lr', [
    (dict(optimizer=dict(lr=0.02)), 0.02),
    (None, None),
    (dict(optimizer=None), None),
    (dict(optimizer=dict(lr=10**400)), None),
    (dict(optimizer=dict(lr=True)), None),
    (dict(optimizer=dict(lr=float('nan'))), None),
])
def test_the_config_lr_of_odd_configs(optim_wrapper, lr):
    from mmengine.config import Config

    from mmdet_gc.cli.study import config_lr
    assert config_lr(Config(dict(optim_wrapper=optim_wrapper))) == lr
