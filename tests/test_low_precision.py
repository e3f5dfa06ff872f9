"""bf16 / fp16 parameters and channels_last gradients on every step path.

GC's row mean is accumulated in float32 for half precision (a bf16 sum of
a few thousand values loses the very bits GC removes), on every path: the
single-tensor specification, foreach (per tensor on the CPU, one segmented
reduction on CUDA), fused (our CPU kernel, torch's fused kernels on CUDA)
and compiled. The paths agree to the precision of the dtype, and a
channels_last weight keeps its layout in its state.
"""
import pytest
import torch

from mmdet_gc.optim import GC_OPTIMIZERS, centralize, foreach_centralize
from mmdet_gc.optim.gc import CUDA_PATHS_ENV

from helpers import DEVICES, kind

HALF = [torch.bfloat16, torch.float16]
#: Agreement between paths after the steps: a few units in the last place.
TOL = {
    torch.bfloat16: dict(rtol=3e-2, atol=3e-2),
    torch.float16: dict(rtol=4e-3, atol=4e-3)
}
STEPS = 4
CLASSES = ['SGD_GC', 'SGDW_GCC', 'Adam_GC', 'AdamW_GC2', 'Adagrad_GC']
HYPER = {
    'SGD': dict(lr=0.05, momentum=0.9, weight_decay=1e-3),
    'SGDW': dict(lr=0.05, momentum=0.9, weight_decay=1e-2),
    # eps=1e-8 is below float16's smallest step: a denominator of 0 makes
    # the update inf on any path, so half precision takes a larger one, with
    # which the paths that round in float32 (torch's fused Adam) and those
    # that round in the dtype (torch's single-tensor Adam) stay close.
    'Adam': dict(lr=1e-2, weight_decay=1e-3, eps=1e-3),
    'AdamW': dict(lr=1e-2, weight_decay=1e-2, eps=1e-3),
    'Adagrad': dict(lr=0.05, weight_decay=1e-3),
}


def _rows_with_an_offset(dtype, device, shape=(4, 64, 8, 8)):
    """Rows of 4096 values around a large common offset: the mean a bf16
    accumulation would get wrong by far more than one rounding."""
    gen = torch.Generator().manual_seed(0)
    g = 100 + torch.randn(shape, generator=gen)
    return g.to(dtype).to(device)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('cuda_paths', ['0', '1'])
@pytest.mark.parametrize('dtype', HALF)
def test_row_means_of_half_gradients_are_taken_in_float32(
        monkeypatch, device, cuda_paths, dtype):
    monkeypatch.setenv(CUDA_PATHS_ENV, cuda_paths)
    g = _rows_with_an_offset(dtype, device)
    exact = g.double() - g.double().mean(dim=(1, 2, 3), keepdim=True)
    for out in (centralize(g), *foreach_centralize([g, g.clone()])):
        assert out.dtype == dtype
        # One rounding of the exact result (float32's mean is exact to
        # far below a half-precision unit here).
        torch.testing.assert_close(out, exact.to(dtype), rtol=0, atol=0)


def _params(dtype, device, channels_last):
    gen = torch.Generator().manual_seed(1)
    shapes = {'conv': (8, 4, 3, 3), 'fc': (6, 16), 'bias': (8, )}
    params = {
        k: torch.randn(s, generator=gen).to(device, dtype)
        for k, s in shapes.items()
    }
    if channels_last:
        params['conv'] = params['conv'].contiguous(
            memory_format=torch.channels_last)
    return {k: p.requires_grad_() for k, p in params.items()}


def _set_grads(params, step, channels_last):
    gen = torch.Generator().manual_seed(100 + step)
    for p in params.values():
        g = torch.randn(p.shape, generator=gen).to(p.device, p.dtype)
        if channels_last and p.dim() == 4:
            g = g.contiguous(memory_format=torch.channels_last)
        p.grad = g


