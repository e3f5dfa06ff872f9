"""tools/train.py and tools/test.py end to end on tiny synthetic COCO data:
training with SGD_GC, checkpoints, COCO evaluation, resume, DDP (gloo, CPU),
AMP, ``--gc`` and clear errors on bad input."""
import glob
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config

from mmdet_gc.checkpoint import from_plain
from mmdet_gc.cli.config import apply_gc
from mmdet_gc.utils import InputError, mmdet_config_path

from tool_helpers import ENV, ROOT, load, run_tool, tiny_config

#: Iterations after which the tiny run below has learned its two images:
#: box / mask AP50 1.0 here (measured), where the same run after 30
#: iterations still has a box AP of 0: a model that learned nothing
#: cannot pass the bounds below.
LEARN_ITERS = 60


def test_train_then_test_reports_an_ap_only_learning_reaches(
        tmp_path, tmp_path_factory):
    """tools/train.py (with --auto-scale-lr) learns two images; tools/test.py
    reports, on those images, the box and mask AP of the last validation,
    far above what a model that learned nothing gets."""
    from mmdet_gc.datasets import make_synthetic_coco
    root = str(tmp_path_factory.mktemp('two_images'))
    make_synthetic_coco(root, num_train=2, num_val=1, size=64, max_objects=1)
    train_ann = osp.join(root, 'annotations', 'instances_train.json')
    extra = f"""
    val_dataloader = dict(dataset=dict(
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/')))
    test_dataloader = val_dataloader
    val_evaluator = dict(ann_file={train_ann!r})
    test_evaluator = val_evaluator
    train_cfg = dict(val_interval={LEARN_ITERS})
    param_scheduler = [dict(type='LinearLR', start_factor=0.1,
                            by_epoch=False, begin=0, end=10)]
    """
    cfg = tiny_config(tmp_path, root, max_iters=LEARN_ITERS, extra=extra)
    work = str(tmp_path / 'work')
    out = run_tool('tools/train.py', cfg, '--work-dir', work,
                   '--auto-scale-lr')
    assert f'Iter(train) [{LEARN_ITERS}/{LEARN_ITERS}]' in \
        out.stdout + out.stderr
    ckpt = osp.join(work, f'iter_{LEARN_ITERS}.pth')
    state = load(ckpt)  # our checkpoint loads under weights_only=True
    # --auto-scale-lr: the demo's lr 0.04 is for 4 images a batch
    # (auto_scale_lr.base_batch_size); this run takes 2.
    assert state['optimizer']['param_groups'][0]['initial_lr'] == 0.02
    assert type(state['optimizer']['param_groups'][0]['gc']) is bool
    assert any('momentum_buffer' in s
               for s in state['optimizer']['state'].values())
    pkl = str(tmp_path / 'preds.pkl')
    run_tool('tools/test.py', cfg, ckpt, '--work-dir', work, '--out', pkl)
    logs = sorted(glob.glob(osp.join(work, '*', '*.json')), key=osp.getmtime)
    val = [
        json.loads(line) for line in open(logs[0]).read().splitlines()
        if 'coco/bbox_mAP' in line
    ][-1]
    test = json.loads(open(logs[-1]).read().strip().splitlines()[-1])
    for key in ('coco/bbox_mAP_50', 'coco/segm_mAP_50'):
        assert test[key] >= 0.9, (key, test[key])
    for key in ('coco/bbox_mAP', 'coco/segm_mAP'):
        assert test[key] >= 0.5, (key, test[key])
        assert test[key] == val[key], key  # the same model, the same images
    assert osp.getsize(pkl) > 0


def _params_and_buffers(ckpt):
    state = load(ckpt)
    bufs = [
        s['momentum_buffer']
        for _, s in sorted(state['optimizer']['state'].items())
    ]
    return state['state_dict'], bufs


def _runtime_info(ckpt):
    return from_plain(load(ckpt)['message_hub']['runtime_info'])


