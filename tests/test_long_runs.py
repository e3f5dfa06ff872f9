"""Long runs: a run killed (SIGKILL) or signalled (SIGTERM, SIGUSR1) at a
random moment and resumed ends bitwise equal to the run never interrupted,
in the iteration- and the epoch-based loop, mid-epoch and with dataloader
workers; checkpoints are written whole (the package's runs must survive
preemption for a paired GC comparison to measure GC, Yong et al., ECCV
2020)."""
import glob
import json
import os
import os.path as osp
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from tool_helpers import (ENV, ROOT, load, run_resume_cases, run_tool,
                          tiny_config)

# Random augmentation (RandomFlip), random RPN / R-CNN sampling, a shuffled
# sampler and a scheduler list: every random state a run draws from.
RANDOM = """
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(64, 64), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
model = dict(train_cfg=dict(rpn=dict(sampler=dict(num=32)),
                            rcnn=dict(sampler=dict(num=16))))
train_dataloader = dict(num_workers={workers},
                        persistent_workers={persistent},
                        dataset=dict(pipeline=train_pipeline))
randomness = dict(seed=0, deterministic=True)
"""
ITER = RANDOM + """
train_cfg = dict(max_iters=8)
default_hooks = dict(checkpoint=dict(interval=2))
"""
# 8 images in batches of 2: 4 iterations an epoch; a resume point after
# every iteration, so that a kill lands mid-epoch; the lr steps at an epoch.
EPOCH = RANDOM + """
train_cfg = dict(_delete_=True, type='EpochBasedTrainLoop', max_epochs=2,
                 val_interval=100)
train_dataloader = dict(sampler=dict(_delete_=True, type='DefaultSampler',
                                     shuffle=True))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.5, by_epoch=False, begin=0, end=3),
    dict(type='MultiStepLR', by_epoch=True, begin=0, end=2, milestones=[1],
         gamma=0.5)
]
default_hooks = dict(checkpoint=dict(by_epoch=True, interval=1,
                                     resume_interval=1))
"""


def _config(tmp_path, data_root, text, workers=0, persistent=False):
    folder = tmp_path / f'cfg{random.randrange(10**9)}'
    folder.mkdir()
    return tiny_config(folder, data_root, max_iters=8, extra=text.format(
        workers=workers, persistent=persistent))


def _final(work):
    return load(osp.join(work, open(osp.join(work,
                                             'last_checkpoint')).read()))


@pytest.fixture(scope='module')
def straight(tmp_path_factory, data_root):
    """The uninterrupted runs, one of each loop."""
    tmp = tmp_path_factory.mktemp('straight')
    out = {}
    for name, text in (('iter', ITER), ('epoch', EPOCH)):
        work = str(tmp / name)
        cfg = _config(tmp, data_root, text)
        run_tool('tools/train.py', cfg, '--work-dir', work)
        out[name] = _final(work)
        out[f'{name}_cfg'] = cfg
        out[f'{name}_paths'] = {
            osp.basename(p): p
            for p in glob.glob(osp.join(work, '*.pth'))
        }
    return out


def _assert_same_run(a, b):
    assert a['meta']['iter'] == b['meta']['iter']
    assert a['state_dict'].keys() == b['state_dict'].keys()
    differ = [k for k in a['state_dict']
              if not torch.equal(a['state_dict'][k], b['state_dict'][k])]
    assert not differ, f'{len(differ)} tensors differ, e.g. {differ[:3]}'
    sa, sb = a['optimizer']['state'], b['optimizer']['state']
    assert sa.keys() == sb.keys() and sa
    for k in sa:
        assert torch.equal(sa[k]['momentum_buffer'], sb[k]['momentum_buffer'])
    assert a['optimizer']['param_groups'][0]['lr'] == \
        b['optimizer']['param_groups'][0]['lr']


def _start(cfg, work, *flags):
    return subprocess.Popen(
        [sys.executable, 'tools/train.py', cfg, '--work-dir', work, *flags],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)


