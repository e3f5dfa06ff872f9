"""Where a new user trips, following the README: each mistake gets one
line naming it, before any work (issue 27, item 9)."""
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config

import mmdet_gc  # noqa: F401
from mmdet_gc.cli.build_checks import check_loops
from mmdet_gc.optim import GC_OPTIMIZERS
from mmdet_gc.utils import InputError

from tool_helpers import DEMO, ENV, ROOT, run_tool, tiny_config


@pytest.mark.parametrize('loop,good,typo', [
    ('ResumableIterBasedTrainLoop', dict(max_iters=10,
                                         val_interval=5), 'max_iter'),
    ('ResumableEpochBasedTrainLoop', dict(max_epochs=2,
                                          val_begin=1), 'max_epoch'),
    ('IterBasedTrainLoop', dict(max_iters=10), 'val_intervals'),
])
def test_a_train_cfg_key_the_loop_does_not_take_is_named(loop, good, typo):
    check_loops(Config(dict(train_cfg=dict(type=loop, **good))))
    # MMEngine's own keys (an inherited config's ``_scope_``) are not the
    # loop's.
    check_loops(
        Config(dict(train_cfg=dict(type=loop, _scope_='mmdet', **good))))
    with pytest.raises(InputError, match=f'takes no {typo} '):
        check_loops(
            Config(dict(train_cfg=dict(type=loop, **good, **{typo: 1}))))


def test_the_train_tool_stops_on_it_before_the_work_dir(tmp_path, data_root):
    work = tmp_path / 'work'
    proc = run_tool(
        'tools/train.py',
        tiny_config(tmp_path, data_root),
        '--work-dir',
        str(work),
        '--cfg-options',
        'train_cfg.max_iter=10',
        ok=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        proc.stderr.strip().splitlines()[0]
    ]
    assert 'takes no max_iter' in proc.stderr
    assert not osp.exists(work)


@pytest.mark.parametrize('name', list(GC_OPTIMIZERS))
def test_a_hyper_parameter_that_is_no_number_is_named(name):
    with pytest.raises(TypeError, match="lr must be a number, not str 'abc'"):
        GC_OPTIMIZERS[name]([torch.nn.Parameter(torch.ones(2, 2))], lr='abc')


def _doc_commands(page, first):
    """The commands of the bash block of ``page`` that starts with
    ``first``, as argument lists."""
    import re
    import shlex
    text = open(osp.join(ROOT, 'docs', 'en', page)).read()
    block = next(
        b for b in re.findall(r'```bash\n(.*?)```', text, re.S)
        if b.startswith(first))
    return [
        shlex.split(line) for line in block.replace('\\\n', ' ').splitlines()
        if line.strip()
    ]


