"""Shared fixtures of the optimizer tests: deterministic float64 parameters
of the shapes GC distinguishes, and gradients for them (one parameter has
none on some steps)."""
import copy
import itertools
import math
import os
from typing import NamedTuple

import pytest
import torch


class Kind(NamedTuple):
    """What an optimizer of the family is, written out in the tests."""
    algorithm: str  # torch's counterpart (SGDW: SGD with decoupled decay)
    decoupled: bool  # weight decay: decoupled (p -= lr*wd*p) or L2 (g+wd*p)
    conv_only: bool  # GC rule: conv weights only (_GCC) or conv + fc (_GC)
    on_update: bool  # GC target: the update ("2") or the gradient


#: The 14 names, each mapped to its torch counterpart, decay rule, GC rule
#: and GC target: what every numerics test expects, never read from the
#: classes (``tests/test_family_table.py`` checks each row by behaviour).
FAMILY = {
    'SGD_GC': Kind('SGD', False, False, False),
    'SGD_GCC': Kind('SGD', False, True, False),
    'SGDW_GC': Kind('SGDW', True, False, False),
    'SGDW_GCC': Kind('SGDW', True, True, False),
    'Adam_GC': Kind('Adam', False, False, False),
    'Adam_GCC': Kind('Adam', False, True, False),
    'Adam_GC2': Kind('Adam', False, False, True),
    'Adam_GCC2': Kind('Adam', False, True, True),
    'AdamW_GC': Kind('AdamW', True, False, False),
    'AdamW_GCC': Kind('AdamW', True, True, False),
    'AdamW_GC2': Kind('AdamW', True, False, True),
    'AdamW_GCC2': Kind('AdamW', True, True, True),
    'Adagrad_GC': Kind('Adagrad', False, False, False),
    'Adagrad_GCC': Kind('Adagrad', False, True, False),
}


def kind(cls_or_name) -> Kind:
    """The :data:`FAMILY` row of an optimizer class or name."""
    return FAMILY[getattr(cls_or_name, '__name__', cls_or_name)]


DT = torch.float64

#: Where the numerics tests run: the CPU, and the CUDA device where one is
#: present (``tools/gpu_check.sh`` runs those, ``pytest -m cuda``). Without
#: one the CUDA cases are not collected at all, but for
#: ``MMDET_GC_COLLECT_CUDA=1`` (``gpu_check.sh --cpu-smoke`` lists them).
CUDA_CASES = torch.cuda.is_available() or \
    os.environ.get('MMDET_GC_COLLECT_CUDA') == '1'
DEVICES = ['cpu'] + ([
    pytest.param(
        'cuda',
        marks=[
            pytest.mark.cuda,
            pytest.mark.skipif(
                not torch.cuda.is_available(), reason='no CUDA device')
        ])
] if CUDA_CASES else [])

# name -> shape: conv2d, linear, conv1d, bias, norm scale, depthwise conv
SHAPES = {
    'conv': (6, 3, 3, 3),
    'fc': (5, 7),
    'conv1d': (4, 3, 5),
    'bias': (5, ),
    'gamma': (6, ),
    'conv_dw': (6, 1, 3, 3),
}

#: SGD hyper-parameters that reach every branch of the SGD GC kernels.
SGD_HYPER = [
    dict(lr=0.1),
    dict(lr=0.05, weight_decay=1e-2),
    dict(lr=0.05, momentum=0.9, weight_decay=1e-3),
    dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=1e-3),
    dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-3),
    dict(lr=0.05, momentum=0.9, maximize=True, weight_decay=1e-3),
    dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True),
]


def product(*lists):
    return list(itertools.product(*lists))


def make_params(seed=0, dtype=DT, device='cpu'):
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(s, generator=g,
                       dtype=dtype).to(device).requires_grad_()
        for k, s in SHAPES.items()
    }


def grad_for(name, step, shape, dtype=DT):
    """Deterministic gradients; 'fc' has none on every third step."""
    if name == 'fc' and step % 3 == 1:
        return None
    seed = 1000 * step + sum(map(ord, name))
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype)