def _interrupt(cfg, work, sig, after, delay, *flags):
    """Start a run, send ``sig`` ``delay`` seconds after a checkpoint
    matching ``after`` appears; its exit status."""
    proc = _start(cfg, work, *flags)
    deadline = time.monotonic() + 300
    while not glob.glob(osp.join(work, after)):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(delay)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


def _resume_until_done(cfg, work, final_iter):
    for _ in range(3):
        run_tool('tools/train.py', cfg, '--work-dir', work, '--resume')
        if _final(work)['meta']['iter'] == final_iter:
            return _final(work)
    raise AssertionError('the resumed run did not finish')


# Validating every 4 iterations trains exactly as never validating: the
# reference is the run without validation, and the kill lands in or
# around the validation after iteration 4.
VALIDATED = ITER + """
train_cfg = dict(val_interval=4)
"""


@pytest.mark.parametrize('loop, workers, persistent, validated', [
    ('iter', 0, False, False),
    ('iter', 2, True, False),
    ('iter', 0, False, True),
    ('epoch', 2, False, False),
])
def test_killed_at_a_random_moment_resumes_bitwise(loop, workers, persistent,
                                                   validated, straight,
                                                   tmp_path, data_root):
    text = EPOCH if loop == 'epoch' else VALIDATED if validated else ITER
    cfg = _config(tmp_path, data_root, text, workers, persistent)
    work = str(tmp_path / 'work')
    after = {'epoch': 'resume_iter_*.pth', 'iter': 'iter_2.pth'}[loop]
    if validated:
        after = 'iter_4.pth'
    code, err = _interrupt(cfg, work, signal.SIGKILL, after,
                           random.uniform(0, 0.6 if validated else 1.0))
    assert code == -signal.SIGKILL, err[-2000:]
    _assert_same_run(_resume_until_done(cfg, work, 8), straight[loop])
    # Nothing half-written under a final name, no temporary file left
    # behind by a finished run.
    assert not glob.glob(osp.join(work, '.*.tmp'))


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGUSR1])
def test_preemption_signal_saves_exits_and_resumes_bitwise(
        sig, straight, tmp_path, data_root):
    cfg = _config(tmp_path, data_root, ITER)
    work = str(tmp_path / 'work')
    code, err = _interrupt(cfg, work, sig, 'iter_2.pth',
                           random.uniform(0, 0.5))
    assert code == 75, err[-2000:]
    assert 'holds it; --resume continues from there' in err
    pointer = open(osp.join(work, 'last_checkpoint')).read()
    stopped = load(pointer)['meta']['iter']
    assert 2 <= stopped < 8
    _assert_same_run(_resume_until_done(cfg, work, 8), straight['iter'])


def test_skipped_batches_load_no_sample():
    """Starting 3 batches in draws their indices only: the dataset is asked
    for no sample of a skipped batch, and each sample knows its place in
    the stream."""
    from torch.utils.data import DataLoader

    from mmdet_gc.engine.runner.data_position import positioned_dataloader

    class Recording(torch.utils.data.Dataset):
        asked = []

        def __len__(self):
            return 10

        def __getitem__(self, index):
            self.asked.append(int(index))
            return index

    loader = positioned_dataloader(
        DataLoader(Recording(), batch_size=2, collate_fn=list), seed=0,
        rank=0)
    loader.batch_sampler.skip = 3
    batches = list(loader)
    assert [list(map(int, b)) for b in batches] == [[6, 7], [8, 9]]
    assert Recording.asked == [6, 7, 8, 9]
    # The next pass starts at its first batch; each index knows its place
    # (rank, epoch, position), from which its sample's seed comes.
    assert [b[0].key for b in loader.batch_sampler] == [(0, 0, p)
                                                        for p in (0, 2, 4,
                                                                  6, 8)]


