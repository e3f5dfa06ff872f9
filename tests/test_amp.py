"""AMP on the CPU, for real: MMEngine's ``AmpOptimWrapper`` with a
``torch.amp.GradScaler('cpu')`` and bf16 / fp16 autocast. GC sees unscaled
gradients, a step with an inf gradient is skipped, and accumulation and
clipping keep their order (Gradient Centralization, Yong et al., ECCV 2020:
GC applies to the real gradient, after everything that precedes the step).

MMEngine 0.10.7's ``AmpOptimWrapper`` asserts a GPU in ``__init__`` and
builds a CUDA ``GradScaler``; the fixture patches that one check and hands
it a CPU scaler. Everything else is MMEngine's own code path. Where a CUDA
device is present, every test runs on it too, with a CUDA scaler
(``tools/gpu_check.sh``).
"""
import copy

import pytest
import torch
import torch.nn as nn
from mmengine.optim import build_optim_wrapper

import mmdet_gc
from mmdet_gc import SGD_GC, centralize

from helpers import DEVICES

SCALE = 2.**10


@pytest.fixture(autouse=True)
def amp_on_cpu(monkeypatch):
    from mmengine.optim.optimizer import amp_optimizer_wrapper as amp
    monkeypatch.setattr(amp, 'is_cuda_available', lambda: True)


def model(device='cpu'):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4,
                                                               3)).to(device)


def batch(i, device):
    g = torch.Generator().manual_seed(i)
    return torch.randn(2, 3, 6, 6, generator=g).to(device)


def loss_of(net, i, dtype):
    device = next(net.parameters()).device
    with torch.autocast(device.type, dtype=dtype):
        out = net(batch(i, device))
    return out.float().pow(2).mean()


def amp_wrapper(net, **cfg):
    """MMEngine's wrapper, with a scaler of the model's device (a CUDA one
    on a GPU) that starts at SCALE."""
    wrapper = build_optim_wrapper(net, dict(type='AmpOptimWrapper', **cfg))
    device = next(net.parameters()).device.type
    wrapper.loss_scaler = torch.amp.GradScaler(device, init_scale=SCALE)
    return wrapper


SGD = dict(type='SGD_GC', lr=0.1, momentum=0.9, weight_decay=0.1)
ANY = dict(
    constructor='GCOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=0.01, weight_decay=0.1))
ANY_UPDATE = dict(ANY, gc=dict(on='update'))


def unscaled_grads(net, i, dtype, scale=SCALE):
    """What the wrapper computes before the step, by hand: the scaled
    loss's gradients, unscaled."""
    net.zero_grad()
    (loss_of(net, i, dtype) * scale).backward()
    return [p.grad / scale for p in net.parameters()]


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('cfg', [SGD, ANY], ids=['SGD_GC', 'any-optimizer'])
@pytest.mark.parametrize('device', DEVICES)
def test_gc_sees_unscaled_gradients(dtype, cfg, device):
    ours, ref = model(device), model(device)
    kwargs = dict(optimizer=cfg) if 'type' in cfg else dict(cfg)
    wrapper = amp_wrapper(ours, **kwargs)
    if 'type' in cfg:
        by_hand = SGD_GC(
            ref.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    else:
        by_hand = torch.optim.AdamW(
            ref.parameters(), lr=0.01, weight_decay=0.1)
    for i in range(3):
        wrapper.update_params(loss_of(ours, i, dtype))
        grads = unscaled_grads(ref, i, dtype)
        for p, g in zip(ref.parameters(), grads):
            # SGD_GC centralizes inside; for AdamW, GC by hand.
            p.grad = g if 'type' in cfg or g.dim() < 2 else centralize(g)
        by_hand.step()
        for a, b in zip(ours.parameters(), ref.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    'cfg', [SGD, dict(SGD, fused=True), ANY, ANY_UPDATE],
    ids=['SGD_GC', 'SGD_GC-fused', 'any-optimizer', 'any-optimizer-on-update'])
@pytest.mark.parametrize('device', DEVICES)
def test_a_step_with_an_inf_gradient_is_skipped(cfg, device):
    # Fused or not, the GC optimizers leave the inf check to the scaler
    # (no _step_supports_amp_scaling), which skips the whole step.
    net = model(device)
    kwargs = dict(optimizer=cfg) if 'type' in cfg else dict(cfg)
    wrapper = amp_wrapper(net, **kwargs)
    wrapper.update_params(loss_of(net, 0, torch.bfloat16))  # state exists
    params = [p.detach().clone() for p in net.parameters()]
    state = copy.deepcopy(wrapper.optimizer.state_dict()['state'])
    scale = wrapper.loss_scaler.get_scale()
    wrapper.backward(wrapper.scale_loss(loss_of(net, 1, torch.bfloat16)))
    next(net.parameters()).grad[0, 0, 0, 0] = float('inf')
    wrapper.step()
    for p, before in zip(net.parameters(), params):
        assert torch.equal(p, before)
    after = wrapper.optimizer.state_dict()['state']
    for k, s in state.items():
        for key, value in s.items():
            assert torch.equal(after[k][key], value), key
    assert wrapper.loss_scaler.get_scale() == scale / 2  # backed off


@pytest.mark.parametrize('device', DEVICES)
def test_accumulation_and_clipping_keep_their_order(device):
    """Two micro-batches accumulate; at the boundary the gradient is
    unscaled, clipped, then centralized (SGD_GC), as by hand."""
    ours, ref = model(device), model(device)
    wrapper = amp_wrapper(
        ours,
        optimizer=SGD,
        accumulative_counts=2,
        clip_grad=dict(max_norm=0.05, norm_type=2))
    by_hand = SGD_GC(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    start = [p.detach().clone() for p in ours.parameters()]
    wrapper.update_params(loss_of(ours, 0, torch.bfloat16))
    for p, s in zip(ours.parameters(), start):
        assert torch.equal(p, s)  # no step inside the accumulation
    wrapper.update_params(loss_of(ours, 1, torch.bfloat16))

    ref.zero_grad()
    for i in (0, 1):  # MMEngine divides the loss by the count
        (loss_of(ref, i, torch.bfloat16) / 2 * SCALE).backward()
    for p in ref.parameters():
        p.grad /= SCALE
    norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.05)
    assert norm > 0.05  # the clip is active
    by_hand.step()
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert isinstance(wrapper.optimizer, mmdet_gc.SGD_GC)
