"""The ``mmdet_gc`` registry scope: a config that inherits ours as
``mmdet_gc::NAME`` trains and tests with no scope warning, and every mmdet
module resolves through it (Gradient Centralization, Yong et al., ECCV
2020)."""
import pytest
from mmengine.registry import DefaultScope

import mmdet_gc  # noqa: F401  (the registries and mmdet_gc::)
from mmdet_gc import registry

from tool_helpers import run_tool, tiny_config

WARNING = 'Failed to search registry with scope "mmdet_gc"'


@pytest.mark.parametrize('name', ['HOOKS', 'LOOPS', 'PARAM_SCHEDULERS',
                                  'MODELS', 'OPTIMIZERS', 'TRANSFORMS'])
def test_the_scope_finds_mmdet_and_ours(name):
    child = getattr(registry, name)
    assert child.scope == 'mmdet_gc' and child.parent.scope == 'mmdet'
    with DefaultScope.overwrite_default_scope('mmdet_gc'):
        found = {
            'HOOKS': ('PlainCheckpointHook', 'CheckpointHook'),
            'LOOPS': ('IterBasedTrainLoop', ),
            'PARAM_SCHEDULERS': ('MultiStepLR', ),
            'MODELS': ('MaskRCNN', ),
            'OPTIMIZERS': ('SGD_GC', 'SGD'),
            'TRANSFORMS': ('IntensityShift', 'PackDetInputs'),
        }[name]
        for module in found:
            assert child.get(module) is not None, module


def test_inherited_config_trains_and_tests_without_scope_warning(
        tmp_path, data_root):
    cfg = tiny_config(
        tmp_path,
        data_root,
        max_iters=1,
        base='mmdet_gc::demo/mask-rcnn_r18-tiny_fpn_sgd-gc_synthetic.py')
    work = tmp_path / 'work'
    proc = run_tool('tools/train.py', cfg, '--work-dir', str(work))
    assert WARNING not in proc.stdout + proc.stderr
    proc = run_tool('tools/test.py', cfg, str(work / 'iter_1.pth'),
                    '--work-dir', str(work))
    assert WARNING not in proc.stdout + proc.stderr
    assert 'coco/bbox_mAP' in proc.stdout + proc.stderr
