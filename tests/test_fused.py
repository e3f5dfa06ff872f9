"""The fused CPU kernel of the SGD GC optimizers (``fused=True``).

Yong et al., "Gradient Centralization: A New Optimization Technique for Deep
Neural Networks", ECCV 2020 (arXiv:2004.01461).

The compiled kernel (:mod:`mmdet_gc.fused`) is checked against the
single-tensor kernel, which is the specification, after every step, for
every option and dtype; against float64 references written from the maths;
for the paper's property that row means of centralized weights never
change; for state dicts moving between kernels; for results that do not
depend on the thread count; and for the fallback when it cannot be built
(that test always runs).
"""
import copy
import logging

import pytest
import torch
from mmengine.logging import MMLogger

import mmdet_gc.fused as fused_mod
from mmdet_gc import SGD_GC, SGD_GCC, SGDW_GC, SGDW_GCC
from mmdet_gc.functional import sgd_gc

from helpers import (DT, SGD_HYPER, assert_same_as, check_against_reference,
                     grad_for, make_params, product, reference_for, set_grads)

CLASSES = [SGD_GC, SGD_GCC, SGDW_GC, SGDW_GCC]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
STEPS = 12

# The fused kernel rounds every value as the single-tensor kernel does,
# except the last bits of each row mean (summed in double there, in the
# accumulation dtype by torch). Allowed difference after each of STEPS
# steps, in units of eps(dtype) times the tensor's largest magnitude; the
# largest seen (x86-64 with FMA, torch 2.13) is 1.21 for every dtype.
ULPS = 4


@pytest.fixture(scope='module')
def kernel():
    """Skip where the kernel cannot be built (the fallback test runs)."""
    reason = fused_mod.fused_unavailable_reason()
    if reason is not None:
        pytest.skip(f'the fused kernel cannot be built here: {reason}')


def grads_at(step, params):
    """helpers' gradients, plus a first buffer that appears late: 'fc' has
    none on every third step, 'conv_dw' none on the first two."""
    out = {}
    for k, p in params.items():
        g = grad_for(k, step, p.shape, p.dtype)
        out[k] = None if k == 'conv_dw' and step < 2 else g
    return out


def groups_of(params, hyper):
    """Two groups: GC on, and GC off with its own lr / momentum."""
    off = ['conv1d', 'gamma']
    second = dict(gc=False, lr=0.02)
    if hyper.get('momentum'):
        second['momentum'] = 0.5
    return [
        dict(params=[p for k, p in params.items() if k not in off]),
        dict(params=[params[k] for k in off], **second),
    ]


def assert_near(ours, spec, dtype, msg):
    eps = torch.finfo(dtype).eps
    scale = spec.detach().abs().max().double().item() or 1.
    torch.testing.assert_close(
        ours.detach().double(),
        spec.detach().double(),
        rtol=0,
        atol=ULPS * eps * scale,
        msg=msg)


@pytest.mark.parametrize('cls,hyper,dtype',
                         product(CLASSES, SGD_HYPER, DTYPES))
def test_matches_single_tensor_kernel_every_step(kernel, cls, hyper, dtype):
    ours, spec = make_params(dtype=dtype), make_params(dtype=dtype)
    opt = cls(groups_of(ours, hyper), fused=True, **hyper)
    ref = cls(groups_of(spec, hyper), foreach=False, **hyper)
    for step in range(STEPS):
        grads = grads_at(step, ours)
        kept = {k: g.clone() for k, g in grads.items() if g is not None}
        for k in ours:
            ours[k].grad = grads[k]
            spec[k].grad = None if grads[k] is None else grads[k].clone()
        opt.step()
        ref.step()
        for k in ours:
            assert ours[k].dtype == dtype
            assert_near(ours[k], spec[k], dtype, f'{k} step {step}')
            s_ours, s_spec = opt.state[ours[k]], ref.state[spec[k]]
            assert s_ours.keys() == s_spec.keys(), (k, step)
            for key in s_spec:
                assert s_ours[key].dtype == dtype
                assert s_ours[key].is_contiguous()
                assert_near(s_ours[key], s_spec[key], dtype,
                            f'{k}.{key} step {step}')
            if k in kept:  # p.grad is read, never written
                assert torch.equal(ours[k].grad, kept[k]), (k, step)
    assert len(opt.state) == len(ref.state)


@pytest.mark.parametrize(
    'cls,hyper',
    # helpers' SGDW reference has neither dampening nor nesterov.
    [(c, h) for c, h in product(CLASSES, SGD_HYPER)
     if not (c.decoupled and (h.get('dampening') or h.get('nesterov')))])
