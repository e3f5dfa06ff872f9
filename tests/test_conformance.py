"""The GC optimizers as drop-ins for torch.optim: gradients untouched in
every kernel and option, state handled as torch handles it (lazy state,
old checkpoints, foreign state dicts, resume), complex parameters, and
torch's arguments and validation (Gradient Centralization, Yong et al.,
ECCV 2020: GC changes the update, nothing else)."""
import copy
import itertools
import math

import pytest
import torch

from mmdet_gc import GC_OPTIMIZERS, centralize

from helpers import (DEVICES, FAMILY, assert_same_as, kind, make_params,
                     set_grads)

TORCH_TWIN = {
    'SGD': torch.optim.SGD,
    'SGDW': torch.optim.SGD,
    'Adam': torch.optim.Adam,
    'AdamW': torch.optim.AdamW,
    'Adagrad': torch.optim.Adagrad
}


def options(name):
    """Every combination of the options that change a kernel's path."""
    algo = kind(name).algorithm
    out = []
    for wd, maximize in itertools.product((0., 0.1), (False, True)):
        if algo in ('SGD', 'SGDW'):
            for nesterov in (False, True):
                out.append(
                    dict(
                        lr=0.1,
                        momentum=0.9,
                        nesterov=nesterov,
                        weight_decay=wd,
                        maximize=maximize))
            out.append(
                dict(
                    lr=0.1,
                    momentum=0.9,
                    dampening=0.5,
                    weight_decay=wd,
                    maximize=maximize))
            out.append(dict(lr=0.1, weight_decay=wd, maximize=maximize))
        elif algo in ('Adam', 'AdamW'):
            for amsgrad in (False, True):
                out.append(
                    dict(
                        lr=0.1,
                        amsgrad=amsgrad,
                        weight_decay=wd,
                        maximize=maximize))
        else:
            out.append(dict(lr=0.1, weight_decay=wd, maximize=maximize))
    return out


GRAD_CASES = [(n, f, o, d) for n in GC_OPTIMIZERS for f in (False, True)
              for o in options(n) for d in (torch.float32, torch.float64)]


@pytest.mark.parametrize('name,foreach,hyper,dtype', GRAD_CASES)
@pytest.mark.parametrize('device', DEVICES)
def test_grad_is_never_modified(name, foreach, hyper, dtype, device):
    params = make_params(dtype=dtype, device=device)
    plist = list(params.values())
    # A group with GC off too: its tensors take torch's own kernels.
    opt = GC_OPTIMIZERS[name](
        [dict(params=plist[:4]),
         dict(params=plist[4:], gc=False)],
        foreach=foreach,
        **hyper)
    for step in range(3):
        set_grads(params, step)
        saved = {
            k: p.grad.clone()
            for k, p in params.items() if p.grad is not None
        }
        opt.step()
        for k, g in saved.items():
            assert torch.equal(params[k].grad, g), (k, step)


# --------------------------------------------------------------------------
# State, as torch.optim handles it.
# --------------------------------------------------------------------------

STEPPED = [n for n in GC_OPTIMIZERS if not n.startswith('SGD')]


@pytest.mark.parametrize('name', [n for n in GC_OPTIMIZERS if 'Adagrad' in n])
@pytest.mark.parametrize('foreach', [False, True])
def test_adagrad_state_is_made_lazily_after_add_param_group(name, foreach):
    a, b = make_params(), make_params()
    la, lb = list(a.values()), list(b.values())
    hyper = dict(lr=0.1, initial_accumulator_value=0.2, foreach=foreach)
    ours = GC_OPTIMIZERS[name](la[:3], gc=False, **hyper)
    ours.add_param_group(dict(params=la[3:]))
    theirs = torch.optim.Adagrad(lb[:3], **hyper)
    theirs.add_param_group(dict(params=lb[3:]))
    ours.param_groups[1]['gc'] = False
    assert_same_as(ours, a, theirs, b, 4)