def test_atomic_writes_leave_old_file_or_new_file(tmp_path):
    """A writer killed at random moments while it rewrites a file through
    the atomic backend never leaves a truncated file under its name."""
    path = tmp_path / 'ckpt.pth'
    code = f"""
import sys, torch, io
sys.path.insert(0, {ROOT!r})
from mmdet_gc.utils.atomic_file import AtomicLocalBackend
backend = AtomicLocalBackend()
i = 0
while True:
    buf = io.BytesIO()
    torch.save({{'i': i, 'x': torch.full((2_000_000,), float(i))}}, buf)
    backend.put(buf.getvalue(), {str(path)!r})
    i += 1
"""
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, '-c', code])
        while not path.exists():
            time.sleep(0.01)
        time.sleep(random.uniform(0, 0.5))
        proc.kill()
        proc.wait()
        state = torch.load(path)
        assert torch.equal(state['x'],
                           torch.full((2_000_000, ), float(state['i'])))
        for tmp in glob.glob(str(tmp_path / '.ckpt.pth.*.tmp')):
            os.remove(tmp)  # what a kill mid-write leaves: not a final name


# A file whose settings or weights are not the config's: each case through
# tools/train.py --resume (tool_helpers.run_resume_cases), then
# --resume-with-config.


def _tampered(ckpt, case):
    import copy
    ckpt = copy.deepcopy(ckpt)
    group = ckpt['optimizer']['param_groups'][0]
    steps = ckpt['param_schedulers'][1]
    weights = ckpt['state_dict']
    first = next(iter(weights))
    lines = {
        'maximize': ['optimizer.param_groups[0].maximize: file True, '
                     'config False'],
        'dampening': ['optimizer.param_groups[0].dampening: file 0.5, '
                      'config 0.0'],
        'lr': ['optimizer.param_groups[0].initial_lr: file 0.08, config '
               '0.04', 'param_schedulers[0].base_values: file (0.08,), '
               'config (0.04,)', 'param_schedulers[1].base_values: file '
               '(0.08,), config (0.04,)', 'optimizer.param_groups[0].lr: '
               f'file {group["lr"] * 2!r}, the config\'s schedule at '
               f'iteration 4 {group["lr"]!r}'],
        'current lr': ['optimizer.param_groups[0].lr: file 0.5, the '
                       "config's schedule at iteration 4"],
        'scheduler counter': ['param_schedulers[1].last_step: file 319, '
                              "the config's schedule at iteration 4 4"],
        'numpy position': ['resume_state.random[0] numpy state is '
                           'malformed'],
        'override lines': ['meta.resumed_with_config is not a list of '
                           'short printable lines'],
        'gamma and milestones': [
            'param_schedulers[1].gamma: file 0.5, config 0.1',
            'param_schedulers[1].milestones: file {3: 1}, config {320: 1}'
        ],
        'gc switch': ['optimizer.param_groups[0].gc: file False, config '
                      'True'],
        'nan weight': [f'state_dict.{first} holds values that are not '
                       'finite'],
        'missing weight': [f'state_dict.{first} is missing'],
        'weight shape': [f'state_dict.{first} is a torch.float32 tensor of '
                         'shape (1,)'],
        'random state': ['resume_state.random[0] numpy state is malformed'],
    }[case]
    if case == 'maximize':
        group['maximize'] = True
    elif case == 'dampening':
        group['dampening'] = 0.5
    elif case == 'lr':
        group['initial_lr'], group['lr'] = 0.08, group['lr'] * 2
        for state in ckpt['param_schedulers']:
            state['base_values'] = [0.08]
    elif case == 'gamma and milestones':
        steps['gamma'], steps['milestones'] = 0.5, {3: 1}
    elif case == 'gc switch':
        group['gc'] = False
    elif case == 'nan weight':
        weights[first] = weights[first].clone()
        weights[first].view(-1)[0] = float('nan')
    elif case == 'missing weight':
        del weights[first]
    elif case == 'weight shape':
        weights[first] = torch.zeros(1)
    elif case == 'random state':
        ckpt['resume_state']['random'][0]['numpy']['keys'] = torch.zeros(3)
    elif case == 'current lr':
        group['lr'] = 0.5
    elif case == 'scheduler counter':
        steps['last_step'] = 319
    elif case == 'numpy position':
        ckpt['resume_state']['random'][0]['numpy']['pos'] = 10**6
    elif case == 'override lines':
        ckpt['meta']['resumed_with_config'] = ['x\nFAKE: ok\x1b[2J']
    return ckpt, lines