def _history(ckpt):
    """The message hub's logged history, as MMEngine will resume it."""
    hub = from_plain(load(ckpt)['message_hub'])
    return {
        k: (v._log_history, v._count_history)
        for k, v in hub['log_scalars'].items()
    }


def test_resume_continues_exactly(tmp_path, data_root):
    straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
    cfg6 = tiny_config(tmp_path, data_root, max_iters=6, interval=3)
    run_tool('tools/train.py', cfg6, '--work-dir', straight)
    cfg3 = tiny_config(tmp_path / '..', data_root, max_iters=3)
    run_tool('tools/train.py', cfg3, '--work-dir', resumed)
    run_tool('tools/train.py', cfg6, '--work-dir', resumed, '--resume')
    final = [osp.join(w, 'iter_6.pth') for w in (straight, resumed)]
    p1, b1 = _params_and_buffers(final[0])
    p2, b2 = _params_and_buffers(final[1])
    assert p1.keys() == p2.keys()
    for k in p1:
        assert torch.equal(p1[k], p2[k]), k
    assert len(b1) == len(b2) > 0
    for x, y in zip(b1, b2):
        assert torch.equal(x, y)
    assert [load(c)['meta']['iter'] for c in final] == [6, 6]
    # The logged history (what the logger smooths and save_best reads)
    # carries over: losses and lr bit for bit, six entries each; only the
    # wall-clock timings differ between the runs.
    h1, h2 = _history(final[0]), _history(final[1])
    assert h1.keys() == h2.keys() and 'train/loss' in h1
    for key in h1:
        assert h1[key][0].dtype == h2[key][0].dtype, key
        assert len(h1[key][0]) == len(h2[key][0]) == 6, key
        if 'time' not in key:
            assert np.array_equal(h1[key][0], h2[key][0]), key
            assert np.array_equal(h1[key][1], h2[key][1]), key
    # ...and the 3-iteration checkpoint really differs from the final one.
    p3, _ = _params_and_buffers(osp.join(straight, 'iter_3.pth'))
    assert not all(torch.equal(p3[k], p1[k]) for k in p1)


def test_save_best_survives_resume(tmp_path, data_root):
    extra = """
    train_cfg = dict(val_interval=2)
    default_hooks = dict(checkpoint=dict(save_best='coco/bbox_mAP'))
    model = dict(test_cfg=dict(rcnn=dict(max_per_img=5)))
    """
    work = str(tmp_path / 'work')
    cfg2 = tiny_config(tmp_path, data_root, max_iters=2, extra=extra)
    run_tool('tools/train.py', cfg2, '--work-dir', work)
    info = _runtime_info(osp.join(work, 'iter_2.pth'))
    best = info['best_ckpt']
    assert osp.basename(best) == 'best_coco_bbox_mAP_iter_2.pth'
    assert osp.isfile(best)
    cfg4 = tiny_config(tmp_path / '..', data_root, max_iters=4, extra=extra)
    run_tool('tools/train.py', cfg4, '--work-dir', work, '--resume')
    info4 = _runtime_info(osp.join(work, 'iter_4.pth'))
    # The resumed run knows the best so far: it keeps or replaces it.
    assert info4['best_score'] >= info['best_score']
    assert osp.isfile(info4['best_ckpt'])
    bests = glob.glob(osp.join(work, 'best_*.pth'))
    assert bests == [info4['best_ckpt']]


