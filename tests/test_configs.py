"""Every config in configs/ loads, builds its model and optim wrapper under
the mmdet scope, and differs from MMDetection's own config in the optimizer
only (Yong et al., ECCV 2020: one row of the paper's tables per config)."""
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope

from mmdet_gc import GC_OPTIMIZERS, GCOptimizer
from mmdet_gc.utils import mmdet_config_path

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PAPER = sorted(
    glob.glob(osp.join(ROOT, 'configs', 'faster_rcnn', '*.py')) +
    glob.glob(osp.join(ROOT, 'configs', 'mask_rcnn', '*.py')))
ALL = PAPER + glob.glob(osp.join(ROOT, 'configs', 'demo', '*.py'))

# Our config -> the MMDetection config it must equal, optimizer aside.
# (GN+WS restates mmdet's gn+ws/ file, which 'mmdet::' cannot address.)
BASELINE = {
    'faster-rcnn_r50_fpn_sgd-gc_1x_coco.py':
    'faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
    'faster-rcnn_r50_fpn_sgd-gcc_1x_coco.py':
    'faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
    'faster-rcnn_r101_fpn_sgd-gc_1x_coco.py':
    'faster_rcnn/faster-rcnn_r101_fpn_1x_coco.py',
    'faster-rcnn_x101-32x4d_fpn_sgd-gc_1x_coco.py':
    'faster_rcnn/faster-rcnn_x101-32x4d_fpn_1x_coco.py',
    'faster-rcnn_x101-64x4d_fpn_sgd-gc_1x_coco.py':
    'faster_rcnn/faster-rcnn_x101-64x4d_fpn_1x_coco.py',
    'mask-rcnn_r50_fpn_sgd-gc_1x_coco.py':
    'mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
    'mask-rcnn_r50_fpn_sgd-gcc_1x_coco.py':
    'mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
    'mask-rcnn_r101_fpn_sgd-gc_1x_coco.py':
    'mask_rcnn/mask-rcnn_r101_fpn_1x_coco.py',
    'mask-rcnn_x101-32x4d_fpn_sgd-gc_1x_coco.py':
    'mask_rcnn/mask-rcnn_x101-32x4d_fpn_1x_coco.py',
    'mask-rcnn_x101-64x4d_fpn_sgd-gc_1x_coco.py':
    'mask_rcnn/mask-rcnn_x101-64x4d_fpn_1x_coco.py',
    'mask-rcnn_r101_fpn_gn-all_sgd-gc_2x_coco.py':
    'gn/mask-rcnn_r101_fpn_gn-all_2x_coco.py',
    'mask-rcnn_r50_fpn_gn-ws-all_sgd-gc_2x_coco.py':
    'gn+ws/mask-rcnn_r50_fpn_gn-ws-all_2x_coco.py',
    # no mmdet config for this row: its R50 1x + Shared4Conv1FCBBoxHead
    'mask-rcnn_r50_fpn-4conv1fc_sgd-gc_1x_coco.py':
    'mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
}


def test_the_papers_rows_are_all_here():
    names = {osp.basename(p) for p in PAPER}
    assert names == set(BASELINE)
    assert len([n for n in names if 'sgd-gc_' in n]) == 11  # paper rows
    assert len([n for n in names if 'sgd-gcc_' in n]) == 2


def _without_scope(obj):
    # Inheriting through 'mmdet::' tags each dict with ``_scope_='mmdet'``.
    if isinstance(obj, dict):
        return {k: _without_scope(v) for k, v in obj.items() if k != '_scope_'}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_without_scope(v) for v in obj)
    return obj


def _comparable(cfg):
    d = _without_scope(cfg.to_dict())
    for key in ('custom_imports', 'optim_wrapper', 'conv_cfg', 'norm_cfg'):
        d.pop(key, None)
    # Ours adds PlainCheckpointHook to whatever hooks mmdet's config has.
    hooks = d.pop('custom_hooks', [])
    if hooks and hooks[-1] == dict(type='PlainCheckpointHook'):
        hooks = hooks[:-1]
    if hooks:
        d['custom_hooks'] = hooks
    return d