TAMPER_CASES = [
    'maximize', 'dampening', 'lr', 'current lr', 'scheduler counter',
    'gamma and milestones', 'gc switch', 'nan weight', 'missing weight',
    'weight shape', 'random state', 'numpy position', 'override lines'
]
ONE_LINE = ('nan weight', 'missing weight', 'weight shape', 'random state',
            'numpy position', 'override lines')


def test_tampered_files_stop_with_a_line_per_field(straight, tmp_path):
    base = load(straight['iter_paths']['iter_4.pth'])
    files, expected = {}, {}
    for case in TAMPER_CASES:
        path = str(tmp_path / f'{len(files)}.pth')
        ckpt, expected[case] = _tampered(base, case)
        torch.save(ckpt, path)
        files[case] = path
    out = run_resume_cases(straight['iter_cfg'], tmp_path, files)
    for case in TAMPER_CASES:
        message, _ = out[case]
        assert 'Traceback' not in message, case
        assert message.startswith('train.py: error: --resume'), message
        for line in expected[case]:
            assert line in message, (case, message)
        if case in ONE_LINE:
            assert '\n' not in message, (case, message)
        else:  # one line per field, and the way on
            assert message.count('\n') == len(expected[case]) + 1, message
            assert message.endswith('pass --resume-with-config to go on '
                                    "with the config's values"), message


