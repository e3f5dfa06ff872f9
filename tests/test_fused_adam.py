"""The fused CPU kernel of the Adam GC optimizers (``fused=True``).

Yong et al., "Gradient Centralization: A New Optimization Technique for Deep
Neural Networks", ECCV 2020 (arXiv:2004.01461).

The compiled kernel (:mod:`mmdet_gc.optim.fused`) is checked against the
single-tensor kernels, which are the specification, after every step, for
every class, option and dtype; against float64 references written from the
maths; for the paper's property that row means of weights whose update is
centralized never change; for state dicts moving between kernels; for
results that do not depend on the thread count; for groups with GC off,
which equal torch's fused Adam / AdamW; for tensors whose memory is not
their values (negative or conjugate bit, strided, expanded), which take the
specification; and for the fallback when it cannot be built (that test
always runs).
"""
import pytest
import torch

import mmdet_gc.optim.fused as fused_mod
from mmdet_gc import (Adam_GC, Adam_GC2, Adam_GCC, Adam_GCC2, AdamW_GC,
                      AdamW_GC2, AdamW_GCC, AdamW_GCC2)
from mmdet_gc.optim.adam import adam_gc

from helpers import (DT, NOT_VALUES, assert_fused_refused_with,
                     assert_row_means_kept, assert_same_as,
                     assert_same_bits_on_one_and_two_threads,
                     assert_within_ulps, break_the_build,
                     centralized_row_means, check_against_reference,
                     check_fallback, check_memory_that_is_not_values,
                     check_odd_layouts_take_the_single_tensor_kernel,
                     check_state_dict_moves, grad_for, kind, make_params,
                     product, reference_for, set_fused_grads, set_grads)

CLASSES = [
    Adam_GC, Adam_GCC, Adam_GC2, Adam_GCC2, AdamW_GC, AdamW_GCC, AdamW_GC2,
    AdamW_GCC2
]
ON_UPDATE = [c for c in CLASSES if kind(c).on_update]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
STEPS = 10

#: Hyper-parameters that reach every branch of the kernel: L2 / decoupled
#: decay on and off, amsgrad, maximize, and a beta1 < 0.5 (ATen's lerp
#: then starts from the other end).
ADAM_HYPER = [
    dict(lr=0.01, weight_decay=0.),
    dict(lr=0.01, weight_decay=0.05, amsgrad=True),
    dict(lr=0.02, weight_decay=1e-2, maximize=True),
    dict(
        lr=0.01,
        betas=(0.3, 0.99),
        weight_decay=1e-2,
        amsgrad=True,
        maximize=True),
]

# The fused kernel rounds every value as the specification does, except
# the last bits of each row mean (summed in double there, in the
# accumulation dtype by torch), and tensors with GC off take torch's fused
# kernel, which keeps its intermediates in float. Allowed difference after
# each step, in units of eps(dtype) times the tensor's largest magnitude.
ULPS = {
    torch.float64: 4,
    torch.float32: 4,
    torch.bfloat16: 4,
    torch.float16: 4,
}

OFF = ('conv1d', 'gamma')
HALF = (torch.float16, torch.bfloat16)


def groups_of(params):
    """Two groups: GC on, and GC off (``OFF``) with its own lr."""
    return [
        dict(params=[p for k, p in params.items() if k not in OFF]),
        dict(params=[params[k] for k in OFF], gc=False, lr=0.005),
    ]


def hyper_for(hyper, dtype):
    """float16 cannot hold eps=1e-8: torch's own single-tensor Adam then
    divides by zero wherever the second moment underflows."""
    if dtype == torch.float16:
        return dict(hyper, eps=1e-4)
    return hyper


def assert_near(ours, spec, dtype, msg):
    assert_within_ulps(ours, spec, dtype, msg, ULPS[dtype])


@pytest.mark.parametrize('cls,hyper,dtype', product(CLASSES, ADAM_HYPER,
                                                    DTYPES))