def set_grads(params, step):
    for k, p in params.items():
        g = grad_for(k, step, p.shape, p.dtype)
        p.grad = None if g is None else g.to(p.device)


def gc(t, on=True):
    """The GC operator written from its definition."""
    if not on:
        return t
    return t - t.mean(dim=tuple(range(1, t.dim())), keepdim=True)


def _state_tensors(state):
    return {k: v for k, v in state.items() if torch.is_tensor(v)}


def check_against_reference(opt, params, reference, conv_only, hyper_of,
                            steps):
    """Step ``opt`` and a float64 reference side by side, comparing the
    parameters and every state tensor after each step.

    ``reference(p, g, state, centralized, **hyper_of(name))`` returns the
    new parameter and updates the dict ``state`` (torch's state keys).
    """
    ref_p = {k: p.detach().cpu().clone() for k, p in params.items()}
    ref_st = {k: {} for k in params}
    for step in range(steps):
        set_grads(params, step)
        opt.step()
        for k, p in params.items():
            g = grad_for(k, step, p.shape)
            if g is not None:
                cen = p.dim() > (3 if conv_only else 1)
                ref_p[k] = reference(ref_p[k], g, ref_st[k], cen,
                                     **hyper_of(k))
        for k, p in params.items():
            torch.testing.assert_close(
                p.detach().cpu(), ref_p[k], rtol=1e-9, atol=1e-12, msg=k)
            ours, theirs = (
                _state_tensors(s) for s in (opt.state[p], ref_st[k]))
            assert ours.keys() == theirs.keys(), (k, step)
            for key in theirs:
                torch.testing.assert_close(
                    ours[key].to('cpu', DT),
                    theirs[key].to(DT),
                    rtol=1e-9,
                    atol=1e-12,
                    msg=f'{k}.{key}')


def trajectory(make_opt, steps, dtype=DT):
    """Parameters and optimizer state after each step of ``make_opt``."""
    params = make_params(dtype=dtype)
    opt = make_opt(params.values())
    out = []
    for step in range(steps):
        set_grads(params, step)
        opt.step()
        out.append(({
            k: p.detach().clone()
            for k, p in params.items()
        }, [copy.deepcopy(opt.state[p]) for p in params.values()]))
    return out


def assert_kernels_agree(make_opt, steps, dtype=DT, rtol=1e-13, atol=1e-15):
    """The single-tensor and foreach kernels give the same trajectory (to
    rounding: the foreach kernels may order the arithmetic differently)."""
    single = trajectory(lambda ps: make_opt(ps, foreach=False), steps, dtype)
    multi = trajectory(lambda ps: make_opt(ps, foreach=True), steps, dtype)
    for (p1, s1), (p2, s2) in zip(single, multi):
        for k in p1:
            torch.testing.assert_close(p1[k], p2[k], rtol=rtol, atol=atol)
        for a, b in zip(s1, s2):
            assert a.keys() == b.keys()
            for key in a:
                torch.testing.assert_close(
                    a[key], b[key], rtol=rtol, atol=atol)


def assert_same_as(ours, a, theirs, b, steps, keys=None):
    """Step two optimizers over equal parameter sets in lockstep; the
    parameters in ``keys`` (all by default) and their state stay equal bit
    for bit."""
    keys = list(keys or a)
    for step in range(steps):
        set_grads(a, step)
        set_grads(b, step)
        ours.step()
        theirs.step()
        for k in keys:
            assert torch.equal(a[k], b[k]), (k, step)
            sa, sb = ours.state[a[k]], theirs.state[b[k]]
            assert sa.keys() == sb.keys(), k
            for key in sa:
                assert torch.equal(sa[key], sb[key]), (k, key, step)


# --------------------------------------------------------------------------
# References written from the maths (float64), one step of one tensor;
# ``st`` is the optimizer state, with torch's keys.
# --------------------------------------------------------------------------


