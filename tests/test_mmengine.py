"""mmdet-gc inside MMEngine / MMDetection: registries, optim wrappers,
``paramwise_cfg``, GC for any optimizer."""
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
from mmengine.optim import OptimWrapper, build_optim_wrapper
from mmengine.registry import DefaultScope, Registry

import mmdet_gc
from mmdet_gc import GC_OPTIMIZERS, SGD_GC, centralize
from mmdet_gc.registry import register_modules


class TinyDetector(nn.Module):
    """conv + BN + conv head + fc: names that paramwise_cfg can match."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.rpn_head = nn.Conv2d(8, 4, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        f = self.backbone(x)
        return self.rpn_head(f).mean() + self.fc(f.mean((2, 3))).pow(2).sum()


@pytest.fixture(autouse=True)
def mmdet_scope():
    with DefaultScope.overwrite_default_scope('mmdet'):
        yield


def loss_step(model, seed):
    g = torch.Generator().manual_seed(seed)
    return model(torch.randn(2, 3, 8, 8, generator=g))


def test_every_gc_optimizer_builds_under_the_mmdet_scope():
    from mmdet.registry import OPTIMIZERS
    for name, cls in GC_OPTIMIZERS.items():
        opt = OPTIMIZERS.build(
            dict(type=name, params=TinyDetector().parameters(), lr=0.01))
        assert type(opt) is cls


def test_build_optim_wrapper_with_paramwise_cfg():
    model = TinyDetector()
    wrapper = build_optim_wrapper(
        model,
        dict(
            optimizer=dict(
                type='SGD_GC', lr=0.02, momentum=0.9, weight_decay=1e-4),
            paramwise_cfg=dict(norm_decay_mult=0., bias_lr_mult=2.)))
    assert isinstance(wrapper, OptimWrapper)
    assert isinstance(wrapper.optimizer, SGD_GC)
    by_param = {
        id(p): g
        for g in wrapper.optimizer.param_groups
        for p in g['params']
    }
    bn = model.backbone[1]
    conv = model.backbone[0]
    assert by_param[id(bn.weight)]['weight_decay'] == 0.
    assert by_param[id(conv.weight)]['weight_decay'] == 1e-4
    assert by_param[id(conv.weight)]['lr'] == 0.02
    assert by_param[id(conv.bias)]['lr'] == pytest.approx(0.04)
    assert all(g['momentum'] == 0.9 and g['gc'] for g in by_param.values())


def test_custom_imports_registers_in_a_fresh_process(tmp_path):
    cfg = tmp_path / 'cfg.py'
    cfg.write_text(
        textwrap.dedent("""
        custom_imports = dict(imports=['mmdet_gc'], allow_failed_imports=False)
        optim_wrapper = dict(optimizer=dict(
            type='SGD_GCC', lr=0.02, momentum=0.9, weight_decay=0.0001))
        """))
    code = textwrap.dedent(f"""
        import torch
        from mmengine.config import Config
        from mmengine.optim import build_optim_wrapper
        from mmengine.registry import init_default_scope
        cfg = Config.fromfile({str(cfg)!r})
        init_default_scope('mmdet')
        w = build_optim_wrapper(torch.nn.Conv2d(2, 2, 3), cfg.optim_wrapper)
        print(type(w.optimizer).__name__)
        """)
    out = subprocess.run([sys.executable, '-c', code],
                         capture_output=True,
                         text=True,
                         check=True)
    assert out.stdout.strip().splitlines()[-1] == 'SGD_GCC'


def test_registration_is_idempotent_and_conflicts_are_named():
    registry = Registry('test optimizer')

    class SGD_GC:  # noqa: N801  (someone else's class, same name)
        pass

    assert register_modules(registry,
                            {'SGD_GC': mmdet_gc.SGD_GC}) == ['SGD_GC']
    assert register_modules(registry, {'SGD_GC': mmdet_gc.SGD_GC}) == []
    with pytest.raises(KeyError) as err:
        register_modules(registry, {'SGD_GC': SGD_GC})
    msg = str(err.value)
    assert 'mmdet_gc.optim.sgd.SGD_GC' in msg
    assert 'test_registration_is_idempotent' in msg  # the other one


def _grads(model):
    return {
        n: p.grad.clone()
        for n, p in model.named_parameters() if p.grad is not None
    }


def test_per_layer_switch_in_gc_optimizers():
    model = TinyDetector()
    wrapper = build_optim_wrapper(
        model,
        dict(
            optimizer=dict(type='SGD_GC', lr=0.1),
            paramwise_cfg=dict(custom_keys={'rpn_head': dict(gc=False)})))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    wrapper.backward(loss_step(model, 0))
    grads = _grads(model)
    wrapper.step()
    assert all(
        torch.equal(g, p.grad)  # SGD_GC leaves p.grad alone
        for g, p in zip(grads.values(), model.parameters()))
    for name, p in model.named_parameters():
        delta = before[name] - p.detach()
        expected = grads[name] * 0.1
        if name in ('backbone.0.weight', 'fc.weight'):
            expected = centralize(grads[name]) * 0.1
        torch.testing.assert_close(delta, expected, msg=name)
    assert not torch.allclose(
        centralize(grads['rpn_head.weight']), grads['rpn_head.weight'])


def _manual_gc_step(model, opt, seed, clip=None, conv_only=False, skip=()):
    """The reference: backward, clip, centralize by hand, torch step."""
    opt.zero_grad()
    loss_step(model, seed).backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.grad is not None and p.dim() > (3 if conv_only else 1) \
                    and not any(s in name for s in skip):
                p.grad.copy_(centralize(p.grad))
    opt.step()


ANY = [
    dict(type='AdamW', lr=1e-2, weight_decay=0.05),
    dict(type='SGD', lr=0.05, momentum=0.9, weight_decay=1e-4),
]


@pytest.mark.parametrize('optimizer', ANY)
@pytest.mark.parametrize('conv_only', [False, True])
@pytest.mark.parametrize('clip', [None, 0.05])
def test_any_optimizer_equals_centralizing_by_hand(optimizer, conv_only, clip):
    model, ref_model = TinyDetector(), TinyDetector()
    cfg = dict(
        constructor='GCOptimWrapperConstructor',
        gc=dict(conv_only=conv_only),
        optimizer=dict(optimizer))
    if clip:
        cfg['clip_grad'] = dict(max_norm=clip)
    wrapper = build_optim_wrapper(model, cfg)
    assert type(wrapper.optimizer).__name__ == optimizer['type']
    ref_cfg = dict(optimizer)
    ref_opt = getattr(torch.optim, ref_cfg.pop('type'))(ref_model.parameters(),
                                                        **ref_cfg)
    for step in range(4):
        wrapper.update_params(loss_step(model, step))
        _manual_gc_step(ref_model, ref_opt, step, clip, conv_only)
        for (n, p), q in zip(model.named_parameters(), ref_model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=n)


def test_any_optimizer_clips_before_gc():
    """GC-then-clip would give another update: the order is observable."""
    model, ref_model = TinyDetector(), TinyDetector()
    wrapper = build_optim_wrapper(
        model,
        dict(
            constructor='GCOptimWrapperConstructor',
            optimizer=dict(type='SGD', lr=0.5),
            clip_grad=dict(max_norm=0.01)))
    wrapper.update_params(loss_step(model, 0))
    # GC first, then clip: a different update.
    ref_model.zero_grad()
    loss_step(ref_model, 0).backward()
    with torch.no_grad():
        for p in ref_model.parameters():
            if p.dim() > 1:
                p.grad.copy_(centralize(p.grad))
    torch.nn.utils.clip_grad_norm_(ref_model.parameters(), 0.01)
    torch.optim.SGD(ref_model.parameters(), lr=0.5).step()
    assert not torch.allclose(model.fc.weight, ref_model.fc.weight)


def test_any_optimizer_with_gradient_accumulation():
    model, ref_model = TinyDetector(), TinyDetector()
    wrapper = build_optim_wrapper(
        model,
        dict(
            constructor='GCOptimWrapperConstructor',
            accumulative_counts=2,
            optimizer=dict(type='SGD', lr=0.1)))
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.1)
    # Two micro-batches, one step on the centralized sum.
    wrapper.initialize_count_status(model, 0, 2)
    for seed in (0, 1):
        wrapper.update_params(loss_step(model, seed))
    ref_opt.zero_grad()
    for seed in (0, 1):
        (loss_step(ref_model, seed) / 2).backward()
    with torch.no_grad():
        for p in ref_model.parameters():
            if p.dim() > 1:
                p.grad.copy_(centralize(p.grad))
    ref_opt.step()
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_any_optimizer_sees_unscaled_gradients_under_a_grad_scaler():
    """AmpOptimWrapper steps through GradScaler.step, which unscales first.

    mmengine's AmpOptimWrapper needs CUDA, so the order is checked with
    torch's GradScaler on the CPU, the same call it makes.
    """
    model, ref_model = TinyDetector(), TinyDetector()
    wrapper = build_optim_wrapper(
        model,
        dict(
            constructor='GCOptimWrapperConstructor',
            optimizer=dict(type='SGD', lr=0.1)))
    scaler = torch.amp.GradScaler('cpu', init_scale=1024.)
    scaler.scale(loss_step(model, 0)).backward()
    scaler.step(wrapper.optimizer)
    _manual_gc_step(ref_model, torch.optim.SGD(ref_model.parameters(), lr=0.1),
                    0)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_any_optimizer_per_layer_switch_and_state_dict():
    model = TinyDetector()
    wrapper = build_optim_wrapper(
        model,
        dict(
            constructor='GCOptimWrapperConstructor',
            optimizer=dict(type='AdamW', lr=1e-3),
            paramwise_cfg=dict(custom_keys={'rpn_head': dict(gc=False)})))
    wrapper.backward(loss_step(model, 0))
    wrapper.step()
    # The hook centralizes p.grad in place: the switched-off layer keeps
    # its raw gradient, the others are centralized.
    rpn = model.rpn_head.weight.grad
    assert rpn.mean((1, 2, 3)).abs().max() > 1e-4
    for p in (model.backbone[0].weight, model.fc.weight):
        assert p.grad.mean(tuple(range(1, p.dim()))).abs().max() < 1e-7
    groups = wrapper.state_dict()['param_groups']
    assert {g['gc'] for g in groups} == {True, False}


def test_any_optimizer_refuses_a_gc_optimizer_and_unknown_keys():
    with pytest.raises(TypeError, match='centralize twice'):
        build_optim_wrapper(
            TinyDetector(),
            dict(
                constructor='GCOptimWrapperConstructor',
                optimizer=dict(type='SGD_GC', lr=0.1)))
    with pytest.raises(ValueError, match='conv_only'):
        build_optim_wrapper(
            TinyDetector(),
            dict(
                constructor='GCOptimWrapperConstructor',
                gc=dict(conv=True),
                optimizer=dict(type='SGD', lr=0.1)))
