"""The fused CPU kernel of the SGD GC optimizers (``fused=True``).

Yong et al., "Gradient Centralization: A New Optimization Technique for Deep
Neural Networks", ECCV 2020 (arXiv:2004.01461).

The compiled kernel (:mod:`mmdet_gc.optim.fused`) is checked against the
single-tensor kernel, which is the specification, after every step, for
every option and dtype; against float64 references written from the maths;
for the paper's property that row means of centralized weights never
change; for state dicts moving between kernels; for results that do not
depend on the thread count; for tensors whose memory is not their values
(negative or conjugate bit, strided, expanded), which take the
specification; and for the fallback when it cannot be built (that test
always runs).
"""
import warnings

import pytest
import torch

import mmdet_gc.optim.fused as fused_mod
from mmdet_gc import SGD_GC, SGD_GCC, SGDW_GC, SGDW_GCC, Adam_GC, AdamW_GC2
from mmdet_gc.optim.sgd import sgd_gc

from helpers import (DT, NOT_VALUES, SGD_HYPER, assert_fused_refused_with,
                     assert_row_means_kept, assert_same_as,
                     assert_same_bits_on_one_and_two_threads,
                     assert_within_ulps, break_the_build,
                     centralized_row_means, check_against_reference,
                     check_fallback, check_memory_that_is_not_values,
                     check_odd_layouts_take_the_single_tensor_kernel,
                     check_state_dict_moves, grad_for, kind, make_params,
                     product, reference_for, set_fused_grads, set_grads,
                     viewed)

CLASSES = [SGD_GC, SGD_GCC, SGDW_GC, SGDW_GCC]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
STEPS = 12

# The fused kernel rounds every value as the single-tensor kernel does,
# except the last bits of each row mean (summed in double there, in the
# accumulation dtype by torch). Allowed difference after each of STEPS
# steps, in units of eps(dtype) times the tensor's largest magnitude; the
# largest seen (x86-64 with FMA, torch 2.13) is 1.21 for every dtype.
ULPS = 4


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
    assert_within_ulps(ours, spec, dtype, msg, ULPS)


@pytest.mark.parametrize('cls,hyper,dtype', product(CLASSES, SGD_HYPER,
                                                    DTYPES))
def test_matches_single_tensor_kernel_every_step(kernel, cls, hyper, dtype):
    ours, spec = make_params(dtype=dtype), make_params(dtype=dtype)
    opt = cls(groups_of(ours, hyper), fused=True, **hyper)
    ref = cls(groups_of(spec, hyper), foreach=False, **hyper)
    for step in range(STEPS):
        kept = set_fused_grads(step, ours, spec)
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
     if not (kind(c).decoupled and (h.get('dampening') or h.get('nesterov')))])
def test_float64_matches_reference_from_the_maths(kernel, cls, hyper):
    params = make_params()
    opt = cls(params.values(), fused=True, **hyper)
    check_against_reference(opt, params, reference_for(cls.__name__),
                            kind(cls).conv_only, lambda k: hyper, STEPS)


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
    cen, dims, before = centralized_row_means(params, kind(cls).conv_only)
    opt = cls(params.values(), fused=True, **hyper)
    for step in range(60):
        set_grads(params, step)
        opt.step()
    assert_row_means_kept(params, cen, dims, before, dtype)