@pytest.mark.parametrize('launch', ['dist_train.sh', 'torchrun -m'])
def test_ddp_two_processes_on_cpu_stay_in_sync(launch, tmp_path, data_root):
    """tools/dist_train.sh, and torchrun of the installed command
    (``torchrun -m mmdet_gc train``, what a wheel user runs)."""
    cfg = tiny_config(
        tmp_path,
        data_root,
        max_iters=3,
        extra="""
        custom_imports = dict(
            imports=['mmdet_gc', 'ddp_probe'], allow_failed_imports=False)
        custom_hooks = [dict(type='DumpParamsHook')]
        """)
    work = str(tmp_path / 'ddp')
    env = dict(
        ENV,
        PYTHON=sys.executable,
        PORT='29517',
        PYTHONPATH=osp.join(ROOT, 'tests'))
    if launch == 'dist_train.sh':
        cmd = ['bash', 'tools/dist_train.sh', cfg, '2', '--work-dir', work]
    else:
        cmd = [
            sys.executable, '-m', 'torch.distributed.run',
            '--nproc_per_node=2', f'--master_port={env["PORT"]}', '-m',
            'mmdet_gc', 'train', cfg, '--launcher', 'pytorch', '--work-dir',
            work
        ]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'Distributed launcher: pytorch' in proc.stdout + proc.stderr
    r0 = torch.load(osp.join(work, 'params_rank0.pth'))
    r1 = torch.load(osp.join(work, 'params_rank1.pth'))
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    # The checkpoint (written by rank 0) holds those same weights.
    ckpt = load(osp.join(work, 'iter_3.pth'))['state_dict']
    assert torch.equal(ckpt['backbone.conv1.weight'],
                       r0['backbone.conv1.weight'])


def test_amp(tmp_path, data_root):
    cfg = tiny_config(tmp_path, data_root, max_iters=2)
    work = str(tmp_path / 'amp')
    if not torch.cuda.is_available():
        proc = run_tool(
            'tools/train.py', cfg, '--work-dir', work, '--amp', ok=False)
        assert proc.returncode != 0
        assert '--amp needs a CUDA' in proc.stderr
        assert not osp.exists(work)
        # MMEngine's AmpOptimWrapper itself, on the CPU: tests/test_amp.py.
        return
    run_tool('tools/train.py', cfg, '--work-dir', work, '--amp')
    assert osp.isfile(osp.join(work, 'iter_2.pth'))


def test_gc_flag_switches_any_mmdet_config():
    cfg = Config.fromfile(
        mmdet_config_path('faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'))
    before = cfg.optim_wrapper.to_dict()
    apply_gc(cfg, 'SGD_GCC')
    after = cfg.optim_wrapper.to_dict()
    assert after['optimizer'].pop('type') == 'SGD_GCC'
    assert before['optimizer'].pop('type') == 'SGD'
    assert after == before  # lr, momentum, weight decay, clipping kept
    detr = Config.fromfile(
        mmdet_config_path('detr/detr_r50_8xb2-150e_coco.py'))
    apply_gc(detr, 'AdamW_GC2')
    assert detr.optim_wrapper.optimizer.type == 'AdamW_GC2'
    with pytest.raises(InputError, match='AdamW'):
        apply_gc(detr, 'SGD_GC')
    with pytest.raises(InputError, match='SGD_GC, SGD_GCC'):
        apply_gc(cfg, 'SGD_GCX')


def test_gc_flag_on_a_fused_config(capsys):
    """Every GC optimizer has a fused step: a config's fused=True carries
    over (SGD and AdamW with kernels of ours, Adagrad with torch's)."""
    cfg = Config.fromfile(
        mmdet_config_path('faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'))
    detr = Config.fromfile(
        mmdet_config_path('detr/detr_r50_8xb2-150e_coco.py'))
    ada = Config(
        dict(
            optim_wrapper=dict(
                optimizer=dict(type='Adagrad', lr=0.01, fused=True))))
    for config, name in ((cfg, 'SGD_GC'), (detr, 'AdamW_GC2'), (ada,
                                                                'Adagrad_GC')):
        config.optim_wrapper.optimizer.fused = True
        apply_gc(config, name)
        assert config.optim_wrapper.optimizer.fused is True
        assert config.optim_wrapper.optimizer.type == name
    assert capsys.readouterr().err == ''


@pytest.fixture
def work_with_checkpoint(tmp_path):
    work = tmp_path / 'work'
    work.mkdir()
    (work / 'iter_3.pth').write_bytes(b'precious')
    return work