def test_float64_matches_reference_from_the_maths(kernel, cls, hyper):
    params = make_params()
    opt = cls(params.values(), fused=True, **hyper)
    check_against_reference(opt, params, reference_for(cls.__name__),
                            cls.gc_conv_only, lambda k: hyper, STEPS)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_as_accurate_as_the_single_tensor_kernel(kernel, dtype):
    """Against a float64 run from the same start, the fused kernel's error
    is the spec's own rounding error, not more."""
    hyper = dict(lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True)
    start = make_params(dtype=dtype)
    runs = {}
    for name, kw in (('fused', dict(fused=True)),
                     ('spec', dict(foreach=False)), ('f64',
                                                     dict(foreach=False))):
        ps = {
            k: p.detach().to(DT if name == 'f64' else dtype).requires_grad_()
            for k, p in start.items()
        }
        opt = SGD_GC(ps.values(), **kw, **hyper)
        for step in range(STEPS):
            for k, p in ps.items():
                g = grad_for(k, step, p.shape, dtype)
                p.grad = None if g is None else g.to(p.dtype)
            opt.step()
        runs[name] = ps
    for k in start:
        truth = runs['f64'][k].detach()
        err = {
            n: (runs[n][k].detach().double() - truth).abs().max().item()
            for n in ('fused', 'spec')
        }
        tiny = torch.finfo(dtype).eps * truth.abs().max().item()
        assert err['fused'] <= 1.25 * err['spec'] + tiny, (k, err)


@pytest.mark.parametrize(
    'cls,hyper,dtype',
    product([SGD_GC, SGD_GCC], SGD_HYPER[2:], [torch.float64, torch.float32]))
def test_row_means_of_centralized_weights_never_change(kernel, cls, hyper,
                                                       dtype):
    params = make_params(dtype=dtype)
    cen = {
        k
        for k, p in params.items() if p.dim() > (3 if cls.gc_conv_only else 1)
    }
    dims = {k: tuple(range(1, params[k].dim())) for k in cen}
    before = {k: params[k].detach().double().mean(dims[k]) for k in cen}
    opt = cls(params.values(), fused=True, **hyper)
    for step in range(60):
        set_grads(params, step)
        opt.step()
    atol = 1e-12 if dtype == torch.float64 else 1e-5
    for k in cen:
        p = params[k].detach().double()
        assert (p - p.mean(dims[k], keepdim=True)).abs().max() > 0.1, k
        torch.testing.assert_close(
            p.mean(dims[k]), before[k], rtol=0, atol=atol, msg=k)


@pytest.mark.parametrize('cls', [SGDW_GC, SGDW_GCC])
def test_sgdw_only_scales_the_row_means(kernel, cls):
    """With decoupled decay the row means shrink by (1 - lr * wd) a step."""
    hyper = dict(lr=0.05, momentum=0.9, weight_decay=0.1)
    params = make_params()
    cen = [
        k for k, p in params.items()
        if p.dim() > (3 if cls.gc_conv_only else 1)
    ]
    before = {
        k: params[k].detach().mean(tuple(range(1, params[k].dim())))
        for k in cen
    }
    opt = cls(params.values(), fused=True, **hyper)
    steps = {k: 0 for k in cen}
    for step in range(30):
        set_grads(params, step)
        steps = {k: n + (params[k].grad is not None) for k, n in steps.items()}
        opt.step()
    for k in cen:
        p = params[k].detach()
        torch.testing.assert_close(
            p.mean(tuple(range(1, p.dim()))),
            before[k] * (1 - 0.05 * 0.1)**steps[k],
            rtol=0,
            atol=1e-12,
            msg=k)


def _rebuilt(cls, params, state_dict, hyper, **mode):
    """A new optimizer of another kernel, from a saved state. torch.optim
    restores ``foreach`` / ``fused`` from the state dict: set them back."""
    opt = cls(params, **hyper, **mode)
    opt.load_state_dict(copy.deepcopy(state_dict))
    for group in opt.param_groups:
        group.update(fused=mode.get('fused'), foreach=mode.get('foreach'))
    return opt