def test_gc_on_a_stock_mmdet_config_with_the_synthetic_data(tmp_path):
    """The get-started page's commands, as written, train the stock Mask
    R-CNN config with SGD_GC on the synthetic data (run from a directory
    outside the checkout)."""
    commands = _doc_commands('get_started.md',
                             'python tools/make_synthetic_coco.py')
    assert [c[:2]
            for c in commands] == [['python', 'tools/make_synthetic_coco.py'],
                                   ['python', 'tools/train.py']]
    for command in commands:
        proc = subprocess.run(
            [sys.executable,
             osp.join(ROOT, command[1]), *command[2:]],
            cwd=tmp_path,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = Config.fromfile(
        str(tmp_path / 'work_dirs/stock_gc/mask-rcnn_r50_fpn_1x_coco.py'))
    assert cfg.optim_wrapper.optimizer.type == 'SGD_GC'
    assert cfg.val_evaluator.ann_file == \
        'data/coco_synthetic/annotations/instances_val2017.json'
    ckpt = torch.load(
        str(tmp_path / 'work_dirs/stock_gc/epoch_1.pth'), weights_only=True)
    assert ckpt['meta']['iter'] == 2  # 4 images, 2 a batch


def test_one_data_root_moves_every_path_built_from_it():
    from mmdet_gc.cli.config import merge_options
    cfg = Config.fromfile(DEMO)
    merge_options(cfg, {
        'data_root': '/elsewhere/',
        'test_evaluator.ann_file': '/mine.json'
    }, DEMO)
    loaders = [
        cfg[k].dataset
        for k in ('train_dataloader', 'val_dataloader', 'test_dataloader')
    ]
    assert {d.data_root for d in loaders} == {'/elsewhere/'}
    assert cfg.val_evaluator.ann_file == \
        '/elsewhere/annotations/instances_val.json'
    assert cfg.test_evaluator.ann_file == '/mine.json'  # given: it wins
    untouched = Config.fromfile(DEMO)
    merge_options(untouched, {'train_cfg.max_epochs': 1}, DEMO)
    assert untouched.val_evaluator.ann_file == \
        Config.fromfile(DEMO).val_evaluator.ann_file


def test_a_missing_relative_path_names_the_directory_it_was_taken_from(
        tmp_path, monkeypatch):
    from mmdet_gc.cli.data_checks import check_dataset_paths
    monkeypatch.chdir(tmp_path)
    cfg = Config.fromfile(DEMO)
    with pytest.raises(InputError) as e:
        check_dataset_paths(cfg, ('train_dataloader', ))
    assert f'taken from the current directory, {tmp_path}' in str(e.value)
    assert 'data/synthetic_coco/annotations/instances_train.json' in str(
        e.value)


@pytest.mark.parametrize('key,value,named', [
    ('val_cfg', dict(type='ValLoop', fp32=True), 'val_cfg: ValLoop takes '
     'no fp32'),
    ('val_cfg', dict(interval=1), 'val_cfg: ValLoop takes no interval'),
    ('test_cfg', dict(type='TestLoop', fp16=True, tta=1), 'test_cfg: '
     'TestLoop takes no tta'),
    ('train_cfg', dict(by_epoch=True, max_epochs=2, max_iters=3),
     'train_cfg: EpochBasedTrainLoop takes no max_iters'),
    ('train_cfg', dict(type='IterBasedTrainLoop', max_iters='abc'),
     "train_cfg.max_iters must be a whole number >= 0, not 'abc'"),
    ('train_cfg', dict(type='EpochBasedTrainLoop', max_epochs=2.5),
     'train_cfg.max_epochs must be a whole number >= 0, not 2.5'),
])
def test_every_loop_is_checked_before_the_work_dir(key, value, named):
    check_loops(
        Config({key: dict(type='ValLoop')} if key == 'val_cfg' else {}))
    with pytest.raises(InputError) as e:
        check_loops(Config({key: value}))
    assert str(e.value).startswith(named)


@pytest.mark.parametrize('loader,named', [
    (dict(batch_size=0), 'train_dataloader.batch_size must be a whole '
     'number >= 1, not 0'),
    (dict(batch_size=2, num_workers='2'), 'train_dataloader.num_workers '
     "must be a whole number >= 0, not '2'"),
    (dict(batch_size=2, num_workers=0, persistent_workers=True),
     'train_dataloader: persistent_workers=True needs num_workers > 0'),
])
def test_dataloader_arguments_are_checked_before_the_work_dir(loader, named):
    from mmdet_gc.cli.build_checks import check_dataloaders
    check_dataloaders(Config(dict(train_dataloader=dict(batch_size=2))))
    with pytest.raises(InputError) as e:
        check_dataloaders(Config(dict(train_dataloader=loader)))
    assert str(e.value).startswith(named)


@pytest.mark.parametrize('name,message', [
    ('mmdet::mask_rcnn/nope.py', 'config file not found: '
     "mmdet::mask_rcnn/nope.py (no mask_rcnn/nope.py in mmdet's configs)"),
    ('mmdet::nope.py', 'config file not found: mmdet::nope.py (a config of '
     'a package is named PACKAGE::FOLDER/NAME.py)'),
    ('not_a_package_here::x.py', "config not_a_package_here::x.py: "
     "'not_a_package_here' is not a package MMEngine reads configs from "
     '(mmdet::..., mmdet_gc::...)'),
    ('nope.py', 'config file not found: nope.py'),
])
def test_a_config_named_as_in_base_that_is_not_there(name, message):
    from mmdet_gc.cli.config import read_config
    with pytest.raises(InputError) as e:
        read_config(name)
    assert str(e.value) == message


def test_a_config_named_as_in_base_is_read():
    from mmdet_gc.cli.config import read_config
    cfg = read_config('mmdet_gc::demo/' + osp.basename(DEMO))
    assert cfg.filename == osp.realpath(DEMO) or osp.samefile(
        cfg.filename, DEMO)


@pytest.mark.parametrize(
    'setting', ['None', 'dict(_delete_=True, enable=False)', "'yes'"])
def test_auto_scale_lr_without_the_config_setting_is_one_line(
        setting, tmp_path, data_root):
    from mmdet_gc.checkpoint import CheckpointDoor
    from mmdet_gc.cli.train import build_cfg, parse_args
    cfg = tiny_config(tmp_path, data_root, extra=f'auto_scale_lr = {setting}')
    args = parse_args(
        [cfg, '--auto-scale-lr', '--work-dir',
         str(tmp_path / 'w')])
    with pytest.raises(InputError, match='Can not find "auto_scale_lr"'):
        build_cfg(args, CheckpointDoor())
    assert not osp.exists(tmp_path / 'w')


def test_a_typo_names_the_loop_of_the_config_and_the_one_run():
    with pytest.raises(InputError) as e:
        check_loops(
            Config(
                dict(
                    train_cfg=dict(
                        type='ResumableEpochBasedTrainLoop', max_epoch=1))))
    assert str(e.value).startswith(
        'train_cfg: EpochBasedTrainLoop (run as ResumableEpochBasedTrainLoop)'
        ' takes no max_epoch (it takes: ')
