"""``fused=True`` through torch's own fused kernels on centralized
gradients: the path CUDA takes, tested here through its CPU twin
(``MMDET_GC_CUDA_PATHS=1``) and on CUDA where a device is present.

Checked per family: with GC off bit for bit equal to torch's fused step
(torch's kernel is what runs); with GC on equal to the specification; a
GradScaler's scale unscaled and its inf flag skipping the step inside the
kernel, state untouched; the state the other kernels keep; ``p.grad``
never modified.
"""
import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mmdet_gc.optim import (SGD_GC, SGDW_GC, Adagrad_GC, Adam_GC, AdamW_GC,
                            AdamW_GC2, AdamW_GCC2)
from mmdet_gc.optim.gc import CUDA_PATHS_ENV, is_centralized

from helpers import DEVICES, kind, make_params, set_grads

STEPS = 6

#: (GC class, torch.optim class, hyper-parameters, torch's fused op)
CASES = [
    (SGD_GC, torch.optim.SGD, dict(lr=0.05, momentum=0.9,
                                   weight_decay=1e-3), '_fused_sgd_'),
    (SGD_GC, torch.optim.SGD,
     dict(
         lr=0.05,
         momentum=0.8,
         nesterov=True,
         maximize=True,
         weight_decay=1e-3), '_fused_sgd_'),
    (SGD_GC, torch.optim.SGD, dict(lr=0.05), '_fused_sgd_'),
    (Adam_GC, torch.optim.Adam, dict(lr=0.01, weight_decay=1e-3,
                                     amsgrad=True), '_fused_adam_'),
    (AdamW_GC, torch.optim.AdamW,
     dict(lr=0.01, weight_decay=1e-2, maximize=True), '_fused_adamw_'),
    (Adagrad_GC, torch.optim.Adagrad,
     dict(lr=0.05, weight_decay=1e-3, lr_decay=0.01), '_fused_adagrad_'),
]
IDS = [f'{c[0].__name__}-{i}' for i, c in enumerate(CASES)]


@pytest.fixture
def torch_path(monkeypatch):
    monkeypatch.setenv(CUDA_PATHS_ENV, '1')