def test_position_not_of_this_run_stops_in_one_line(straight, tmp_path):
    """An epoch-end file that says it is 2 batches into the next epoch:
    one line, nothing trained, the work dir's files untouched."""
    ckpt = load(straight['epoch_paths']['epoch_1.pth'])
    ckpt['resume_state']['batch'] = 2
    work = tmp_path / 'work'
    work.mkdir()
    (work / 'iter_9.pth').write_bytes(b'precious')
    path = str(tmp_path / 'moved.pth')
    torch.save(ckpt, path)
    # The schedule replayed with the file's position disagrees with the
    # file's scheduler counters: stopped before the run is built...
    proc = run_tool('tools/train.py', straight['epoch_cfg'], '--work-dir',
                    str(work), '--resume', path, ok=False)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    assert "param_schedulers[1]._global_step: file 1, the config's " \
        'schedule at iteration 4 2' in proc.stderr, proc.stderr
    assert sorted(os.listdir(work)) == ['iter_9.pth']
    # ... and with the config's schedule taken, the position itself does
    # not fit this run's epochs: one line before the first iteration.
    proc = run_tool('tools/train.py', straight['epoch_cfg'], '--work-dir',
                    str(work), '--resume', path, '--resume-with-config',
                    ok=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert 'Traceback' not in proc.stderr
    assert "the checkpoint's position, batch 2 of epoch 2 at iteration 4, " \
        'is not one of this run, whose epochs have 4 batches' in last, last
    assert (work / 'iter_9.pth').read_bytes() == b'precious'
    assert glob.glob(str(work / '*.pth')) == [str(work / 'iter_9.pth')]


def test_resume_with_config_takes_the_config_and_says_so(straight, tmp_path):
    """A file of lr 0.08 resumed under the config's 0.04: the weights,
    moments and counters are the file's, the lr the config's schedule at
    that step (half the file's), each override logged and recorded."""
    ckpt, _ = _tampered(load(straight['iter_paths']['iter_4.pth']), 'lr')
    work = tmp_path / 'work'
    work.mkdir()
    path = str(work / 'iter_4.pth')
    torch.save(ckpt, path)
    with pytest.raises(AssertionError, match='--resume-with-config'):
        run_tool('tools/train.py', straight['iter_cfg'], '--work-dir',
                 str(work), '--resume', path)
    proc = run_tool('tools/train.py', straight['iter_cfg'], '--work-dir',
                    str(work), '--resume', path, '--resume-with-config')
    assert '--resume-with-config: optimizer.param_groups[0].initial_lr: ' \
        'file 0.08, config 0.04' in proc.stdout + proc.stderr
    final = load(str(work / 'iter_8.pth'))
    assert 'optimizer.param_groups[0].initial_lr: file 0.08, config 0.04' \
        in final['meta']['resumed_with_config']
    # Same schedule and start as the uninterrupted run: the same lr, and
    # the weights carried on from the file's.
    assert final['optimizer']['param_groups'][0]['initial_lr'] == 0.04
    # mmdet-gc report lists what the run took from its config.
    from mmdet_gc.study import markdown_table, read_run
    table = markdown_table([read_run(str(work))])
    assert "Resumed with the config's settings" in table
    assert '- work: optimizer.param_groups[0].initial_lr: file 0.08, ' \
        'config 0.04' in table
    # The file was the uninterrupted run's, its lr doubled: taken back to
    # the config's, the run goes on as that run did, bit for bit.
    _assert_same_run(final, straight['iter'])


def test_unreadable_newest_checkpoint_resumes_from_the_newest_intact(
        straight, tmp_path):
    import shutil
    work = tmp_path / 'work'
    shutil.copytree(osp.dirname(straight['iter_paths']['iter_4.pth']), work)
    for name in ('iter_6.pth', 'iter_8.pth'):
        os.remove(work / name)
    # iter_6.pth truncated by another tool, and last_checkpoint names it.
    data = open(straight['iter_paths']['iter_6.pth'], 'rb').read()
    (work / 'iter_6.pth').write_bytes(data[:len(data) // 2])
    (work / 'last_checkpoint').write_text(str(work / 'iter_6.pth'))
    proc = run_tool('tools/train.py', straight['iter_cfg'], '--work-dir',
                    str(work), '--resume')
    skipped = [x for x in proc.stderr.splitlines() if 'skipping' in x]
    assert len(skipped) == 1 and 'iter_6.pth' in skipped[0], proc.stderr
    _assert_same_run(load(str(work / 'iter_8.pth')), straight['iter'])


def test_interrupted_study_reports_as_the_uninterrupted_one(tmp_path,
                                                            data_root):
    """``mmdet-gc study`` end to end: base (torch SGD) vs SGD_GC, paired in
    the report, the GC arm's row means kept (an offset's evaluation:
    ``tests/test_study.py``).
    Killed (the whole process group, as a cluster does) in the middle of a
    run's training, it resumes that run, and its report equals the report
    of the study never interrupted; run again, it trains nothing."""
    cfg = _config(tmp_path, data_root, RANDOM + """
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.02))
train_cfg = dict(max_iters=4)
default_hooks = dict(checkpoint=dict(interval=2))
custom_hooks = [dict(type='PlainCheckpointHook'),
                dict(type='RowMeanDriftHook')]
""")
    args = [cfg, '--gc', 'SGD_GC', '--seeds', '0', '--shifts', '0']
    straight, killed = tmp_path / 'straight', tmp_path / 'killed'
    out = run_tool('tools/gc_study.py', *args, '--work-dir', str(straight))
    assert 'run 2/2' in out.stdout
    # What MMEngine and the hook wrote reads without a skip.
    assert 'warning:' not in out.stderr
    summary = json.load(open(straight / 'report.json'))
    assert summary['paired']['SGD_GC']['coco/bbox_mAP']['n'] == 1
    for arm in ('base', 'SGD_GC'):
        assert summary['arms'][arm]['failed'] == 0
        assert set(summary['arms'][arm]['shift_bbox_mAP']) == {'0'}
    gc = summary['arms']['SGD_GC']['max_row_mean_drift']
    base = summary['arms']['base']['max_row_mean_drift']
    assert gc['conv'] < 1e-6 and gc['fc'] < 1e-6
    assert base['conv'] > 100 * gc['conv']
    proc = subprocess.Popen(
        [sys.executable, 'tools/gc_study.py', *args, '--work-dir',
         str(killed)], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not glob.glob(str(killed / 'SGD_GC' / 'seed0' / 'iter_2.pth')):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(random.uniform(0, 0.5))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / 'report.json').exists()
    out = run_tool('tools/gc_study.py', *args, '--work-dir', str(killed))
    assert '1 were done before' in out.stdout, out.stdout
    reports = [json.load(open(w / 'report.json')) for w in (straight, killed)]
    # As text: a NaN (the std of one seed) equals itself there.
    for part in ('paired', 'arms'):
        assert json.dumps(reports[0][part], sort_keys=True) == \
            json.dumps(reports[1][part], sort_keys=True), part
    again = run_tool('tools/gc_study.py', *args, '--work-dir', str(killed))
    assert '0 run(s)' in again.stdout and '2 were done before' in again.stdout


# MMEngine's AmpOptimWrapper on the CPU (its GPU check patched, a CPU
# GradScaler), fused SGD_GC and a scheduler list, on a small model with
# dropout and a random augmentation, through MMEngine's Runner in-process.
AMP_RUN = r'''
import json, sys
import numpy as np
import torch
from torch import nn
from mmengine.model import BaseModel
from mmengine.optim.optimizer import amp_optimizer_wrapper as amp
from mmengine.runner import Runner
import mmdet_gc  # noqa: F401

amp.is_cuda_available = lambda: True
_init = amp.AmpOptimWrapper.__init__


def init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self.loss_scaler = torch.amp.GradScaler('cpu', init_scale=2.**8)


amp.AmpOptimWrapper.__init__ = init


class Flipped(torch.utils.data.Dataset):
    def __len__(self):
        return 12

    def __getitem__(self, i):
        x = (torch.arange(12.).reshape(1, 3, 4) + i) / 12
        if np.random.rand() < 0.5:  # a random flip, as RandomFlip draws
            x = x.flip(-1)
        return dict(inputs=x, target=torch.tensor(float(i % 3)))


class Net(BaseModel):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(48, 1)

    def forward(self, inputs, target, mode='loss'):
        x = self.drop(self.conv(torch.stack(inputs)).relu()).flatten(1)
        loss = (self.fc(x).squeeze(1) - torch.stack(target)).pow(2).mean()
        return dict(loss=loss)


work, iters, resume = sys.argv[1], int(sys.argv[2]), sys.argv[3] == '1'
torch.manual_seed(0)  # the model is built here, before the runner seeds
runner = Runner(
    model=Net(), work_dir=work,
    train_dataloader=dict(dataset=Flipped(), batch_size=3, num_workers=0,
                          sampler=dict(type='DefaultSampler', shuffle=True),
                          collate_fn=dict(type='pseudo_collate')),
    train_cfg=dict(type='ResumableEpochBasedTrainLoop', max_epochs=iters),
    optim_wrapper=dict(type='AmpOptimWrapper', dtype='bfloat16',
                       optimizer=dict(type='SGD_GC', lr=0.01, momentum=0.9,
                                      fused=True)),
    param_scheduler=[
        dict(type='LinearLR', start_factor=0.5, by_epoch=False, end=3),
        dict(type='MultiStepLR', by_epoch=True, begin=0, end=3,
             milestones=[1], gamma=0.5)
    ],
    default_hooks=dict(checkpoint=dict(type='ResumableCheckpointHook',
                                       interval=1, resume_interval=1)),
    custom_hooks=[dict(type='PlainCheckpointHook')],
    randomness=dict(seed=0), resume=resume, default_scope='mmengine')
runner.train()
'''


def test_amp_fused_and_scheduler_list_resume_bitwise(tmp_path):
    def train(work, epochs, resume=False):
        run_tool('-c', AMP_RUN, str(work), str(epochs), str(int(resume)))

    train(tmp_path / 'straight', 3)
    train(tmp_path / 'resumed', 1)  # stops after the first epoch...
    train(tmp_path / 'resumed', 3, resume=True)  # ... and goes on
    a, b = (load(str(tmp_path / w / 'epoch_3.pth'))
            for w in ('straight', 'resumed'))
    assert set(a['state_dict']) == set(b['state_dict'])
    for k in a['state_dict']:
        assert torch.equal(a['state_dict'][k], b['state_dict'][k]), k
    assert a['optimizer']['loss_scaler'] == b['optimizer']['loss_scaler']
    sa, sb = a['optimizer']['state'], b['optimizer']['state']
    for k in sa:
        assert torch.equal(sa[k]['momentum_buffer'], sb[k]['momentum_buffer'])
    # ...and dropout and the flips drew random numbers: another seed trains
    # to other weights.
    assert a['resume_state']['random'][0]['torch'].numel() > 0


@pytest.mark.parametrize('status, requeued, exit_status', [(75, True, 0),
                                                           (0, False, 0),
                                                           (1, False, 1)])
def test_slurm_script_requeues_a_preempted_run(status, requeued,
                                               exit_status, tmp_path):
    """``tools/slurm_requeue.sh`` passes ``--resume`` and requeues its job
    exactly when the run exits with the preempted status (75). ``srun`` and
    ``scontrol`` are stand-ins that record their arguments."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    log = tmp_path / 'calls'
    (bin_dir / 'srun').write_text(
        f'#!/bin/sh\necho "srun $*" >> {log}\nexit {status}\n')
    (bin_dir / 'scontrol').write_text(
        f'#!/bin/sh\necho "scontrol $*" >> {log}\n')
    for tool in ('srun', 'scontrol'):
        os.chmod(bin_dir / tool, 0o755)
    env = dict(ENV, PATH=f'{bin_dir}:{os.environ["PATH"]}',
               SLURM_JOB_ID='4242')
    proc = subprocess.run(
        ['bash', 'tools/slurm_requeue.sh', 'CFG.py', 'work_dirs/x',
         '--cfg-options', 'a=1'], cwd=ROOT, env=env, capture_output=True,
        text=True)
    assert proc.returncode == exit_status, proc.stderr
    calls = log.read_text().splitlines()
    assert 'train.py CFG.py --work-dir=work_dirs/x --launcher=slurm ' \
        '--resume --cfg-options a=1' in calls[0]
    assert ('scontrol requeue 4242' in calls) == requeued


def test_report_reads_the_overrides_as_untrusted_text(tmp_path, capsys):
    """A work dir's ``resumed_with_config.txt`` is read as data: control
    characters shown as spaces, a file that is not UTF-8 skipped with one
    warning, at most 64 KB read."""
    from mmdet_gc.study import markdown_table, read_run
    for name, data in (('a', b'x: file 1, config 2\n\x1b[2Jfake\n'),
                       ('b', b'\xff\xfe not text'), ('c', b'y' * 10**6)):
        folder = tmp_path / name / '20260101_000000'
        (folder / 'vis_data').mkdir(parents=True)
        (folder / 'vis_data' / 'scalars.json').write_text(
            json.dumps({'loss': 1.0, 'iter': 1, 'step': 1}) + '\n')
        (folder / 'resumed_with_config.txt').write_bytes(data)
    runs = [read_run(str(tmp_path / n)) for n in 'abc']
    assert runs[0].overrides == ['x: file 1, config 2', ' [2Jfake']
    assert runs[1].overrides == []
    assert 'not UTF-8 text' in capsys.readouterr().err
    assert runs[2].overrides == ['y' * 300]
    assert '- a: x: file 1, config 2' in markdown_table(runs)