def reference_step(p,
                   g,
                   st,
                   centralized,
                   *,
                   lr,
                   momentum=0.,
                   dampening=0.,
                   weight_decay=0.,
                   nesterov=False,
                   maximize=False):
    """The paper's SGD step, written from the maths with plain ops."""
    d = gc((-g if maximize else g) + weight_decay * p, centralized)
    if momentum != 0:
        buf = st.get('momentum_buffer')
        buf = d.clone() if buf is None else \
            momentum * buf + (1 - dampening) * d
        st['momentum_buffer'] = buf
        d = d + momentum * buf if nesterov else buf
    return p - lr * d


def ref_sgdw(p,
             g,
             st,
             cen,
             lr,
             momentum=0.,
             weight_decay=0.,
             maximize=False,
             **_):
    d = gc(-g if maximize else g, cen)
    if momentum:
        buf = st.get('momentum_buffer')
        st['momentum_buffer'] = d.clone() if buf is None else \
            momentum * buf + d
        d = st['momentum_buffer']
    return p - lr * d - lr * weight_decay * p


def _adam_moments(g, st, betas, amsgrad):
    if not st:
        st.update(
            step=torch.tensor(0.),
            exp_avg=torch.zeros_like(g),
            exp_avg_sq=torch.zeros_like(g))
        if amsgrad:
            st['max_exp_avg_sq'] = torch.zeros_like(g)
    st['step'] = st['step'] + 1
    t = st['step'].item()
    b1, b2 = betas
    st['exp_avg'] = b1 * st['exp_avg'] + (1 - b1) * g
    st['exp_avg_sq'] = b2 * st['exp_avg_sq'] + (1 - b2) * g * g
    v = st['exp_avg_sq']
    if amsgrad:
        st['max_exp_avg_sq'] = torch.maximum(st['max_exp_avg_sq'], v)
        v = st['max_exp_avg_sq']
    return t, v


def ref_adam(p, g, st, cen, lr, betas, eps, weight_decay, amsgrad, maximize,
             decoupled, on_update):
    g = -g if maximize else g
    if not decoupled:
        g = g + weight_decay * p
    if not on_update:
        g = gc(g, cen)
    t, v = _adam_moments(g, st, betas, amsgrad)
    bc1, bc2 = 1 - betas[0]**t, 1 - betas[1]**t
    delta = lr / bc1 * st['exp_avg'] / (v.sqrt() / math.sqrt(bc2) + eps)
    if decoupled:
        delta = delta + lr * weight_decay * p
    return p - gc(delta, cen and on_update)


def ref_adagrad(p,
                g,
                st,
                cen,
                lr,
                lr_decay,
                weight_decay,
                eps,
                maximize=False,
                initial_accumulator_value=0.):
    if not st:
        st.update(
            step=torch.tensor(0.),
            sum=torch.full_like(p, initial_accumulator_value))
    st['step'] = st['step'] + 1
    d = gc((-g if maximize else g) + weight_decay * p, cen)
    clr = lr / (1 + (st['step'].item() - 1) * lr_decay)
    st['sum'] = st['sum'] + d * d
    return p - clr * d / (st['sum'].sqrt() + eps)


def reference_for(name):
    """The float64 reference of the GC optimizer ``name``."""
    row = FAMILY[name]
    if row.algorithm == 'SGD':
        return reference_step
    if row.algorithm == 'SGDW':
        return ref_sgdw
    if row.algorithm == 'Adagrad':
        return ref_adagrad

    def ref(p, g, st, cen, **h):
        h.setdefault('betas', (0.9, 0.999))
        h.setdefault('eps', 1e-8)
        h.setdefault('amsgrad', False)
        h.setdefault('maximize', False)
        h.setdefault('weight_decay', 1e-2 if row.decoupled else 0.)
        return ref_adam(
            p,
            g,
            st,
            cen,
            decoupled=row.decoupled,
            on_update=row.on_update,
            **h)

    return ref


