"""GC on the update for any optimizer (``gc=dict(on='update')``): wrapping
torch's Adam / AdamW equals ``Adam_GC2`` / ``AdamW_GC2``, and the row means
of centralized weights stay fixed under RAdam, NAdam, Adamax, SGD and an
optimizer of the test's own (Yong et al., ECCV 2020: GC on the update keeps
each weight's mean, the authors' advice for adaptive methods)."""
import pytest
import torch
import torch.nn as nn
from mmengine.optim import build_optim_wrapper

from mmdet_gc import GC_OPTIMIZERS, attach_gc
from mmdet_gc.optim.any_optimizer import GCOptimWrapperConstructor

from helpers import make_params, set_grads

STEPS = 8


@pytest.mark.parametrize('name',
                         ['Adam_GC2', 'Adam_GCC2', 'AdamW_GC2', 'AdamW_GCC2'])
@pytest.mark.parametrize('amsgrad', [False, True])
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_wrapping_torch_adam_equals_the_gc2_variants(name, amsgrad, dtype):
    cls = GC_OPTIMIZERS[name]
    a, b = make_params(dtype=dtype), make_params(dtype=dtype)
    hyper = dict(lr=0.05, weight_decay=0.1, amsgrad=amsgrad, foreach=False)
    ours = (torch.optim.AdamW if cls.decoupled else torch.optim.Adam)(
        a.values(), **hyper)
    attach_gc(ours, conv_only=cls.gc_conv_only, on='update')
    theirs = cls(b.values(), **hyper)
    tol = dict(
        rtol=0, atol=1e-12) if dtype == torch.float64 else dict(
            rtol=1e-5, atol=1e-6)
    for step in range(STEPS):
        set_grads(a, step)
        set_grads(b, step)
        ours.step()
        theirs.step()
        for k in a:
            torch.testing.assert_close(a[k], b[k], **tol, msg=k)


class SignSGD(torch.optim.Optimizer):
    """An optimizer of the test's own: p -= lr * sign(g)."""

    def __init__(self, params, lr=0.01):
        super().__init__(params, dict(lr=lr))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group['params']:
                if p.grad is not None:
                    p.add_(torch.sign(p.grad), alpha=-group['lr'])


def _dims(p):
    return tuple(range(1, p.dim()))


OTHERS = {
    'RAdam':
    lambda ps: torch.optim.RAdam(ps, lr=0.05, weight_decay=0.1),
    'NAdam':
    lambda ps: torch.optim.NAdam(ps, lr=0.05, weight_decay=0.1),
    'Adamax':
    lambda ps: torch.optim.Adamax(ps, lr=0.05, weight_decay=0.1),
    'SGD':
    lambda ps: torch.optim.SGD(
        ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1),
    'SignSGD':
    lambda ps: SignSGD(ps, lr=0.05),
}


@pytest.mark.parametrize('name', list(OTHERS))
@pytest.mark.parametrize('conv_only', [False, True])
def test_row_means_stay_fixed_under_any_optimizer(name, conv_only):
    params = make_params()
    before = {
        k: p.detach().mean(_dims(p))
        for k, p in params.items() if p.dim() > 1
    }
    opt = OTHERS[name](params.values())
    attach_gc(opt, conv_only=conv_only, on='update')
    for step in range(STEPS):
        set_grads(params, step)
        opt.step()
    moved = {}
    for k, mean in before.items():
        moved[k] = (params[k].detach().mean(_dims(params[k])) -
                    mean).abs().max().item()
    for k, d in moved.items():
        if params[k].dim() > (3 if conv_only else 1):
            assert d < 1e-12, (k, d)
        else:  # fc / conv1d under the conv-only rule: not centralized
            assert d > 1e-4, (k, d)


def test_per_layer_switch_and_detaching():
    params = make_params()
    plist = list(params.values())
    opt = torch.optim.Adam(
        [
            dict(params=plist[:1]),  # conv: centralized
            dict(params=plist[1:], gc=False)
        ],
        lr=0.05)
    handle = attach_gc(opt, on='update')
    conv, fc = params['conv'], params['fc']
    means = [p.detach().mean(_dims(p)) for p in (conv, fc)]
    set_grads(params, 0)
    opt.step()
    assert (conv.detach().mean(_dims(conv)) - means[0]).abs().max() < 1e-12
    assert (fc.detach().mean(_dims(fc)) - means[1]).abs().max() > 1e-4
    handle.remove()
    now = conv.detach().mean(_dims(conv))
    set_grads(params, 1)
    opt.step()
    assert (conv.detach().mean(_dims(conv)) - now).abs().max() > 1e-4


def _model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4,
                                                               3)).double()


def _loss(model, i):
    g = torch.Generator().manual_seed(i)
    return model(torch.randn(2, 3, 6, 6, generator=g,
                             dtype=torch.float64)).pow(2).mean()


def test_constructor_update_mode_with_clipping_and_accumulation():
    """Through MMEngine: clip, accumulate 2, then AdamW with GC on the
    update equals AdamW_GC2 under the same wrapper."""
    ours, theirs = _model(), _model()
    common = dict(clip_grad=dict(max_norm=0.01), accumulative_counts=2)
    w1 = build_optim_wrapper(
        ours,
        dict(
            constructor='GCOptimWrapperConstructor',
            gc=dict(on='update'),
            optimizer=dict(type='AdamW', lr=0.05, weight_decay=0.1),
            **common))
    w2 = build_optim_wrapper(
        theirs,
        dict(
            optimizer=dict(type='AdamW_GC2', lr=0.05, weight_decay=0.1),
            **common))
    for i in range(6):
        w1.update_params(_loss(ours, i))
        w2.update_params(_loss(theirs, i))
        for a, b in zip(ours.parameters(), theirs.parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_bad_mode_is_refused():
    with pytest.raises(ValueError, match="'grad' or 'update'"):
        GCOptimWrapperConstructor(
            dict(
                type='OptimWrapper',
                gc=dict(on='weights'),
                optimizer=dict(type='SGD', lr=0.1)))
    with pytest.raises(ValueError, match="'grad' or 'update'"):
        attach_gc(
            torch.optim.SGD([nn.Parameter(torch.ones(2, 2))], lr=1),
            on='weights')