@pytest.mark.parametrize('name', STEPPED)
def test_a_plain_number_step_in_a_loaded_state_steps(name):
    """torch's test_load_nontensor_step: older checkpoints hold a float."""
    cls = GC_OPTIMIZERS[name]
    a = make_params()
    opt = cls(a.values(), lr=0.1)
    set_grads(a, 0)
    opt.step()
    state = copy.deepcopy(opt.state_dict())
    for s in state['state'].values():
        s['step'] = float(s['step'])
    b = {k: p.detach().clone().requires_grad_() for k, p in a.items()}
    opt_b = cls(b.values(), lr=0.1)
    opt_b.load_state_dict(state)
    assert all(torch.is_tensor(s['step']) for s in opt_b.state.values())
    for params, o in ((a, opt), (b, opt_b)):
        set_grads(params, 1)
        o.step()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_loading_a_torch_state_dict_keeps_the_gc_switches():
    a = make_params()
    torch_sgd = torch.optim.SGD(a.values(), lr=0.1, momentum=0.9)
    set_grads(a, 0)
    torch_sgd.step()
    ours = GC_OPTIMIZERS['SGD_GC'](a.values(), lr=0.1, momentum=0.9, gc=False)
    ours.load_state_dict(torch_sgd.state_dict())
    assert ours.param_groups[0]['gc'] is False
    assert ours.param_groups[0]['gc_conv_only'] is False
    gcc = GC_OPTIMIZERS['SGD_GCC'](a.values(), lr=0.1, momentum=0.9)
    gcc.load_state_dict(torch_sgd.state_dict())
    assert gcc.param_groups[0]['gc'] is True
    assert gcc.param_groups[0]['gc_conv_only'] is True


def test_the_configured_gc_switches_win_over_a_checkpoints_with_a_warning():
    a = make_params()
    gc_opt = GC_OPTIMIZERS['SGD_GC'](a.values(), lr=0.1, momentum=0.9)
    set_grads(a, 0)
    gc_opt.step()
    state = gc_opt.state_dict()
    gcc = GC_OPTIMIZERS['SGD_GCC']([
        dict(params=list(a.values())[:3]),
        dict(params=list(a.values())[3:], gc=False)
    ],
                                   lr=0.1,
                                   momentum=0.9)
    state['param_groups'] = [
        dict(state['param_groups'][0], params=[0, 1, 2]),
        dict(state['param_groups'][0], params=[3, 4, 5])
    ]
    with pytest.warns(UserWarning) as record:
        gcc.load_state_dict(state)
    messages = [
        str(w.message) for w in record if 'GC switch' in str(w.message)
    ]
    assert len(messages) == 1, messages
    assert 'gc_conv_only' in messages[0] and "'gc'" in messages[0]
    assert [g['gc_conv_only'] for g in gcc.param_groups] == [True, True]
    assert [g['gc'] for g in gcc.param_groups] == [True, False]
    assert gcc.state[a['conv']]['momentum_buffer'] is not None


# --------------------------------------------------------------------------
# Complex parameters.
# --------------------------------------------------------------------------


def complex_params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        'conv':
        torch.randn(4, 3, 3, 3, generator=g,
                    dtype=torch.complex128).requires_grad_(),
        'fc':
        torch.randn(5, 6, generator=g,
                    dtype=torch.complex128).requires_grad_(),
        'bias':
        torch.randn(5, generator=g, dtype=torch.complex128).requires_grad_(),
    }


def set_complex_grads(params, step):
    g = torch.Generator().manual_seed(100 + step)
    for p in params.values():
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)


def step_complex_in_lockstep(ours, a, theirs, b, steps=3):
    """Both optimizers see the same complex gradients; the parameters stay
    equal bit for bit."""
    for step in range(steps):
        set_complex_grads(a, step)
        set_complex_grads(b, step)
        ours.step()
        theirs.step()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_gc_of_a_complex_weight_subtracts_the_complex_row_mean():
    w = complex_params()['fc'].detach()
    out = centralize(w)
    torch.testing.assert_close(out, w - w.mean(dim=1, keepdim=True))
    assert out.dtype == w.dtype
    torch.testing.assert_close(
        out.mean(dim=1), torch.zeros(5, dtype=w.dtype), atol=1e-15, rtol=0)


@pytest.mark.parametrize('foreach', [False, True])
def test_adagrad_initial_accumulator_on_complex_is_as_torch(foreach):
    a, b = complex_params(), complex_params()
    hyper = dict(lr=0.1, initial_accumulator_value=0.3, foreach=foreach)
    ours = GC_OPTIMIZERS['Adagrad_GC'](a.values(), gc=False, **hyper)
    theirs = torch.optim.Adagrad(b.values(), **hyper)
    for k in a:
        assert torch.equal(ours.state[a[k]]['sum'], theirs.state[b[k]]['sum'])
    step_complex_in_lockstep(ours, a, theirs, b)