# --------------------------------------------------------------------------
# The fused kernels (test_fused.py, test_fused_adam.py); their fixtures
# ``kernel`` and ``log_lines`` are in conftest.py.
# --------------------------------------------------------------------------


def fused_grads_at(step, params):
    """The gradients of ``grad_for`` ('fc' has none on every third step),
    and a first one that appears late: 'conv_dw' has none on the first two
    steps (step counts and first buffers differ between tensors)."""
    out = {}
    for k, p in params.items():
        g = grad_for(k, step, p.shape, p.dtype)
        out[k] = None if k == 'conv_dw' and step < 2 else g
    return out


def set_fused_grads(step, ours, spec):
    """:func:`fused_grads_at` into both parameter sets (``spec`` gets
    copies); returns copies of ``ours``' gradients, to check that a step
    leaves them untouched."""
    grads = fused_grads_at(step, ours)
    for k in ours:
        ours[k].grad = grads[k]
        spec[k].grad = None if grads[k] is None else grads[k].clone()
    return {k: g.clone() for k, g in grads.items() if g is not None}


def assert_within_ulps(ours, spec, dtype, msg, ulps):
    """``ours`` is within ``ulps`` units of eps(dtype) times the largest
    magnitude of ``spec``."""
    eps = torch.finfo(dtype).eps
    scale = spec.detach().abs().max().double().item() or 1.
    torch.testing.assert_close(
        ours.detach().double(),
        spec.detach().double(),
        rtol=0,
        atol=ulps * eps * scale,
        msg=msg)


def centralized_row_means(params, conv_only):
    """The names of the weights GC centralizes, the dims of their rows and
    their row means (float64)."""
    cen = {k for k, p in params.items() if p.dim() > (3 if conv_only else 1)}
    dims = {k: tuple(range(1, params[k].dim())) for k in cen}
    before = {k: params[k].detach().double().mean(dims[k]) for k in cen}
    return cen, dims, before


def assert_row_means_kept(params, cen, dims, before, dtype):
    """The weights moved, their row means (``centralized_row_means``) did
    not."""
    atol = 1e-12 if dtype == torch.float64 else 1e-5
    for k in cen:
        p = params[k].detach().double()
        assert (p - p.mean(dims[k], keepdim=True)).abs().max() > 0.1, k
        torch.testing.assert_close(
            p.mean(dims[k]), before[k], rtol=0, atol=atol, msg=k)


def rebuilt(cls, params, state_dict, hyper, **mode):
    """A new optimizer of another kernel, from a saved state. torch.optim
    restores ``foreach`` / ``fused`` from the state dict: set them back."""
    opt = cls(params, **hyper, **mode)
    opt.load_state_dict(copy.deepcopy(state_dict))
    for group in opt.param_groups:
        group.update(fused=mode.get('fused'), foreach=mode.get('foreach'))
    return opt


def check_state_dict_moves(cls, hyper, stage_steps, state_keys, rtol, atol,
                           resume_at, steps):
    """The state dict of ``cls`` moves fused -> foreach -> single-tensor ->
    fused (``stage_steps`` steps each) without leaving the single-tensor
    trajectory, and resuming the fused kernel from its own state (saved
    after ``resume_at`` of ``steps`` steps) changes no bit."""
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
            opt = rebuilt(cls, list(moved.values()), opt.state_dict(), hyper,
                          **mode)
        for step in range(stage_steps * stage, stage_steps * (stage + 1)):
            set_grads(spec, step)
            set_grads(moved, step)
            ref.step()
            opt.step()
        for k in spec:
            torch.testing.assert_close(
                moved[k], spec[k], rtol=rtol, atol=atol, msg=(k, mode))
            s_opt, s_ref = opt.state[moved[k]], ref.state[spec[k]]
            assert s_opt.keys() == s_ref.keys() == set(state_keys)
            for key in s_ref:
                torch.testing.assert_close(
                    s_opt[key],
                    s_ref[key],
                    rtol=rtol,
                    atol=atol,
                    msg=(k, key, mode))
    straight, resumed = make_params(), make_params()
    a = cls(straight.values(), fused=True, **hyper)
    b = cls(resumed.values(), fused=True, **hyper)
    for step in range(steps):
        if step == resume_at:
            b = rebuilt(
                cls, list(resumed.values()), b.state_dict(), hyper, fused=True)
        set_grads(straight, step)
        set_grads(resumed, step)
        a.step()
        b.step()
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k


