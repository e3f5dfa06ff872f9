"""Every Python snippet in README.md and docs/en/*.md runs as written: each
is a config fragment, put in a config that inherits an mmdet config (as
users do), and its optim wrapper is built and stepped (Gradient
Centralization, Yong et al., ECCV 2020)."""
import glob
import os.path as osp
import re

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope

from mmdet_gc import GCOptimizer

from tool_helpers import ROOT

PAGES = [osp.join(ROOT, 'README.md')] + sorted(
    glob.glob(osp.join(ROOT, 'docs', 'en', '*.md')))
SNIPPETS = [
    snippet for page in PAGES
    for snippet in re.findall(r'```python\n(.*?)```', open(page).read(), re.S)
]


class Detector(nn.Module):
    """The parameter names the snippets address."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.rpn_head = nn.Conv2d(4, 4, 1)
        self.roi_head = nn.Module()
        self.roi_head.bbox_head = nn.Sequential(
            nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4, 2))

    def forward(self, x):
        x = self.rpn_head(self.backbone(x))
        return self.roi_head.bbox_head(x).sum()


def test_there_are_snippets():
    assert len(PAGES) >= 9 and len(SNIPPETS) >= 6


@pytest.mark.parametrize('snippet', SNIPPETS)
def test_snippet_builds_in_a_config_inheriting_mmdet(snippet, tmp_path):
    path = tmp_path / 'cfg.py'
    # A snippet that names its own base (``mmdet_gc::``) is a whole config.
    base = '' if snippet.startswith('_base_') else \
        "_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'\n"
    path.write_text(base + snippet)
    cfg = Config.fromfile(str(path))
    if 'default_hooks' in snippet:  # the tools' checkpoint hook, built
        from mmdet.registry import HOOKS

        from mmdet_gc.cli.config import make_resumable
        from mmdet_gc.engine.hooks import ResumableCheckpointHook
        make_resumable(cfg)
        with DefaultScope.overwrite_default_scope('mmdet'):
            hook = HOOKS.build(cfg.default_hooks.checkpoint)
        assert isinstance(hook, ResumableCheckpointHook)
        assert (hook.resume_interval, hook.resume_minutes) == (1000, 30)
        return
    if 'optim_wrapper' not in snippet:  # a hooks snippet: they build
        from mmdet.registry import HOOKS
        with DefaultScope.overwrite_default_scope('mmdet'):
            hooks = [HOOKS.build(h) for h in cfg.custom_hooks]
        assert hooks
        return
    model = Detector()
    with DefaultScope.overwrite_default_scope('mmdet'):
        wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    before = [p.detach().clone() for p in model.parameters()]
    wrapper.update_params(model(torch.randn(2, 3, 5, 5)))
    assert any(not torch.equal(a, b)
               for a, b in zip(before, model.parameters()))
    gc_optimizer = isinstance(wrapper.optimizer, GCOptimizer)
    assert gc_optimizer or 'GCOptimWrapperConstructor' in snippet
    if 'custom_keys' not in snippet:
        return
    # The per-layer switches reach the groups of the parameters they name
    # (MMEngine: the longest matching key wins).
    keys = cfg.optim_wrapper.paramwise_cfg.custom_keys
    checked = 0
    for name, param in model.named_parameters():
        match = [k for k in sorted(keys, key=len, reverse=True) if k in name]
        if not match:
            continue
        group = next(
            g for g in wrapper.optimizer.param_groups
            if any(p is param for p in g['params']))
        for key, value in keys[match[0]].items():
            assert group[key] == value, (name, key)
            checked += 1
    assert checked > 0
