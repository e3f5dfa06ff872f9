"""GCStatsHook: the share of gradient energy GC removes and the drift of
the weight row means, per module group, against a hand computation on a
toy model, logged through MMEngine's message hub (Yong et al., ECCV 2020:
what GC does inside a model, made visible)."""
import itertools
import os.path as osp
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from mmengine.logging import MessageHub
from mmengine.optim import build_optim_wrapper

from mmdet_gc.engine.hooks.gc_stats_hook import GCStatsHook, removed_energy


class Toy(nn.Module):

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU())
        self.head = nn.Linear(3 * 3 * 3, 2)

    def forward(self, x):
        return self.head(self.backbone(x).flatten(1)).pow(2).sum()


_HUBS = itertools.count()


def _runner(model, wrapper, it=0):
    """What the hook reads of MMEngine's runner (a fresh message hub)."""
    return SimpleNamespace(
        model=model,
        optim_wrapper=wrapper,
        message_hub=MessageHub.get_instance(f'gc_stats_{next(_HUBS)}'),
        iter=it)


def by_hand(g):
    """``||g - GC(g)||^2`` and ``||g||^2`` from the definition."""
    g = g.double()
    gc = g - g.mean(dim=tuple(range(1, g.dim())), keepdim=True)
    return float((g - gc).square().sum()), float(g.square().sum())


def test_removed_energy_is_the_energy_of_g_minus_gc_g():
    g = torch.randn(4, 3, 2, 2)
    removed, total = removed_energy(g)
    want = by_hand(g)
    assert removed == pytest.approx(want[0], rel=1e-12)
    assert total == pytest.approx(want[1], rel=1e-12)


@pytest.mark.parametrize('optimizer', ['SGD_GC', 'SGD'])
def test_stats_against_a_hand_computation(optimizer):
    model = Toy()
    wrapper = build_optim_wrapper(
        model, dict(optimizer=dict(type=optimizer, lr=0.1, momentum=0.9)))
    runner = _runner(model, wrapper, it=9)
    hook = GCStatsHook(interval=10)
    hook.before_train(runner)
    start = {
        n: p.detach().double().mean(dim=tuple(range(1, p.dim())))
        for n, p in model.named_parameters() if p.dim() > 1
    }
    wrapper.update_params(model(torch.randn(4, 2, 5, 5)))  # due: logged
    hub = runner.message_hub
    logged = {
        k: hub.get_scalar(k).current()
        for k in hub.log_scalars if k.startswith('train/gc_')
    }
    assert set(logged) == {
        'train/gc_removed/backbone', 'train/gc_removed/head',
        'train/gc_drift/backbone', 'train/gc_drift/head'
    }
    assert 0 < logged['train/gc_removed/backbone'] < 1
    assert 0 < logged['train/gc_removed/head'] < 1
    # Logged inside the step, before the update: no drift yet.
    assert logged['train/gc_drift/backbone'] == 0.
    for it in range(10, 20):
        runner.iter = it
        wrapper.update_params(model(torch.randn(4, 2, 5, 5)))
    x = torch.randn(4, 2, 5, 5)
    model.zero_grad()
    model(x).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    values = hook.stats(runner)
    for group, names in (('backbone', ['backbone.0.weight']),
                         ('head', ['head.weight'])):
        r = sum(by_hand(grads[n])[0] for n in names)
        t = sum(by_hand(grads[n])[1] for n in names)
        assert values[f'train/gc_removed/{group}'] == pytest.approx(
            r / t, rel=1e-9)
        drift = max(
            float((dict(model.named_parameters())[n].detach().double().mean(
                dim=tuple(range(1, grads[n].dim()))) - start[n]).abs().max())
            for n in names)
        assert values[f'train/gc_drift/{group}'] == pytest.approx(
            drift, rel=1e-9, abs=1e-15)
        if optimizer == 'SGD_GC':  # the theorem: row means do not move
            assert values[f'train/gc_drift/{group}'] < 1e-6
        else:
            assert values[f'train/gc_drift/{group}'] > 1e-4
    hook.after_train(runner)


def test_off_interval_iterations_log_nothing_and_gc_false_groups_skip():
    model = Toy()
    wrapper = build_optim_wrapper(
        model,
        dict(
            optimizer=dict(type='SGD_GC', lr=0.1),
            paramwise_cfg=dict(custom_keys={'head': dict(gc=False)})))
    runner = _runner(model, wrapper, it=3)
    hook = GCStatsHook(interval=10)
    hook.before_train(runner)
    wrapper.update_params(model(torch.randn(4, 2, 5, 5)))
    assert not [
        k for k in runner.message_hub.log_scalars if k.startswith('train/gc_')
    ]
    model(torch.randn(4, 2, 5, 5)).backward()
    assert set(hook.stats(runner)) == {
        'train/gc_removed/backbone', 'train/gc_drift/backbone'
    }
    with pytest.raises(ValueError, match='interval'):
        GCStatsHook(interval=0)


def test_reads_the_gradients_before_the_any_optimizer_gc_hook():
    model = Toy()
    wrapper = build_optim_wrapper(
        model,
        dict(
            constructor='GCOptimWrapperConstructor',
            optimizer=dict(type='SGD', lr=0.1)))
    runner = _runner(model, wrapper, it=9)
    GCStatsHook(interval=10).before_train(runner)
    wrapper.update_params(model(torch.randn(4, 2, 5, 5)))
    removed = runner.message_hub.get_scalar('train/gc_removed/backbone')
    assert removed.current() > 1e-6  # not the already-centralized gradient


def test_the_names_the_docs_give_are_the_names_logged(tmp_path, data_root):
    """What a run writes to its JSON scalars (and visualizer backends) is
    what docs/en/diagnostics.md says it writes."""
    import glob
    import json
    import re

    from tool_helpers import ROOT, run_tool, tiny_config
    cfg = tiny_config(
        tmp_path,
        data_root,
        max_iters=2,
        extra='custom_hooks = [dict(type=\'GCStatsHook\', interval=1), '
        'dict(type=\'PlainCheckpointHook\')]\n')
    work = tmp_path / 'work'
    run_tool('tools/train.py', cfg, '--work-dir', str(work))
    logged = set()
    for path in glob.glob(str(work / '*' / 'vis_data' / 'scalars.json')):
        for line in open(path):
            logged.update(k for k in json.loads(line) if k.startswith('gc_'))
    assert logged, 'no GC scalars in the run\'s JSON scalars'
    shapes = {re.sub(r'/[^/]+$', '/<module>', k) for k in logged}
    doc = open(osp.join(ROOT, 'docs', 'en', 'diagnostics.md')).read()
    named = set(re.findall(r'`(gc_[a-z]+/<module>)`', doc))
    assert named == shapes == {'gc_removed/<module>', 'gc_drift/<module>'}
