"""Shared fixtures of the optimizer tests: deterministic float64 parameters
of the shapes GC distinguishes, and gradients for them (one parameter has
none on some steps)."""
import copy
import itertools
import math

import torch

DT = torch.float64

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


def make_params(seed=0, dtype=DT):
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(s, generator=g, dtype=dtype).requires_grad_()
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
        p.grad = grad_for(k, step, p.shape, p.dtype)


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
    ref_p = {k: p.detach().clone() for k, p in params.items()}
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
                p.detach(), ref_p[k], rtol=1e-9, atol=1e-12, msg=k)
            ours, theirs = (
                _state_tensors(s) for s in (opt.state[p], ref_st[k]))
            assert ours.keys() == theirs.keys(), (k, step)
            for key in theirs:
                torch.testing.assert_close(
                    ours[key].to(DT),
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
    from mmdet_gc import GC_OPTIMIZERS
    cls = GC_OPTIMIZERS[name]
    if cls.base_algorithm == 'SGD':
        return reference_step
    if cls.base_algorithm == 'SGDW':
        return ref_sgdw
    if cls.base_algorithm == 'Adagrad':
        return ref_adagrad

    def ref(p, g, st, cen, **h):
        h.setdefault('betas', (0.9, 0.999))
        h.setdefault('eps', 1e-8)
        h.setdefault('amsgrad', False)
        h.setdefault('maximize', False)
        h.setdefault('weight_decay', 1e-2 if cls.decoupled else 0.)
        return ref_adam(
            p,
            g,
            st,
            cen,
            decoupled=cls.decoupled,
            on_update=cls.gc_on_update,
            **h)

    return ref
