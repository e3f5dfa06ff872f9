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

from helpers import DEVICES, kind, make_params, set_grads

STEPS = 8


@pytest.mark.parametrize('name',
                         ['Adam_GC2', 'Adam_GCC2', 'AdamW_GC2', 'AdamW_GCC2'])
@pytest.mark.parametrize('amsgrad', [False, True])
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('device', DEVICES)
def test_wrapping_torch_adam_equals_the_gc2_variants(name, amsgrad, dtype,
                                                     device):
    cls = GC_OPTIMIZERS[name]
    a = make_params(dtype=dtype, device=device)
    b = make_params(dtype=dtype, device=device)
    hyper = dict(lr=0.05, weight_decay=0.1, amsgrad=amsgrad, foreach=False)
    ours = (torch.optim.AdamW if kind(cls).decoupled else torch.optim.Adam)(
        a.values(), **hyper)
    attach_gc(ours, conv_only=kind(cls).conv_only, on='update')
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
@pytest.mark.parametrize('device', DEVICES)
def test_row_means_stay_fixed_under_any_optimizer(name, conv_only, device):
    params = make_params(device=device)
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


@pytest.mark.parametrize('name', list(OTHERS))
@pytest.mark.parametrize('conv_only', [False, True])
def test_weights_move_as_the_optimizer_moves_them_less_the_row_means(
        name, conv_only):
    """Each step, a centralized weight moves by the optimizer's own update
    (taken by a twin without GC, from the same weights and state) less its
    row means; every other tensor by that update exactly."""
    import copy
    params = make_params()
    opt = OTHERS[name](params.values())
    attach_gc(opt, conv_only=conv_only, on='update')
    for step in range(STEPS):
        set_grads(params, step)
        twin_params = {
            k: p.detach().clone().requires_grad_()
            for k, p in params.items()
        }
        for k, p in twin_params.items():
            p.grad = None if params[k].grad is None else \
                params[k].grad.clone()
        twin = OTHERS[name](twin_params.values())
        for k, p in params.items():  # as it is (load_state_dict casts)
            twin.state[twin_params[k]] = copy.deepcopy(opt.state[p])
        before = {k: p.detach().clone() for k, p in params.items()}
        opt.step()
        twin.step()
        for k, p in params.items():
            update = twin_params[k].detach() - before[k]
            if p.dim() > (3 if conv_only else 1):
                update = update - update.mean(_dims(p), keepdim=True)
            torch.testing.assert_close(
                p.detach(),
                before[k] + update,
                rtol=0,
                atol=1e-13,
                msg=f'{k} at step {step}')
        assert any((p.detach() - before[k]).abs().max() > 1e-4
                   for k, p in params.items() if p.dim() > 3)


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


# --------------------------------------------------------------------------
# fused=True: the compiled row-mean kernels behind the hooks.
# --------------------------------------------------------------------------


def _hooked_run(name, dtype, fused, threads=None, params=None):
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        params = params or make_params(dtype=dtype)
        opt = OTHERS[name](params.values())
        attach_gc(opt, on='update', fused=fused)
        for step in range(STEPS):
            set_grads(params, step)
            opt.step()
        return {k: p.detach().clone() for k, p in params.items()}
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize('name', list(OTHERS))
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_fused_hooks_equal_torchs_ops(kernel, name, dtype):
    """The same weights but for the last bits of each row mean (summed in
    double by the kernel), and the row means kept."""
    ours = _hooked_run(name, dtype, fused=True)
    spec = _hooked_run(name, dtype, fused=False)
    start = make_params(dtype=dtype)
    tol = dict(
        rtol=0, atol=1e-13) if dtype == torch.float64 else dict(
            rtol=1e-5, atol=2e-6)
    for k in ours:
        torch.testing.assert_close(ours[k], spec[k], **tol, msg=k)
        if ours[k].dim() > 1:
            torch.testing.assert_close(
                ours[k].mean(_dims(ours[k])),
                start[k].detach().mean(_dims(start[k])),
                **tol,
                msg=k)


def test_fused_hooks_do_not_depend_on_the_thread_count(kernel):
    one = _hooked_run('NAdam', torch.float32, fused=True, threads=1)
    two = _hooked_run('NAdam', torch.float32, fused=True, threads=2)
    for k in one:
        assert torch.equal(one[k], two[k]), k