def test_matches_single_tensor_kernel_every_step(kernel, cls, hyper, dtype):
    hyper = hyper_for(hyper, dtype)
    ours, spec = make_params(dtype=dtype), make_params(dtype=dtype)
    opt = cls(groups_of(ours), fused=True, **hyper)
    ref = cls(groups_of(spec), foreach=False, **hyper)
    for step in range(STEPS):
        kept = set_fused_grads(step, ours, spec)
        opt.step()
        ref.step()
        for k in ours:
            assert ours[k].dtype == dtype
            if dtype in HALF and not (k not in OFF and ours[k].dim() >
                                      (3 if kind(cls).conv_only else 1)):
                # Not centralized: torch's fused kernel (ours) and its
                # single-tensor one (the spec's) differ in float16 /
                # bfloat16, the first keeping its intermediates in float.
                continue
            assert_near(ours[k], spec[k], dtype, f'{k} step {step}')
            s_ours, s_spec = opt.state[ours[k]], ref.state[spec[k]]
            assert s_ours.keys() == s_spec.keys(), (k, step)
            for key in s_spec:
                if key == 'step':
                    assert torch.equal(s_ours[key], s_spec[key]), (k, step)
                    continue
                assert s_ours[key].dtype == dtype
                assert_near(s_ours[key], s_spec[key], dtype,
                            f'{k}.{key} step {step}')
            if k in kept:  # p.grad is read, never written
                assert torch.equal(ours[k].grad, kept[k]), (k, step)
    assert len(opt.state) == len(ref.state)


@pytest.mark.parametrize('cls,hyper', product(CLASSES, ADAM_HYPER))
def test_float64_matches_reference_from_the_maths(kernel, cls, hyper):
    params = make_params()
    opt = cls(params.values(), fused=True, **hyper)
    check_against_reference(opt, params, reference_for(cls.__name__),
                            kind(cls).conv_only, lambda k: hyper, STEPS)


@pytest.mark.parametrize('cls,dtype',
                         product(ON_UPDATE, [torch.float64, torch.float32]))
def test_row_means_never_change_with_gc_on_the_update(kernel, cls, dtype):
    params = make_params(dtype=dtype)
    cen, dims, before = centralized_row_means(params, kind(cls).conv_only)
    opt = cls(params.values(), fused=True, lr=0.05, weight_decay=0.1)
    for step in range(40):
        set_grads(params, step)
        opt.step()
    assert_row_means_kept(params, cen, dims, before, dtype)


@pytest.mark.parametrize('cls', CLASSES)
def test_state_dict_moves_between_kernels(kernel, cls):
    hyper = dict(lr=0.01, weight_decay=0.05, amsgrad=True)
    check_state_dict_moves(
        cls,
        hyper,
        stage_steps=3,
        state_keys={'step', 'exp_avg', 'exp_avg_sq', 'max_exp_avg_sq'},
        rtol=1e-12,
        atol=1e-14,
        resume_at=4,
        steps=8)


@pytest.mark.parametrize('cls', [Adam_GC, AdamW_GC2])
def test_one_and_two_threads_give_the_same_bits(kernel, cls):
    assert_same_bits_on_one_and_two_threads(lambda params: cls(
        params,
        fused=True,
        lr=0.01,
        eps=1e-4,  # float16 holds it
        weight_decay=0.05,
        amsgrad=True))


@pytest.mark.parametrize('cls,hyper,dtype',
                         product([Adam_GC2, AdamW_GCC2], ADAM_HYPER, DTYPES))
def test_plain_tensors_take_torchs_fused_adam(kernel, cls, hyper, dtype):
    """A group with GC off equals torch.optim.Adam / AdamW(fused=True) bit
    for bit."""
    a, b = make_params(dtype=dtype), make_params(dtype=dtype)
    opt = cls([dict(params=list(a.values()), gc=False)], fused=True, **hyper)
    torch_cls = torch.optim.AdamW if kind(cls).decoupled else torch.optim.Adam
    ref = torch_cls(b.values(), fused=True, **hyper)
    assert_same_as(opt, a, ref, b, 6)


@pytest.mark.parametrize('cls', [Adam_GC, AdamW_GC2])
def test_odd_layouts_take_the_single_tensor_kernel(kernel, cls):
    """channels_last, strided and empty weights are left to the spec."""
    check_odd_layouts_take_the_single_tensor_kernel(
        cls, dict(lr=0.01, weight_decay=1e-2, amsgrad=True))