def _run_threads(make_opt, threads):
    g = torch.Generator().manual_seed(5)
    shapes = [((64, 64, 3, 3), torch.float32), ((300, 700), torch.float32),
              ((96, 32, 3, 3), torch.float64),
              ((64, 48, 3, 3), torch.bfloat16), ((7, 5), torch.float16),
              ((1, 70000), torch.float32), ((64, ), torch.float32)]
    params = [
        torch.randn(s, generator=g).to(dt).requires_grad_() for s, dt in shapes
    ]
    opt = make_opt(params)
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
            ] + [t.clone() for p in params for t in opt.state[p].values()]


def assert_same_bits_on_one_and_two_threads(make_opt):
    """Three fused steps of ``make_opt(params)`` over tensors of every
    dtype, large and small, give the same parameters and state on one
    thread and on two; the thread count is restored."""
    previous = torch.get_num_threads()
    one, two = _run_threads(make_opt, 1), _run_threads(make_opt, 2)
    assert torch.get_num_threads() == previous
    assert len(one) == len(two)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


def check_odd_layouts_take_the_single_tensor_kernel(cls, hyper):
    """channels_last, strided and empty weights are left to the spec: the
    fused optimizer equals the single-tensor one bit for bit."""

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
    opt = cls(ours, fused=True, **hyper)
    ref = cls(spec, foreach=False, **hyper)
    g = torch.Generator().manual_seed(2)
    for step in range(4):
        for p, q in zip(ours, spec):
            p.grad = torch.randn(p.shape, generator=g, dtype=DT)
            q.grad = p.grad.clone()
        opt.step()
        ref.step()
        for p, q in zip(ours, spec):
            assert torch.equal(p, q)
            assert opt.state[p].keys() == ref.state[q].keys()
            for key, value in ref.state[q].items():
                assert torch.equal(opt.state[p][key], value), key


def assert_fused_refused_with(cls, p, option):
    """``fused=True`` is refused with ``foreach=True`` (for the optimizer
    or a group) and with ``option=True``."""
    import pytest
    with pytest.raises(ValueError, match='`fused` and `foreach`'):
        cls([p], lr=0.1, fused=True, foreach=True)
    with pytest.raises(ValueError, match='`fused` and `foreach`'):
        cls([dict(params=[p], foreach=True)], lr=0.1, fused=True)
    with pytest.raises(ValueError, match=f'{option}=True'):
        cls([p], lr=0.1, fused=True, **{option: True})


def break_the_build(monkeypatch, how):
    """Make the fused kernel unavailable: ``how`` is 'env' (the opt-out
    variable) or 'no_compiler' (the build fails). Returns what the logged
    line must name."""
    import torch.utils.cpp_extension

    import mmdet_gc.optim.fused as fused_mod
    if how == 'env':
        monkeypatch.setenv(fused_mod.NO_BUILD_ENV, '1')
        return fused_mod.NO_BUILD_ENV
    monkeypatch.delenv(fused_mod.NO_BUILD_ENV, raising=False)

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Error building extension 'x': [1/2] c++ -c x.cpp\n"
                           '/bin/sh: 1: c++: not found\nninja: build stopped')

    monkeypatch.setattr(torch.utils.cpp_extension, 'load', no_compiler)
    monkeypatch.setattr(fused_mod, '_state',
                        dict(tried=False, module=None, reason=None))
    return 'c++: not found'