def test_fused_hooks_leave_odd_weights_to_torchs_ops(kernel):
    """channels_last, float16 and weights that share memory: the same as
    without fused (what the kernels take is split off, the rest runs
    torch's ops)."""

    def params():
        g = torch.Generator().manual_seed(1)
        flat = torch.randn(2 * 4 * 3 * 3 * 3, generator=g)
        return {
            'plain':
            torch.randn(6, 5, 3, 3, generator=g),
            'channels_last':
            torch.randn(6, 5, 3, 3,
                        generator=g).to(memory_format=torch.channels_last),
            'half':
            torch.randn(6, 20, generator=g).half(),
            'bias':
            torch.randn(6, generator=g),
            'view_a':
            flat[:4 * 27].view(4, 3, 3, 3),
            'view_b':
            flat[4 * 27:].view(4, 3, 3, 3),
        }

    out = []
    for fused in (True, False):
        ps = {
            k: v.clone(memory_format=torch.preserve_format).requires_grad_()
            for k, v in params().items()
        }
        if fused:  # views of one storage, side by side: still taken
            flat = torch.cat([
                ps['view_a'].detach().flatten(),
                ps['view_b'].detach().flatten()
            ])
            ps['view_a'] = flat[:4 * 27].view(4, 3, 3, 3).requires_grad_()
            ps['view_b'] = flat[4 * 27:].view(4, 3, 3, 3).requires_grad_()
        out.append(_hooked_run('SGD', None, fused=fused, params=ps))
    for k in out[0]:
        tol = dict(
            rtol=1e-3, atol=1e-3) if k == 'half' else dict(
                rtol=1e-5, atol=2e-6)
        torch.testing.assert_close(
            out[0][k].float(), out[1][k].float(), **tol, msg=k)


@pytest.mark.parametrize('how', ['env', 'no_compiler'])
def test_fused_hooks_without_the_kernels_run_torchs_ops(
        monkeypatch, log_lines, how):
    from helpers import break_the_build
    expected = break_the_build(monkeypatch, how)
    ours = _hooked_run('Adamax', torch.float64, fused=True)
    spec = _hooked_run('Adamax', torch.float64, fused=False)
    for k in ours:
        assert torch.equal(ours[k], spec[k]), k
    said = [m for m in log_lines if 'GC on the update' in m]
    assert len(said) == 1 and expected in said[0]


def test_fused_is_for_gc_on_the_update():
    with pytest.raises(ValueError, match="on='update'"):
        attach_gc(
            torch.optim.SGD([nn.Parameter(torch.ones(2, 2))], lr=1),
            fused=True)
    with pytest.raises(ValueError, match="on='update'"):
        GCOptimWrapperConstructor(
            dict(
                type='OptimWrapper',
                gc=dict(fused=True),
                optimizer=dict(type='SGD', lr=0.1)))
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 1))
    wrapper = GCOptimWrapperConstructor(
        dict(
            type='OptimWrapper',
            gc=dict(on='update', fused=True),
            optimizer=dict(type='SGD', lr=0.1)))(
                net)
    before = [row_mean_of(p) for p in net.parameters() if p.dim() > 1]
    net(torch.randn(1, 3, 6, 6)).sum().backward()
    wrapper.step()
    after = [row_mean_of(p) for p in net.parameters() if p.dim() > 1]
    for b, a in zip(before, after):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def row_mean_of(p):
    return p.detach().mean(_dims(p))


def test_fused_hooks_give_the_kernels_what_they_take(kernel, monkeypatch):
    import mmdet_gc.optim.fused as fused_mod
    module = fused_mod.module()
    calls = []

    class Spy:

        def row_means(self, params):
            calls.append(('row_means', [tuple(p.shape) for p in params]))
            return module.row_means(params)

        def __getattr__(self, name):
            return getattr(module, name)

    monkeypatch.setattr(fused_mod, 'module_or_log', lambda *a: Spy())
    w = nn.Parameter(torch.randn(6, 5, 3, 3))
    cl = nn.Parameter(
        torch.randn(4, 5, 3, 3).to(memory_format=torch.channels_last))
    b = nn.Parameter(torch.randn(6))
    for p in (w, cl, b):
        p.grad = torch.randn_like(p)
    opt = torch.optim.SGD([w, cl, b], lr=0.1)
    attach_gc(opt, on='update', fused=True)
    opt.step()
    assert calls == [('row_means', [(6, 5, 3, 3)])]