def ref_adam_gc_complex(p, g, st, lr, betas, eps, wd, row, amsgrad):
    """The Adam(W) GC optimizer of :data:`FAMILY` row ``row`` on a complex
    weight, from the maths (complex128): L2 decay folded into the gradient
    (Adam) before GC, GC of the complex gradient or of the complex update
    ("2") on the weights its rule covers, moments on the real view as torch
    keeps them, decoupled decay (AdamW) in the update."""
    b1, b2 = betas
    centralized = p.dim() > (3 if row.conv_only else 1)
    dims = tuple(range(1, p.dim()))
    if not row.decoupled:
        g = g + wd * p
    if centralized and not row.on_update:
        g = g - g.mean(dim=dims, keepdim=True)
    gr = torch.view_as_real(g)
    st.setdefault('step', 0)
    st.setdefault('m', torch.zeros_like(gr))
    st.setdefault('v', torch.zeros_like(gr))
    st.setdefault('vmax', torch.zeros_like(gr))
    st['step'] += 1
    t = st['step']
    st['m'] = b1 * st['m'] + (1 - b1) * gr
    st['v'] = b2 * st['v'] + (1 - b2) * gr * gr
    st['vmax'] = torch.maximum(st['vmax'], st['v'])
    v = st['vmax'] if amsgrad else st['v']
    delta = lr / (1 - b1**t) * st['m'] / (
        v.sqrt() / math.sqrt(1 - b2**t) + eps)
    delta = torch.view_as_complex(delta)
    if row.decoupled:
        if row.on_update:
            delta = delta + lr * wd * p
        else:  # torch's AdamW: p *= 1 - lr * wd, then the Adam step
            p = p * (1 - lr * wd)
    if centralized and row.on_update:
        delta = delta - delta.mean(dim=dims, keepdim=True)
    return p - delta