@pytest.mark.parametrize('cls', CLASSES)
def test_state_dict_moves_between_kernels(kernel, cls):
    hyper = dict(lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True)
    modes = [
        dict(fused=True),
        dict(foreach=True),
        dict(foreach=False),
        dict(fused=True)
    ]
    spec = make_params()
    ref = cls(spec.values(), foreach=False, **hyper)
    moved = make_params()
    opt = None
    for stage, mode in enumerate(modes):
        if opt is None:
            opt = cls(moved.values(), **hyper, **mode)
        else:
            opt = _rebuilt(cls, list(moved.values()), opt.state_dict(), hyper,
                           **mode)
        for step in range(4 * stage, 4 * stage + 4):
            set_grads(spec, step)
            set_grads(moved, step)
            ref.step()
            opt.step()
        for k in spec:
            torch.testing.assert_close(
                moved[k], spec[k], rtol=0, atol=1e-13, msg=(k, mode))
            s_opt, s_ref = opt.state[moved[k]], ref.state[spec[k]]
            assert s_opt.keys() == s_ref.keys() == {'momentum_buffer'}
            torch.testing.assert_close(
                s_opt['momentum_buffer'],
                s_ref['momentum_buffer'],
                rtol=0,
                atol=1e-13,
                msg=(k, mode))
    # Resuming the fused kernel from its own state changes no bit.
    straight, resumed = make_params(), make_params()
    a = cls(straight.values(), fused=True, **hyper)
    b = cls(resumed.values(), fused=True, **hyper)
    for step in range(10):
        if step == 5:
            b = _rebuilt(
                cls, list(resumed.values()), b.state_dict(), hyper, fused=True)
        set_grads(straight, step)
        set_grads(resumed, step)
        a.step()
        b.step()
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k


def _run_threads(threads):
    g = torch.Generator().manual_seed(5)
    shapes = [((64, 64, 3, 3), torch.float32), ((300, 700), torch.float32),
              ((96, 32, 3, 3), torch.float64),
              ((64, 48, 3, 3), torch.bfloat16), ((7, 5), torch.float16),
              ((1, 70000), torch.float32), ((64, ), torch.float32)]
    params = [
        torch.randn(s, generator=g).to(dt).requires_grad_() for s, dt in shapes
    ]
    opt = SGD_GC(
        params,
        fused=True,
        lr=0.05,
        momentum=0.9,
        weight_decay=1e-3,
        nesterov=True)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for step in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g).to(p.dtype)
            opt.step()
    finally:
        torch.set_num_threads(previous)
    return [p.detach().clone() for p in params
            ] + [opt.state[p]['momentum_buffer'].clone() for p in params]


def test_one_and_two_threads_give_the_same_bits(kernel):
    previous = torch.get_num_threads()
    one, two = _run_threads(1), _run_threads(2)
    assert torch.get_num_threads() == previous
    for a, b in zip(one, two):
        assert torch.equal(a, b)


@pytest.mark.parametrize('hyper', SGD_HYPER)
def test_plain_tensors_take_torchs_fused_sgd(kernel, hyper):
    """A group with GC off equals torch.optim.SGD(fused=True) bit for
    bit."""
    a, b = make_params(), make_params()
    opt = SGD_GC([dict(params=list(a.values()), gc=False)],
                 fused=True,
                 **hyper)
    ref = torch.optim.SGD(b.values(), fused=True, **hyper)
    assert_same_as(opt, a, ref, b, STEPS)


def test_odd_layouts_take_the_single_tensor_kernel(kernel):
    """channels_last, strided and empty weights are left to the spec."""
    hyper = dict(lr=0.05, momentum=0.9, weight_decay=1e-3)

    def make():
        g = torch.Generator().manual_seed(1)
        conv = torch.randn(8, 4, 3, 3, generator=g, dtype=DT)
        fc = torch.randn(6, 5, generator=g, dtype=DT)
        return [
            conv.to(memory_format=torch.channels_last).requires_grad_(),
            fc.t().requires_grad_(),
            torch.zeros(0, 3, dtype=DT, requires_grad=True),
        ]

    ours, spec = make(), make()
    assert not ours[0].is_contiguous() and not ours[1].is_contiguous()
    opt = SGD_GC(ours, fused=True, **hyper)
    ref = SGD_GC(spec, foreach=False, **hyper)
    g = torch.Generator().manual_seed(2)
    for step in range(4):
        for p, q in zip(ours, spec):
            p.grad = torch.randn(p.shape, generator=g, dtype=DT)
            q.grad = p.grad.clone()
        opt.step()
        ref.step()
        for p, q in zip(ours, spec):
            assert torch.equal(p, q)
            assert torch.equal(opt.state[p]['momentum_buffer'],
                               ref.state[q]['momentum_buffer'])