def _run(name, mode, dtype, device, channels_last, monkeypatch):
    cls = GC_OPTIMIZERS[name]
    monkeypatch.setenv(CUDA_PATHS_ENV, '1' if mode == 'cuda-paths' else '0')
    params = _params(dtype, device, channels_last)
    kw = dict(fused=True) if mode in ('fused', 'cuda-paths') else dict(
        foreach=mode == 'foreach')
    opt = cls(params.values(), **kw, **HYPER[kind(cls).algorithm])
    for step in range(STEPS):
        _set_grads(params, step, channels_last)
        opt.step()
    return params, opt


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('dtype', HALF)
@pytest.mark.parametrize('name', CLASSES)
def test_every_path_agrees_in_half_precision(monkeypatch, device,
                                             channels_last, dtype, name):
    spec, _ = _run(name, 'single', dtype, device, channels_last, monkeypatch)
    # torch's fused Adam keeps its intermediates in float32, its
    # single-tensor Adam (the specification's) rounds them to float16, where
    # a small second moment falls into the subnormals: the fused path is
    # compared with the specification run in float32.
    in_float32, _ = _run(name, 'single', torch.float32, device, channels_last,
                         monkeypatch)
    for mode in ('foreach', 'fused', 'cuda-paths'):
        params, opt = _run(name, mode, dtype, device, channels_last,
                           monkeypatch)
        torch_adam = mode == 'cuda-paths' and dtype == torch.float16 and \
            name.startswith('Adam') and not name.endswith('2')
        for k, p in params.items():
            # A channels_last weight takes the specification (torch's fused
            # kernels need contiguous memory).
            ref = {k: in_float32[k].to(dtype)} if torch_adam and \
                p.is_contiguous() else spec
            assert p.dtype == dtype
            torch.testing.assert_close(
                p, ref[k], **TOL[dtype], msg=lambda m: f'{mode} {k}: {m}')
        conv = params['conv']
        assert conv.is_contiguous(memory_format=torch.channels_last) == \
            channels_last
        for value in opt.state[conv].values():
            if value.shape == conv.shape:  # momentum, moments, sum
                assert value.dtype == dtype
                assert value.is_contiguous(
                    memory_format=torch.channels_last) == channels_last, (
                        mode)


@pytest.mark.parametrize('dtype', HALF)
def test_the_compiled_step_agrees_in_half_precision(monkeypatch, dtype):
    torch._dynamo.reset()
    spec, _ = _run('SGD_GC', 'single', dtype, 'cpu', True, monkeypatch)
    params = _params(dtype, 'cpu', True)
    opt = GC_OPTIMIZERS['SGD_GC'](params.values(), **HYPER['SGD'])
    step = torch.compile(opt.step, fullgraph=True)
    for i in range(STEPS):
        _set_grads(params, i, True)
        step()
    for k, p in params.items():
        torch.testing.assert_close(p, spec[k], **TOL[dtype])
    torch._dynamo.reset()


@pytest.mark.parametrize('name', ['Adam_GC2', 'AdamW_GCC2'])
def test_foreach_update_does_not_overflow_float16(monkeypatch, name):
    """With eps=1e-4 the specification's denominator ``sqrt(v) / sqrt(bc2)
    + eps`` stays representable; the foreach kernel's float32 rewrite
    (``eps * sqrt(bc2)`` and a reciprocal) would overflow float16 to inf
    on the first steps, so half precision takes the specification's
    form."""
    hyper = dict(lr=1e-2, weight_decay=1e-2, eps=1e-4)
    runs = []
    for foreach in (False, True):
        params = _params(torch.float16, 'cpu', False)
        opt = GC_OPTIMIZERS[name](params.values(), foreach=foreach, **hyper)
        for step in range(STEPS):
            _set_grads(params, step, False)
            opt.step()
        runs.append(params)
    for k, p in runs[1].items():
        assert torch.isfinite(p).all(), k
        torch.testing.assert_close(p, runs[0][k], **TOL[torch.float16])