@pytest.mark.parametrize('name', [n for n in FAMILY if 'Adam' in n])
@pytest.mark.parametrize('foreach', [False, True])
@pytest.mark.parametrize('amsgrad', [False, True])
def test_every_adam_variant_on_complex_matches_the_reference(
        name, foreach, amsgrad):
    cls = GC_OPTIMIZERS[name]
    params = complex_params()
    hyper = dict(lr=0.05, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    opt = cls(params.values(), foreach=foreach, amsgrad=amsgrad, **hyper)
    ref = {k: p.detach().clone() for k, p in params.items()}
    st = {k: {} for k in params}
    for step in range(5):
        set_complex_grads(params, step)
        opt.step()
        for k, p in params.items():
            ref[k] = ref_adam_gc_complex(ref[k], p.grad, st[k], hyper['lr'],
                                         hyper['betas'],
                                         hyper['eps'], hyper['weight_decay'],
                                         kind(cls), amsgrad)
            torch.testing.assert_close(
                p.detach(), ref[k], rtol=1e-10, atol=1e-12, msg=k)


@pytest.mark.parametrize('name', [n for n in GC_OPTIMIZERS if 'Adam' in n])
@pytest.mark.parametrize('foreach', [False, True])
def test_amsgrad_on_complex_with_gc_off_equals_torch(name, foreach):
    cls = GC_OPTIMIZERS[name]
    a, b = complex_params(), complex_params()
    hyper = dict(lr=0.05, amsgrad=True, weight_decay=0.1, foreach=foreach)
    ours = cls(a.values(), gc=False, **hyper)
    theirs = TORCH_TWIN[kind(cls).algorithm](b.values(), **hyper)
    step_complex_in_lockstep(ours, a, theirs, b)


# --------------------------------------------------------------------------
# Arguments, as torch.optim takes them.
# --------------------------------------------------------------------------

OFF_VALUES = {
    'SGD':
    dict(fused=None, differentiable=False),
    'SGDW':
    dict(fused=None, differentiable=False),
    'Adam':
    dict(
        fused=None,
        capturable=False,
        differentiable=False,
        decoupled_weight_decay=False),
    'AdamW':
    dict(fused=None, capturable=False, differentiable=False),
    'Adagrad':
    dict(fused=None, differentiable=False),
}


@pytest.mark.parametrize('name', list(GC_OPTIMIZERS))
def test_torch_arguments_at_their_off_values_pass_through(name):
    cls = GC_OPTIMIZERS[name]
    off = OFF_VALUES[kind(cls).algorithm]
    opt = cls([torch.nn.Parameter(torch.ones(2, 2))], lr=0.1, **off)
    for key, value in off.items():
        assert opt.param_groups[0][key] == value
    # torch's param-group keys are accepted in a group as well.
    cls([dict(params=[torch.nn.Parameter(torch.ones(2))], **off)], lr=0.1)


# Every family has a fused step (tests/test_fused.py, test_fused_adam.py,
# test_torch_fused.py).
SUPPORTED = {('SGD', 'fused'), ('SGDW', 'fused'), ('Adam', 'fused'),
             ('AdamW', 'fused'), ('Adagrad', 'fused')}


@pytest.mark.parametrize(
    'name,arg',
    [(n, a) for n, c in GC_OPTIMIZERS.items()
     for a in ('fused', 'capturable', 'differentiable')
     if a in OFF_VALUES[kind(c).algorithm] and (kind(c).algorithm,
                                                a) not in SUPPORTED])
def test_unsupported_torch_modes_are_refused_by_name(name, arg):
    cls = GC_OPTIMIZERS[name]
    with pytest.raises(ValueError) as e:
        cls([torch.nn.Parameter(torch.ones(2, 2))], lr=0.1, **{arg: True})
    assert f'{arg}=True' in str(e.value) and name in str(e.value)
    assert 'foreach' in str(e.value)
    assert '_AdamGCBase' not in str(e.value)
    with pytest.raises(ValueError, match=f'{name} does not support {arg}'):
        cls([dict(params=[torch.nn.Parameter(torch.ones(2))], **{arg: True})])


def test_adam_decoupled_weight_decay_true_is_refused_naming_adamw():
    with pytest.raises(
            ValueError, match='decoupled_weight_decay=True.*'
            'AdamW_GC'):
        GC_OPTIMIZERS['Adam_GC']([torch.nn.Parameter(torch.ones(2))],
                                 decoupled_weight_decay=True)


@pytest.mark.parametrize('name', list(GC_OPTIMIZERS))
@pytest.mark.parametrize('value', [math.nan, math.inf])
@pytest.mark.parametrize('arg', ['lr', 'weight_decay'])
def test_non_finite_hyper_parameters_raise(name, value, arg):
    with pytest.raises(ValueError, match=arg):
        GC_OPTIMIZERS[name]([torch.nn.Parameter(torch.ones(2))], **{
            arg: value
        })


@pytest.mark.parametrize('name', list(GC_OPTIMIZERS))
def test_tensor_lr_must_have_one_element(name):
    p = [torch.nn.Parameter(torch.ones(2))]
    with pytest.raises(ValueError, match='Tensor lr must be 1-element'):
        GC_OPTIMIZERS[name](p, lr=torch.tensor([0.1, 0.2]))


@pytest.mark.parametrize('name', [n for n in GC_OPTIMIZERS if 'Adam' in n])
def test_betas_and_foreach_follow_torch_adams_rules(name):
    cls = GC_OPTIMIZERS[name]
    p = [torch.nn.Parameter(torch.ones(2))]
    for kwargs, match in [
        (dict(betas=(0.9, torch.tensor(0.99))), 'both floats or both'),
        (dict(betas=(torch.tensor(0.9), torch.tensor(0.99)),
              foreach=True), r'betas\[0\] as a Tensor'),
        (dict(lr=torch.tensor(0.1), foreach=True), 'lr as a Tensor'),
    ]:
        with pytest.raises(ValueError, match=match):
            cls(p, **kwargs)
        with pytest.raises(ValueError, match=match):
            TORCH_TWIN[kind(cls).algorithm](p, **kwargs)
    # (torch itself stumbles on this one with a RuntimeError.)
    with pytest.raises(ValueError, match=r'Tensor betas\[0\] must be 1-el'):
        cls(p, betas=(torch.tensor([0.9, 0.8]), torch.tensor(0.99)))


@pytest.mark.parametrize('name', [n for n in GC_OPTIMIZERS if 'Adam' not in n])
def test_tensor_hyper_parameters_step_as_floats_do(name):
    """SGD and Adagrad read a tensor lr as its value. The Adam family hands
    a tensor lr or betas to torch's kernels as given, and rounds as
    torch.optim.Adam does with them (tests/test_torch_inputs.py)."""
    cls = GC_OPTIMIZERS[name]
    kw = dict(lr=torch.tensor(0.1))
    a, b = make_params(), make_params()
    ours = cls(a.values(), **kw)
    # The same values as Python floats (the tensors are float32).
    floats = cls(
        b.values(), **{
            k: tuple(t.item() for t in v) if k == 'betas' else v.item()
            for k, v in kw.items()
        })
    for step in range(3):
        for params, o in ((a, ours), (b, floats)):
            set_grads(params, step)
            o.step()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-12, atol=1e-14)


def test_adagrad_takes_foreach_positionally_as_torch():
    p = [torch.nn.Parameter(torch.ones(2))]
    for name in ('Adagrad_GC', 'Adagrad_GCC'):
        opt = GC_OPTIMIZERS[name](p, 0.1, 0., 0., 0., 1e-10, True)
        assert opt.param_groups[0]['foreach'] is True
    assert torch.optim.Adagrad(p, 0.1, 0., 0., 0., 1e-10,
                               True).param_groups[0]['foreach'] is True