BAD = {
    'missing annotation file': ([
        '--cfg-options',
        'train_dataloader.dataset.ann_file=annotations/nope.json'
    ], 'annotation file not found'),
    'missing image folder':
    (['--cfg-options', 'train_dataloader.dataset.data_prefix.img=nope/'],
     'image folder not found'),
    'unknown optimizer type':
    (['--cfg-options', 'optim_wrapper.optimizer.type=SGD_GX'],
     "unknown optimizer type 'SGD_GX'.*SGD_GC, SGD_GCC, SGDW_GC"),
    'unknown --gc value':
    (['--gc', 'Adam_GCC3'], "unknown GC optimizer 'Adam_GCC3'.*Adam_GCC2"),
    'missing resume checkpoint':
    (['--resume', 'nope/iter_9.pth'], 'checkpoint not found: nope/iter_9.pth'),
}


@pytest.mark.parametrize('case', list(BAD))
def test_bad_input_fails_early_and_keeps_checkpoints(case, tmp_path, data_root,
                                                     work_with_checkpoint):
    import re
    flags, message = BAD[case]
    cfg = tiny_config(tmp_path, data_root)
    proc = run_tool(
        'tools/train.py',
        cfg,
        '--work-dir',
        str(work_with_checkpoint),
        *flags,
        ok=False)
    assert proc.returncode != 0
    assert re.search(message, proc.stderr, re.S), proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr
    assert sorted(os.listdir(work_with_checkpoint)) == ['iter_3.pth']
    assert (work_with_checkpoint / 'iter_3.pth').read_bytes() == b'precious'


def test_test_tool_with_missing_checkpoint(tmp_path, data_root):
    cfg = tiny_config(tmp_path, data_root)
    proc = run_tool('tools/test.py', cfg, 'nope.pth', ok=False)
    assert proc.returncode != 0
    assert 'test checkpoint not found: nope.pth' in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_resume_under_another_optimizer_says_so(tmp_path, data_root):
    """SGD -> SGD_GC and SGD_GC -> SGD_GCC are changes of experiment:
    ``--resume`` names the GC switches that differ and stops; with
    ``--resume-with-config`` each resumes with one warning, and the
    config's optimizer and GC switches are used from there on."""
    work = str(tmp_path / 'work')
    cfg2 = tiny_config(tmp_path, data_root, max_iters=2)
    run_tool('tools/train.py', cfg2, '--work-dir', work, '--cfg-options',
             'optim_wrapper.optimizer.type=SGD')
    assert load(osp.join(work, 'iter_2.pth'))['meta']['optimizer_type'] \
        == 'SGD'
    cfg3 = tiny_config(tmp_path / '..', data_root, max_iters=3)
    stopped = run_tool(
        'tools/train.py', cfg3, '--work-dir', work, '--resume', ok=False)
    assert stopped.returncode == 1
    assert 'optimizer.param_groups[0].gc: file (none), config True' in \
        stopped.stderr, stopped.stderr
    out = run_tool('tools/train.py', cfg3, '--work-dir', work, '--resume',
                   '--resume-with-config')
    log = out.stdout + out.stderr
    assert log.count('trained with SGD under SGD_GC') == 1, log[-3000:]
    cfg4 = tiny_config(tmp_path / '../..', data_root, max_iters=4)
    out = run_tool(
        'tools/train.py',
        cfg4,
        '--work-dir',
        work,
        '--resume',
        '--resume-with-config',
        '--gc',
        'SGD_GCC',
        env=dict(ENV, PYTHONWARNINGS='default'))  # ENV silences warnings
    log = out.stdout + out.stderr
    assert 'trained with SGD_GC under SGD_GCC' in log, log[-3000:]
    assert '--resume-with-config: optimizer.param_groups[0].gc_conv_only: ' \
        "file False, config True; the config's value is used" in log
    state = load(osp.join(work, 'iter_4.pth'))
    assert state['optimizer']['param_groups'][0]['gc_conv_only'] is True