def check_fallback(classes, hyper, steps, messages, expected):
    """With the kernel unavailable, ``fused=True`` equals the single-tensor
    kernel bit for bit, and one line is logged that names ``expected``."""
    for cls in classes:
        a, b = make_params(), make_params()
        ours = cls(a.values(), fused=True, **hyper)
        spec = cls(b.values(), foreach=False, **hyper)
        assert_same_as(ours, a, spec, b, steps)
    ours = [m for m in messages if 'mmdet_gc' in m]
    assert len(ours) == 1, messages
    assert '\n' not in ours[0]
    assert expected in ours[0] and 'single-tensor' in ours[0]


# --------------------------------------------------------------------------
# Tensors whose memory is not their values (test_fused.py,
# test_fused_adam.py).
# --------------------------------------------------------------------------


def viewed(t, how):
    """A tensor with the values of ``t`` and other numbers in memory:
    'neg' (the negative bit of ``torch._neg_view``, over ``-t``), 'conj'
    (the conjugate bit of a complex view, over ``conj(t)``) or 'strided'
    (every other element of a buffer twice as large)."""
    if how == 'neg':
        return torch._neg_view(t.neg())
    if how == 'conj':
        return t.conj_physical().conj()
    return torch.empty(*t.shape, 2, dtype=t.dtype)[..., 0].copy_(t)


def _as_real(t):
    """Complex tensors as their real and imaginary parts, math bits
    resolved, for :func:`assert_within_ulps`."""
    t = t.detach()
    return torch.view_as_real(t.resolve_conj()) if t.is_complex() else t


#: Tensors whose memory is not their values, as
#: :func:`check_memory_that_is_not_values` makes them: (where, how).
NOT_VALUES = [(where, how) for where in ('param', 'grad', 'state')
              for how in ('neg', 'conj', 'strided')] + [('grad', 'expanded')]


def check_memory_that_is_not_values(cls,
                                    hyper,
                                    where,
                                    how,
                                    steps,
                                    ulps,
                                    mode=None):
    """``cls(..., **mode)`` (default: ``fused=True``) steps tensors whose
    memory is not their values as ``cls(..., foreach=False)`` steps plain
    tensors of the same values.

    ``where`` says which: every 'param', every 'grad' or every 'state'
    tensor (``step`` included; each step finds a new :func:`viewed` copy
    of the state, which it updates in place); ``how`` how: as
    :func:`viewed` makes it, or (gradients only) 'expanded' from its first
    row (zero strides; the same tensor for both). Parameters and state
    agree after every step within ``ulps`` (:func:`assert_within_ulps`).
    """
    dtype = torch.complex128 if how == 'conj' else DT
    ours, spec = make_params(dtype=dtype), make_params(dtype=dtype)
    if where == 'param':
        ours = {
            k: viewed(p.detach(), how).requires_grad_()
            for k, p in ours.items()
        }
        assert all(p.is_leaf for p in ours.values())
    opt = cls(ours.values(), **(mode or dict(fused=True)), **hyper)
    ref = cls(spec.values(), foreach=False, **hyper)
    for step in range(steps):
        for k, g in fused_grads_at(step, spec).items():
            if g is not None and how == 'expanded':
                # Both get it: ATen rounds a broadcast operand its own way.
                g = g[:1].expand_as(g)
            spec[k].grad = g if g is None or how == 'expanded' else g.clone()
            view = where == 'grad' and g is not None and how != 'expanded'
            ours[k].grad = viewed(g, how) if view else g
        if where == 'state':
            for k, p in ours.items():
                state = opt.state[p]
                for key, t in state.items():
                    state[key] = viewed(t, how)
        opt.step()
        ref.step()
        for k in ours:
            assert_within_ulps(
                _as_real(ours[k]), _as_real(spec[k]), DT, f'{k} step {step}',
                ulps)
            s_ours, s_spec = opt.state[ours[k]], ref.state[spec[k]]
            assert s_ours.keys() == s_spec.keys(), (k, step)
            for key in s_spec:
                assert_within_ulps(
                    _as_real(s_ours[key]), _as_real(s_spec[key]), DT,
                    f'{k}.{key} step {step}', ulps)