@pytest.mark.parametrize('cls', [SGDW_GC, SGDW_GCC])
def test_sgdw_only_scales_the_row_means(kernel, cls):
    """With decoupled decay the row means shrink by (1 - lr * wd) a step."""
    hyper = dict(lr=0.05, momentum=0.9, weight_decay=0.1)
    params = make_params()
    cen = [
        k for k, p in params.items()
        if p.dim() > (3 if kind(cls).conv_only else 1)
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


@pytest.mark.parametrize('cls', CLASSES)
def test_state_dict_moves_between_kernels(kernel, cls):
    hyper = dict(lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True)
    check_state_dict_moves(
        cls,
        hyper,
        stage_steps=4,
        state_keys={'momentum_buffer'},
        rtol=0,
        atol=1e-13,
        resume_at=5,
        steps=10)


def test_one_and_two_threads_give_the_same_bits(kernel):
    assert_same_bits_on_one_and_two_threads(lambda params: SGD_GC(
        params,
        fused=True,
        lr=0.05,
        momentum=0.9,
        weight_decay=1e-3,
        nesterov=True))


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
    check_odd_layouts_take_the_single_tensor_kernel(
        SGD_GC, dict(lr=0.05, momentum=0.9, weight_decay=1e-3))


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


@pytest.mark.parametrize('cls', [SGD_GC, AdamW_GC2])
def test_step_bumps_the_version_counter(kernel, cls):
    """Both kernels, as ATen's in-place ops do."""
    p = torch.nn.Parameter(torch.randn(4, 3))
    p.grad = torch.randn(4, 3)
    version = p._version
    cls([p], lr=0.1, fused=True).step()
    assert p._version > version


@pytest.mark.parametrize('cls', CLASSES)
def test_fused_and_foreach_together_are_refused(cls):
    p = torch.nn.Parameter(torch.ones(2, 2))
    assert_fused_refused_with(cls, p, 'differentiable')
    assert cls([p], lr=0.1, fused=True).param_groups[0]['fused'] is True


@pytest.mark.parametrize('how', ['env', 'no_compiler'])
def test_fallback_when_the_kernel_cannot_be_built(monkeypatch, log_lines, how):
    expected = break_the_build(monkeypatch, how)
    assert not fused_mod.fused_available()
    check_fallback(CLASSES, dict(lr=0.05, momentum=0.9, weight_decay=1e-2), 6,
                   log_lines, expected)


def test_the_memory_check_of_a_step(kernel):
    """What the compiled check calls shared memory: a written tensor
    overlapping any other; a strided one spans its whole storage."""
    share = fused_mod.module().shares_written_memory
    flat = torch.zeros(100)
    a, b, c = flat[:40], flat[40:80], flat[70:100]
    assert not share([a, b], [])  # one storage, no overlap (DDP buckets)
    assert share([a, c], [b])  # c is written, b read: they overlap
    assert share([b], [c])
    assert not share([a], [b, c])  # only reads overlap
    assert not share([a, None], [torch.empty(0)])
    assert share([b], [flat[::50]])  # strided: its whole storage
    assert share([a, flat[10:20]], [])
    assert not share([flat[:0], flat[:0]], [])  # empty: no memory


@pytest.mark.parametrize('cls', [SGD_GC, AdamW_GC2])
def test_an_inference_tensor_is_refused_as_by_the_specification(kernel, cls):
    with torch.inference_mode():
        w = torch.randn(8, 20)
    w.grad = torch.randn(8, 20)
    for fused in (False, True):
        with pytest.raises(RuntimeError, match='inference tensor'):
            cls([w], lr=0.1, fused=fused).step()


def test_a_number_in_the_state_steps_as_the_specification(kernel):
    """A momentum buffer that is no tensor (a hand-edited or foreign state)
    takes the specification, as with fused=False."""
    out = []
    for fused in (False, True):
        p = torch.nn.Parameter(torch.linspace(-1, 1, 160).view(8, 20))
        p.grad = torch.linspace(1, -2, 160).view(8, 20)
        opt = SGD_GC([p], lr=0.1, momentum=0.9, fused=fused)
        opt.step()
        opt.state[p]['momentum_buffer'] = 0.5
        with warnings.catch_warnings():  # torch: the buffer is resized
            warnings.simplefilter('ignore')
            opt.step()
        out.append(p.detach().clone())
    torch.testing.assert_close(out[0], out[1])


def test_a_device_without_fused_kernels_takes_the_specification():
    """On a device torch has no fused kernel for (``meta``), fused=True
    steps through the single-tensor kernel: state on the device, no
    error."""
    p = torch.nn.Parameter(torch.empty(4, 3, 3, 3, device='meta'))
    p.grad = torch.empty(4, 3, 3, 3, device='meta')
    opt = SGD_GC([p], lr=0.1, momentum=0.9, fused=True)
    opt.step()
    opt.step()
    assert opt.state[p]['momentum_buffer'].device.type == 'meta'


# --------------------------------------------------------------------------
# Inputs found by attacking the kernels (both families).
# --------------------------------------------------------------------------


def _aliased_run(cls, fused, sharing, threads, **hyper):
    """Two weights with memory shared as ``sharing`` says: 'views' of one
    tensor that overlap, a gradient that is the 'other' weight, or a
    gradient that overlaps its 'own' weight (shifted by a row)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        shape = (64, 1024)  # more rows than one task: they run in parallel
        base = torch.randn(96, 1024, generator=gen)
        if sharing == 'views':
            a, b = (torch.nn.Parameter(base[0:64]),
                    torch.nn.Parameter(base[32:96]))
        else:
            a, b = (torch.nn.Parameter(base[0:64].clone()),
                    torch.nn.Parameter(base[0:64]))
        opt = cls([a, b],
                  fused=fused,
                  foreach=None if fused else False,
                  **hyper)
        for _ in range(3):
            a.grad = torch.randn(shape, generator=gen)
            b.grad = dict(
                views=torch.randn(shape, generator=gen),
                other=a.detach(),
                own=base[1:65])[sharing]
            opt.step()
        return a.detach().clone(), b.detach().clone()
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize('cls,hyper',
                         [(SGD_GC, dict(lr=0.1, momentum=0.9)),
                          (Adam_GC, dict(lr=0.1)),
                          (AdamW_GC2, dict(lr=0.1, weight_decay=0.1))])
@pytest.mark.parametrize('sharing', ['views', 'other', 'own'])
def test_weights_that_share_memory_step_as_the_specification(
        kernel, cls, hyper, sharing):
    """The kernels read each row before they write it and update all
    weights at once, the specification one tensor after the other: where
    tensors of a step share memory, the step is the specification's, bit
    for bit, with any number of threads."""
    spec = _aliased_run(cls, False, sharing, 1, **hyper)
    for threads in (1, 2):
        for ours, theirs in zip(
                _aliased_run(cls, True, sharing, threads, **hyper), spec):
            assert torch.equal(ours, theirs), threads


@pytest.mark.parametrize('cls,hyper',
                         [(SGD_GC, dict(lr=0.1, weight_decay=1e6)),
                          (Adam_GC, dict(lr=0.1, weight_decay=1e6)),
                          (AdamW_GC2, dict(lr=1e3, weight_decay=1e3))])
def test_a_float16_overflowing_hyper_parameter_is_refused_as_by_torch(
        kernel, cls, hyper):
    """ATen refuses a scalar that float16 cannot hold; the kernels would
    round it to inf. The fused step raises torch's error and leaves the
    weight as it was, as the specification does."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(2, 8, generator=gen).half()
    for fused in (False, True):
        p = torch.nn.Parameter(w.clone())
        p.grad = torch.randn(2, 8, generator=gen).half()
        with pytest.raises(RuntimeError, match='Half without overflow'):
            cls([p], fused=fused, foreach=None if fused else False,
                **hyper).step()
        assert torch.equal(p.detach(), w)


@pytest.mark.parametrize(
    'cls,hyper', product(CLASSES, [SGD_HYPER[2], SGD_HYPER[3], SGD_HYPER[6]]))
@pytest.mark.parametrize('where,how', NOT_VALUES)
def test_memory_that_is_not_values_steps_as_the_specification(
        kernel, cls, hyper, where, how):
    """A tensor with the negative bit (``torch._neg_view``: torch.load and
    load_state_dict keep it), a complex one with the conjugate bit, a
    strided or an expanded one: its memory is not its values, which the
    kernels (ours and torch's fused SGD) would read; the step is the
    specification's on plain tensors of the same values."""
    check_memory_that_is_not_values(cls, hyper, where, how, STEPS, ULPS)


@pytest.mark.parametrize('op,position',
                         [(op, i)
                          for op, n in (('sgd_gc_', 3), ('adam_gc_', 6))
                          for i in range(n)])
def test_the_compiled_kernels_refuse_a_negative_bit(kernel, op, position):
    """Called directly, the extension refuses a tensor with the negative
    bit (its argument number ``position``) before it writes anything."""
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(4, 8, generator=gen) for _ in range(5)]
    tensors[2:5] = [t.abs() for t in tensors[2:5]]  # buffer, moments
    args = [[t] for t in tensors] + [[torch.tensor(1.)]]
    args[position] = [viewed(args[position][0], 'neg')]
    before = [t.clone() for (t, ) in args]
    if op == 'sgd_gc_':
        args, hyper = args[:3], (0., 0.9, 0.1, 0., False, False, 1.)
    else:
        hyper = (False, False, True, 0.9, 0.999, 0.1, 0., 1e-8, False)
    with pytest.raises(RuntimeError, match='negative'):
        getattr(fused_mod.module(), op)(*args, *hyper)
    for (t, ), b in zip(args, before):
        assert torch.equal(t, b)