class _Ops(TorchDispatchMode):
    """The names of the aten ops dispatched inside."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _device_ok(device, theirs):
    if device == 'cuda' and theirs is torch.optim.Adagrad:
        pytest.skip("torch's fused Adagrad runs on the CPU only")


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('ours,theirs,hyper,op', CASES, ids=IDS)
def test_gc_off_is_torchs_fused_step_bit_for_bit(torch_path, device, ours,
                                                 theirs, hyper, op):
    _device_ok(device, theirs)
    a, b = make_params(device=device), make_params(device=device)
    mine = ours(a.values(), fused=True, gc=False, **hyper)
    ref = theirs(b.values(), fused=True, **hyper)
    for step in range(STEPS):
        set_grads(a, step)
        set_grads(b, step)
        with _Ops() as ops:
            mine.step()
        assert op in ops.names
        ref.step()
        for k in a:
            assert torch.equal(a[k], b[k]), (k, step)
            for key, value in ref.state[b[k]].items():
                assert torch.equal(mine.state[a[k]][key], value), (k, key)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('ours,theirs,hyper,op', CASES, ids=IDS)
def test_gc_on_equals_the_specification(torch_path, device, ours, theirs,
                                        hyper, op):
    _device_ok(device, theirs)
    a, b = make_params(device=device), make_params(device=device)
    mine = ours(a.values(), fused=True, **hyper)
    spec = ours(b.values(), foreach=False, **hyper)
    for step in range(STEPS):
        set_grads(a, step)
        set_grads(b, step)
        grads = {
            k: None if p.grad is None else p.grad.clone()
            for k, p in a.items()
        }
        with _Ops() as ops:
            mine.step()
        assert op in ops.names
        spec.step()
        for k in a:
            if grads[k] is not None:  # p.grad is never modified
                assert torch.equal(a[k].grad, grads[k]), k
            torch.testing.assert_close(a[k], b[k], rtol=1e-12, atol=1e-14)
            sa, sb = mine.state[a[k]], spec.state[b[k]]
            assert sa.keys() == sb.keys(), k
            for key in sb:
                assert sa[key].dtype == sb[key].dtype
                torch.testing.assert_close(
                    sa[key], sb[key], rtol=1e-12, atol=1e-14)


def _scaled_step(opt, params, scaler, step, inf=False):
    """Gradients of ``step`` through ``scaler``'s scale (an inf in 'conv'
    when asked), then ``scaler.step``."""
    set_grads(params, step)
    device = params['conv'].device
    scale = scaler.scale(torch.ones((), dtype=torch.float64, device=device))
    for p in params.values():
        if p.grad is not None:
            p.grad.mul_(scale)
    if inf:
        params['conv'].grad[0, 0, 0, 0] = float('inf')
    scaler.step(opt)
    scaler.update()


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('gc', [False, True])
@pytest.mark.parametrize('ours,theirs,hyper,op', CASES, ids=IDS)
def test_grad_scaler_unscales_and_skips_inside(torch_path, device, gc, ours,
                                               theirs, hyper, op):
    """Under a GradScaler the step gets its scale and inf flag (the scaler
    does not unscale): with GC off it is torch's fused step under the same
    scaler bit for bit; with GC on the specification on unscaled
    gradients; a step with an inf gradient leaves parameters and state as
    they were."""
    _device_ok(device, theirs)
    a, b = make_params(device=device), make_params(device=device)
    mine = ours(a.values(), fused=True, gc=gc, **hyper)
    assert mine._step_supports_amp_scaling
    ref = theirs(b.values(), fused=True, **hyper) if not gc else \
        ours(b.values(), foreach=False, **hyper)
    s1 = torch.amp.GradScaler(device, init_scale=1024., growth_interval=2)
    s2 = torch.amp.GradScaler(device, init_scale=1024., growth_interval=2)
    for step in range(STEPS):
        inf = step == 3
        before = (copy.deepcopy({
            k: p.detach()
            for k, p in a.items()
        }), copy.deepcopy(mine.state_dict()['state']))
        _scaled_step(mine, a, s1, step, inf)
        if gc:  # the specification on the unscaled gradients
            if not inf:
                set_grads(b, step)
                ref.step()
        else:
            _scaled_step(ref, b, s2, step, inf)
        if inf:
            for k, p in a.items():
                assert torch.equal(p, before[0][k]), k
            state = mine.state_dict()['state']
            for i, st in before[1].items():
                for key, value in st.items():
                    assert torch.equal(state[i][key], value), (i, key)
        for k in a:
            if gc:
                torch.testing.assert_close(a[k], b[k], rtol=1e-12, atol=1e-14)
            else:
                assert torch.equal(a[k], b[k]), (k, step)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('cls', [SGDW_GC])
def test_sgdw_decay_is_skipped_with_the_step(torch_path, device, cls):
    """SGDW's decoupled decay, applied apart from torch's kernel, is not
    applied on a step GradScaler skips."""
    a, b = make_params(device=device), make_params(device=device)
    hyper = dict(lr=0.05, momentum=0.9, weight_decay=1e-2)
    mine = cls(a.values(), fused=True, **hyper)
    spec = cls(b.values(), foreach=False, **hyper)
    scaler = torch.amp.GradScaler(device, init_scale=256.)
    for step in range(STEPS):
        inf = step == 2
        _scaled_step(mine, a, scaler, step, inf)
        if not inf:
            set_grads(b, step)
            spec.step()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('cls', [AdamW_GC2, AdamW_GCC2])
def test_gc_on_the_update_runs_the_foreach_kernel(torch_path, log_lines,
                                                  device, cls):
    """torch's fused Adam applies the update without returning it, so GC
    on the update runs the foreach kernel for the centralized tensors (one
    line says so; the others take torch's fused kernel), and the
    GradScaler unscales and skips as for any non-fused optimizer."""
    a, b = make_params(device=device), make_params(device=device)
    hyper = dict(lr=0.01, weight_decay=1e-2)
    mine = cls(a.values(), fused=True, **hyper)
    assert not getattr(mine, '_step_supports_amp_scaling', False)
    ref = cls(b.values(), foreach=True, **hyper)
    centred = [
        k for k, p in a.items() if is_centralized(p,
                                                  kind(cls).conv_only)
    ]
    for step in range(STEPS):
        set_grads(a, step)
        set_grads(b, step)
        with _Ops() as ops:
            mine.step()
        assert '_fused_adamw_' in ops.names
        ref.step()
        for k in centred:
            assert torch.equal(a[k], b[k]), (k, step)
    ours = [m for m in log_lines if 'mmdet_gc' in m]
    assert len(ours) == 1 and 'foreach' in ours[0], ours


@pytest.mark.parametrize('ours,theirs,hyper,op', CASES, ids=IDS)
def test_state_moves_to_the_other_kernels(torch_path, ours, theirs, hyper, op):
    """A state dict of the torch path loads into the single-tensor and
    foreach kernels, which go on as the torch path does."""
    params = make_params()
    mine = ours(params.values(), fused=True, **hyper)
    for step in range(3):
        set_grads(params, step)
        mine.step()
    saved = copy.deepcopy(mine.state_dict())
    ends = []
    for kw in (dict(fused=True), dict(foreach=True), dict(foreach=False)):
        p = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
        opt = ours(p.values(), **kw, **hyper)
        opt.load_state_dict(copy.deepcopy(saved))
        for group in opt.param_groups:
            group.update(foreach=kw.get('foreach'), fused=kw.get('fused'))
        for step in range(3, 6):
            set_grads(p, step)
            opt.step()
        ends.append(p)
    for other in ends[1:]:
        for k in params:
            torch.testing.assert_close(
                ends[0][k], other[k], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    'ours,theirs,hyper,op', CASES[:1] + CASES[3:5], ids=IDS[:1] + IDS[3:5])
def test_cpu_default_is_our_kernel_and_agrees(kernel, ours, theirs, hyper, op,
                                              monkeypatch):
    """Without the switch, CPU tensors take our compiled kernel (no torch
    fused op for the centralized ones), and its steps agree with the torch
    path's in float32."""
    runs = []
    for env in ('0', '1'):
        monkeypatch.setenv(CUDA_PATHS_ENV, env)
        params = make_params(dtype=torch.float32)
        opt = ours([params['conv'], params['fc']], fused=True, **hyper)
        for step in range(STEPS):
            set_grads(params, step)
            with _Ops() as ops:
                opt.step()
            assert (op in ops.names) == (env == '1')
        runs.append(params)
    for k in ('conv', 'fc'):
        torch.testing.assert_close(
            runs[0][k], runs[1][k], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------
# Inputs found by attacking the torch-kernel path.
# --------------------------------------------------------------------------


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('cls', [SGD_GC, SGDW_GC])
def test_an_inf_on_the_first_step_leaves_no_garbage_buffer(
        torch_path, device, cls):
    """torch's fused SGD makes a first step's buffers with ``empty_like``
    and leaves them so when GradScaler skips the step: the next step then
    starts from garbage. Ours starts from the specification's state."""
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(8, 3, 3, 3, generator=gen, dtype=torch.float64)
    g = torch.randn(w0.shape, generator=gen, dtype=torch.float64)
    w = torch.nn.Parameter(w0.clone().to(device))
    opt = cls([w], lr=0.1, momentum=0.9, fused=True)
    scaler = torch.amp.GradScaler(device, init_scale=1024.)
    scaler.scale(torch.ones((), device=device))
    # Freed memory of other values, where an ``empty_like`` lands.
    junk = [torch.full_like(w, 1e3) for _ in range(4)]
    del junk
    w.grad = torch.full_like(w, float('inf'))
    scaler.step(opt)
    scaler.update()
    w.grad = (g * scaler.get_scale()).to(device)
    scaler.step(opt)
    spec = torch.nn.Parameter(w0.clone())
    ref = cls([spec], lr=0.1, momentum=0.9, foreach=False)
    spec.grad = g
    ref.step()
    torch.testing.assert_close(w.cpu(), spec.detach(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('cls,hyper', [(SGD_GC, dict(lr=0.1, momentum=0.9)),
                                       (AdamW_GC, dict(lr=0.01))])
def test_a_channels_last_weight_with_a_contiguous_gradient(
        torch_path, device, cls, hyper):
    """torch's fused kernels walk memory in row-major order: a weight whose
    memory is not (channels_last) takes the specification."""
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(4, 3, 2, 2, generator=gen, dtype=torch.float64)
    g = torch.randn(w0.shape, generator=gen, dtype=torch.float64)
    out = []
    for kw in (dict(fused=True), dict(foreach=False)):
        p = torch.nn.Parameter(
            w0.to(device).contiguous(memory_format=torch.channels_last))
        opt = cls([p], **kw, **hyper)
        for _ in range(2):
            p.grad = g.to(device)
            opt.step()
        out.append(p.detach().cpu())
    torch.testing.assert_close(out[0], out[1], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize('device', DEVICES)
def test_gc_on_the_update_with_no_weight_for_torchs_kernel(torch_path, device):
    """Every centralized weight channels_last: none goes to torch's kernel,
    and the step still runs (it stopped on an empty foreach list)."""
    conv = torch.nn.Conv2d(3, 4,
                           3).to(device).to(memory_format=torch.channels_last)
    opt = AdamW_GC2(conv.parameters(), lr=1e-3, fused=True)
    x = torch.randn(
        2, 3, 8, 8,
        device=device).contiguous(memory_format=torch.channels_last)
    conv(x).sum().backward()
    before = conv.weight.detach().clone()
    opt.step()
    assert not torch.equal(conv.weight, before)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('ours,theirs,hyper,op', CASES, ids=IDS)
def test_a_grad_scaler_leaves_every_gradient_as_it_was(torch_path, device,
                                                       ours, theirs, hyper,
                                                       op):
    """torch's fused kernels unscale the gradients they take in place; the
    plain tensors' (biases, norms) get copies, so no ``p.grad`` changes."""
    _device_ok(device, theirs)
    params = make_params(device=device)
    opt = ours(params.values(), fused=True, **hyper)
    scaler = torch.amp.GradScaler(device, init_scale=1024.)
    _scaled_step(opt, params, scaler, 0)
    set_grads(params, 1)
    for p in params.values():
        if p.grad is not None:
            p.grad.mul_(scaler.get_scale())
    grads = {
        k: p.grad.clone()
        for k, p in params.items() if p.grad is not None
    }
    scaler.step(opt)
    for k, g in grads.items():
        assert torch.equal(params[k].grad, g), k