def test_functional_adam_gc_fused(kernel):
    params = make_params()
    spec = {k: p.detach().clone() for k, p in params.items()}
    names = list(params)
    cen = [params[k].dim() > 1 for k in names]

    def state():
        return ([torch.zeros_like(params[k])
                 for k in names], [torch.zeros_like(params[k]) for k in names],
                [torch.tensor(0.) for _ in names])

    ours_state, spec_state = state(), state()
    hyper = dict(
        gc_on_update=True,
        decoupled=True,
        amsgrad=False,
        beta1=0.9,
        beta2=0.999,
        lr=0.01,
        weight_decay=0.05,
        eps=1e-8,
        maximize=False)
    with torch.no_grad():
        for step in range(3):
            grads = [grad_for(k, 0, params[k].shape) for k in names]
            m, v, s = ours_state
            adam_gc([params[k] for k in names],
                    grads,
                    m,
                    v, [],
                    s,
                    cen,
                    fused=True,
                    **hyper)
            m, v, s = spec_state
            adam_gc([spec[k] for k in names],
                    grads,
                    m,
                    v, [],
                    s,
                    cen,
                    foreach=False,
                    **hyper)
    for i, k in enumerate(names):
        assert_near(params[k], spec[k], DT, k)
        for a, b in zip(ours_state, spec_state):
            assert_near(a[i], b[i], DT, k)
    with pytest.raises(ValueError, match='cannot be `True` together'):
        adam_gc([params['conv']], [params['conv'].detach()], [], [], [], [],
                [True],
                foreach=True,
                fused=True,
                **hyper)


@pytest.mark.parametrize('cls', CLASSES)
def test_fused_and_foreach_together_are_refused(cls):
    p = torch.nn.Parameter(torch.ones(2, 2))
    assert_fused_refused_with(cls, p, 'capturable')
    opt = cls([p], lr=0.1, fused=True)
    assert opt.param_groups[0]['fused'] is True
    assert cls([p], lr=0.1).param_groups[0]['fused'] is None


@pytest.mark.parametrize('how', ['env', 'no_compiler'])
def test_fallback_when_the_kernel_cannot_be_built(monkeypatch, log_lines, how):
    expected = break_the_build(monkeypatch, how)
    assert not fused_mod.fused_available()
    check_fallback(CLASSES, dict(lr=0.01, weight_decay=1e-2, amsgrad=True), 4,
                   log_lines, expected)


@pytest.mark.parametrize('cls,hyper',
                         product(CLASSES, [ADAM_HYPER[1], ADAM_HYPER[3]]))
@pytest.mark.parametrize('where,how',
                         [wh for wh in NOT_VALUES if wh[1] != 'conj'])
def test_memory_that_is_not_values_steps_as_the_specification(
        kernel, cls, hyper, where, how):
    """A tensor with the negative bit (``torch._neg_view``: torch.load and
    load_state_dict keep it; ``step`` included), a strided or an expanded
    one: its memory is not its values, which the kernels (ours and torch's
    fused Adam) would read; the step is the specification's on plain
    tensors of the same values."""
    check_memory_that_is_not_values(cls, hyper, where, how, STEPS, ULPS[DT])


@pytest.mark.parametrize('cls,hyper',
                         product(CLASSES, [ADAM_HYPER[1], ADAM_HYPER[3]]))
@pytest.mark.parametrize('where', ['param', 'grad', 'state'])
def test_conjugate_views_step_as_the_specification(kernel, cls, hyper, where):
    """Complex tensors with the conjugate bit take the specification: it
    steps them as plain tensors of the same values, or refuses them where
    torch's Adam does (its ``view_as_real`` refuses the bit), and so does
    ``fused=True``."""
    outcomes = []
    for mode in (dict(fused=True), dict(foreach=False)):
        try:
            check_memory_that_is_not_values(cls, hyper, where, 'conj', STEPS,
                                            ULPS[DT], mode)
            outcomes.append('steps as plain tensors')
        except RuntimeError as exc:
            assert 'conjugate' in str(exc)
            outcomes.append(str(exc))
    assert outcomes[0] == outcomes[1]
