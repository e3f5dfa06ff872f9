"""Where a new user trips, following the README: each mistake gets one
line naming it, before any work (issue 27, item 9)."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config

import mmdet_gc  # noqa: F401
from mmdet_gc.cli.runner import InputError, check_train_loop
from mmdet_gc.optim import GC_OPTIMIZERS

from tool_helpers import run_tool, tiny_config


@pytest.mark.parametrize('loop,good,typo', [
    ('ResumableIterBasedTrainLoop', dict(max_iters=10,
                                         val_interval=5), 'max_iter'),
    ('ResumableEpochBasedTrainLoop', dict(max_epochs=2,
                                          val_begin=1), 'max_epoch'),
    ('IterBasedTrainLoop', dict(max_iters=10), 'val_intervals'),
])
def test_a_train_cfg_key_the_loop_does_not_take_is_named(loop, good, typo):
    check_train_loop(Config(dict(train_cfg=dict(type=loop, **good))))
    # MMEngine's own keys (an inherited config's ``_scope_``) are not the
    # loop's.
    check_train_loop(
        Config(dict(train_cfg=dict(type=loop, _scope_='mmdet', **good))))
    with pytest.raises(InputError, match=f'takes no {typo} '):
        check_train_loop(
            Config(dict(train_cfg=dict(type=loop, **good, **{typo: 1}))))


def test_the_train_tool_stops_on_it_before_the_work_dir(tmp_path, data_root):
    work = tmp_path / 'work'
    proc = run_tool('tools/train.py', tiny_config(tmp_path, data_root),
                    '--work-dir', str(work), '--cfg-options',
                    'train_cfg.max_iter=10', ok=False)
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