def test_functional_sgd_gc_fused(kernel):
    params = make_params()
    spec = {k: p.detach().clone() for k, p in params.items()}
    names = list(params)
    cen = [params[k].dim() > 1 for k in names]
    bufs, spec_bufs = [None] * len(names), [None] * len(names)
    hyper = dict(
        weight_decay=1e-3,
        momentum=0.9,
        lr=0.05,
        dampening=0.,
        nesterov=False,
        maximize=False)
    with torch.no_grad():
        for step in range(3):
            grads = [grad_for(k, 0, params[k].shape) for k in names]
            sgd_gc([params[k] for k in names],
                   grads,
                   bufs,
                   cen,
                   fused=True,
                   **hyper)
            sgd_gc([spec[k] for k in names],
                   grads,
                   spec_bufs,
                   cen,
                   foreach=False,
                   **hyper)
    assert all(b is not None for b in bufs)
    for k, b, sb in zip(names, bufs, spec_bufs):
        assert_near(params[k], spec[k], DT, k)
        assert_near(b, sb, DT, k)
    with pytest.raises(ValueError, match='cannot be `True` together'):
        sgd_gc([params['conv']], [params['conv'].detach()], [None], [True],
               foreach=True,
               fused=True,
               **hyper)


def test_step_bumps_the_version_counter(kernel):
    p = torch.nn.Parameter(torch.randn(4, 3))
    p.grad = torch.randn(4, 3)
    version = p._version
    SGD_GC([p], lr=0.1, momentum=0.9, fused=True).step()
    assert p._version > version


@pytest.mark.parametrize('cls', CLASSES)
def test_fused_and_foreach_together_are_refused(cls):
    p = torch.nn.Parameter(torch.ones(2, 2))
    with pytest.raises(ValueError, match='`fused` and `foreach`'):
        cls([p], lr=0.1, fused=True, foreach=True)
    with pytest.raises(ValueError, match='`fused` and `foreach`'):
        cls([dict(params=[p], foreach=True)], lr=0.1, fused=True)
    with pytest.raises(ValueError, match='differentiable=True'):
        cls([p], lr=0.1, fused=True, differentiable=True)
    assert cls([p], lr=0.1, fused=True).param_groups[0]['fused'] is True


class _Records(logging.Handler):

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def log_lines(monkeypatch):
    """The messages logged through MMEngine's current logger."""
    monkeypatch.setattr(fused_mod, '_logged', set())
    logger = MMLogger.get_current_instance()
    handler = _Records()
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


def _fallback_matches_single_tensor(messages):
    for cls in CLASSES:
        hyper = dict(lr=0.05, momentum=0.9, weight_decay=1e-2)
        a, b = make_params(), make_params()
        ours = cls(a.values(), fused=True, **hyper)
        spec = cls(b.values(), foreach=False, **hyper)
        assert_same_as(ours, a, spec, b, 6)
    ours = [m for m in messages if 'mmdet_gc' in m]
    assert len(ours) == 1, messages
    assert '\n' not in ours[0]
    return ours[0]


@pytest.mark.parametrize('how', ['env', 'no_compiler'])
def test_fallback_when_the_kernel_cannot_be_built(monkeypatch, log_lines, how):
    if how == 'env':
        monkeypatch.setenv(fused_mod.NO_BUILD_ENV, '1')
    else:
        monkeypatch.delenv(fused_mod.NO_BUILD_ENV, raising=False)

        def no_compiler(*args, **kwargs):
            raise RuntimeError(
                "Error building extension 'x': [1/2] c++ -c x.cpp\n"
                '/bin/sh: 1: c++: not found\nninja: build stopped')

        import torch.utils.cpp_extension
        monkeypatch.setattr(torch.utils.cpp_extension, 'load', no_compiler)
        monkeypatch.setattr(fused_mod, '_state',
                            dict(tried=False, module=None, reason=None))
    assert not fused_mod.fused_available()
    line = _fallback_matches_single_tensor(log_lines)
    expected = fused_mod.NO_BUILD_ENV if how == 'env' else 'c++: not found'
    assert expected in line and 'single-tensor' in line


def test_tensors_off_the_cpu_take_the_foreach_kernel(log_lines):
    p = torch.nn.Parameter(torch.empty(4, 3, 3, 3, device='meta'))
    p.grad = torch.empty(4, 3, 3, 3, device='meta')
    opt = SGD_GC([p], lr=0.1, momentum=0.9, fused=True)
    opt.step()
    opt.step()
    assert opt.state[p]['momentum_buffer'].device.type == 'meta'
    ours = [m for m in log_lines if 'mmdet_gc' in m]
    assert len(ours) == 1 and 'meta' in ours[0] and 'foreach' in ours[0]