@pytest.mark.parametrize('path', PAPER, ids=osp.basename)
def test_config_equals_mmdet_but_for_the_optimizer(path):
    cfg = Config.fromfile(path)
    base = Config.fromfile(mmdet_config_path(BASELINE[osp.basename(path)]))
    ours, theirs = _comparable(cfg), _comparable(base)
    if '4conv1fc' in path:
        head = ours['model']['roi_head']['bbox_head']
        assert head['type'] == 'Shared4Conv1FCBBoxHead'
        assert head.pop('conv_out_channels') == 256
        head['type'] = theirs['model']['roi_head']['bbox_head']['type']
    assert ours == theirs
    opt, base_opt = cfg.optim_wrapper.optimizer, base.optim_wrapper.optimizer
    assert base_opt.type == 'SGD'
    assert opt.type == ('SGD_GCC' if 'sgd-gcc' in path else 'SGD_GC')
    for key in ('lr', 'momentum', 'weight_decay'):
        assert opt[key] == base_opt[key], key
    ours_ow, theirs_ow = (
        _without_scope(c.optim_wrapper.to_dict()) for c in (cfg, base))
    ours_ow['optimizer'].pop('type')
    theirs_ow['optimizer'].pop('type')
    assert ours_ow == theirs_ow  # clipping, wrapper type... unchanged
    assert cfg.custom_imports.imports == ['mmdet_gc']
    assert cfg.custom_hooks[-1] == dict(type='PlainCheckpointHook')
    # Users keep the real pretrained backbones.
    assert cfg.model.backbone.init_cfg.type == 'Pretrained'


@pytest.mark.parametrize('path', ALL, ids=osp.basename)
def test_config_builds_model_and_gc_optimizer(path):
    from mmdet.registry import HOOKS, MODELS
    cfg = Config.fromfile(path)
    cfg.model.backbone.init_cfg = None  # nothing is downloaded here
    with DefaultScope.overwrite_default_scope('mmdet'):
        # Every config keeps its checkpoints plain data.
        hook = HOOKS.build(cfg.custom_hooks[-1])
        assert type(hook).__name__ == 'PlainCheckpointHook'
        model = MODELS.build(cfg.model)
        wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    if 'study' in path:  # the study's base arm: torch's SGD
        assert type(wrapper.optimizer) is torch.optim.SGD
    else:
        assert isinstance(wrapper.optimizer, GCOptimizer)
        assert type(wrapper.optimizer).__name__ in GC_OPTIMIZERS
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params > (1e5 if 'demo' in path else 1e7)
    del model, wrapper
    torch.set_grad_enabled(True)


# Beyond the paper: AdamW-trained detectors of mmdet 3.3.
BEYOND = {
    'rtmdet_tiny_8xb32-300e-adamw-gcc2_coco.py':
    'rtmdet/rtmdet_tiny_8xb32-300e_coco.py',
    'dino-4scale_r50_8xb2-12e-gc-update_coco.py':
    'dino/dino-4scale_r50_8xb2-12e_coco.py',
}
BEYOND_PATHS = sorted(
    glob.glob(osp.join(ROOT, 'configs', 'rtmdet', '*.py')) +
    glob.glob(osp.join(ROOT, 'configs', 'dino', '*.py')))


def test_the_adamw_configs_are_all_here():
    assert {osp.basename(p) for p in BEYOND_PATHS} == set(BEYOND)


@pytest.mark.parametrize('path', BEYOND_PATHS, ids=osp.basename)
def test_adamw_config_equals_mmdet_but_for_gc_and_builds(path):
    from mmdet.registry import HOOKS, MODELS
    cfg = Config.fromfile(path)
    base = Config.fromfile(mmdet_config_path(BEYOND[osp.basename(path)]))
    assert _comparable(cfg) == _comparable(base)
    ours, theirs = (
        _without_scope(c.optim_wrapper.to_dict()) for c in (cfg, base))
    assert theirs['optimizer']['type'] == 'AdamW'
    if 'gcc2' in path:
        assert ours['optimizer'].pop('type') == 'AdamW_GCC2'
        theirs['optimizer'].pop('type')
    else:
        assert ours.pop('constructor') == 'GCOptimWrapperConstructor'
        assert ours.pop('gc') == dict(on='update')
    assert ours == theirs  # lr, decay, clipping, paramwise_cfg kept
    cfg.model.backbone.init_cfg = None
    with DefaultScope.overwrite_default_scope('mmdet'):
        hooks = [HOOKS.build(h) for h in cfg.custom_hooks]
        assert type(hooks[-1]).__name__ == 'PlainCheckpointHook'
        model = MODELS.build(cfg.model)
        wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    opt = wrapper.optimizer
    if 'gcc2' in path:
        assert type(opt).__name__ == 'AdamW_GCC2'
    else:  # torch's AdamW with the update hooks
        assert type(opt) is torch.optim.AdamW
        assert len(opt._optimizer_step_post_hooks) == 1
    assert sum(p.numel() for p in model.parameters()) > 1e6
    del model, wrapper
    torch.set_grad_enabled(True)
