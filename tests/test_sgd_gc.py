"""Numerics of SGD_GC / SGD_GCC against references (float64).

References: a loop written here from the maths of Yong et al. (ECCV 2020,
arXiv:2004.01461), torch.optim.SGD with GC switched off, and the paper's
properties (GC is a projection; row means of centralized weights never
change under SGD with GC).
"""
import copy

import pytest
import torch

from mmdet_gc import SGD_GC, SGD_GCC, centralize, foreach_centralize

from helpers import (DEVICES, DT, SGD_HYPER, SHAPES, assert_kernels_agree,
                     assert_same_as, check_against_reference, make_params,
                     product, reference_step, set_grads)

STEPS = 12


@pytest.mark.parametrize('cls,foreach,hyper',
                         product([SGD_GC, SGD_GCC], [False, True], SGD_HYPER))
@pytest.mark.parametrize('device', DEVICES)
def test_matches_reference_every_step(cls, foreach, hyper, device):
    params = make_params(device=device)
    # Two groups: the second with its own lr / momentum.
    group2 = ['fc', 'bias']
    groups = [
        dict(params=[params[k] for k in SHAPES if k not in group2]),
        dict(params=[params[k] for k in group2], lr=0.02, momentum=0.5),
    ]
    opt = cls(groups, foreach=foreach, **hyper)
    check_against_reference(
        opt, params, reference_step, cls is SGD_GCC, lambda k: {
            **hyper,
            **(dict(lr=0.02, momentum=0.5) if k in group2 else {})
        }, STEPS)


@pytest.mark.parametrize('cls,hyper', product([SGD_GC, SGD_GCC], SGD_HYPER))
def test_foreach_matches_single_tensor_kernel(cls, hyper):
    assert_kernels_agree(lambda ps, **kw: cls(ps, **kw, **hyper), STEPS)


@pytest.mark.parametrize('foreach,hyper', product([False, True], SGD_HYPER))
@pytest.mark.parametrize('device', DEVICES)
def test_gc_off_equals_torch_sgd_exactly(foreach, hyper, device):
    a, b = make_params(device=device), make_params(device=device)
    opt_gc = SGD_GC([dict(params=list(a.values()), gc=False)],
                    foreach=foreach,
                    **hyper)
    opt_torch = torch.optim.SGD(b.values(), foreach=foreach, **hyper)
    assert_same_as(opt_gc, a, opt_torch, b, STEPS)


@pytest.mark.parametrize('cls,foreach',
                         product([SGD_GC, SGD_GCC], [False, True]))
def test_uncentralized_tensors_are_plain_sgd(cls, foreach):
    """1-D params (both) and Linear / Conv1d weights (SGD_GCC) = torch SGD."""
    hyper = dict(lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True)
    a, b = make_params(), make_params()
    plain = [
        k for k, p in a.items() if p.dim() <= (3 if cls is SGD_GCC else 1)
    ]
    assert 'bias' in plain and 'gamma' in plain
    if cls is SGD_GCC:
        assert 'fc' in plain and 'conv1d' in plain
    opt = cls(a.values(), foreach=foreach, **hyper)
    ref = torch.optim.SGD([b[k] for k in plain], foreach=foreach, **hyper)
    assert_same_as(opt, a, ref, b, STEPS, keys=plain)
    for k in set(SHAPES) - set(plain):
        assert not torch.equal(a[k], b[k]), k


@pytest.mark.parametrize('cls,foreach,hyper',
                         product([SGD_GC, SGD_GCC], [False, True], SGD_HYPER))
@pytest.mark.parametrize('device', DEVICES)
def test_row_means_of_centralized_weights_never_change(cls, foreach, hyper,
                                                       device):
    params = make_params(device=device)
    conv_only = cls is SGD_GCC
    cen = {k for k, p in params.items() if p.dim() > (3 if conv_only else 1)}
    dims = {k: tuple(range(1, params[k].dim())) for k in cen}
    before = {k: params[k].detach().mean(dims[k]) for k in cen}
    opt = cls(params.values(), foreach=foreach, **hyper)
    for step in range(60):
        set_grads(params, step)
        opt.step()
    for k in cen:
        moved = (params[k].detach() -
                 params[k].detach().mean(dims[k], keepdim=True)).abs().max()
        assert moved > 0.1  # the weights did train
        torch.testing.assert_close(
            params[k].detach().mean(dims[k]),
            before[k],
            rtol=0,
            atol=1e-12,
            msg=k)


def test_centralize_is_an_idempotent_linear_projection():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(8, 4, 3, 3, generator=g, dtype=DT)
    b = torch.randn(8, 4, 3, 3, generator=g, dtype=DT)
    ga = centralize(a)
    torch.testing.assert_close(centralize(ga), ga, rtol=0, atol=1e-15)
    torch.testing.assert_close(
        centralize(a + 2 * b), ga + 2 * centralize(b), rtol=0, atol=1e-14)
    assert ga.mean(dim=(1, 2, 3)).abs().max() < 1e-15
    for x, y in zip(foreach_centralize([a, b]), [ga, centralize(b)]):
        assert torch.equal(x, y)
    with pytest.raises(ValueError, match='at least 2 dims'):
        centralize(torch.ones(3))


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_mean_is_taken_in_float32(dtype):
    g = torch.Generator().manual_seed(0)
    # Rows with a large offset: a half-precision reduction would lose it.
    t = (torch.randn(16, 2048, generator=g) * 0.01 + 3.0).to(dtype)
    out = centralize(t)
    assert out.dtype == dtype
    expected = (t.float() - t.float().mean(dim=1, keepdim=True)).to(dtype)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    # Mixed with a float32 tensor, each keeps its own dtype.
    f32 = torch.randn(4, 6, generator=g)
    x, y = foreach_centralize([f32, t])
    assert x.dtype == torch.float32 and torch.equal(x, centralize(f32))
    assert y.dtype == dtype and torch.equal(y, expected)
    # A step on half parameters keeps their dtype.
    p = torch.nn.Parameter(t.clone())
    p.grad = t.clone()
    SGD_GC([p], lr=0.1, momentum=0.9).step()
    assert p.dtype == dtype


@pytest.mark.parametrize('cls,foreach',
                         product([SGD_GC, SGD_GCC], [False, True]))
@pytest.mark.parametrize('device', DEVICES)
def test_grad_is_never_modified(cls, foreach, device):
    for hyper in SGD_HYPER:
        params = make_params(device=device)
        opt = cls(params.values(), foreach=foreach, **hyper)
        for step in range(3):
            set_grads(params, step)
            saved = {
                k: None if p.grad is None else p.grad.clone()
                for k, p in params.items()
            }
            opt.step()
            for k, p in params.items():
                if saved[k] is not None:
                    assert torch.equal(p.grad, saved[k]), (k, hyper)


@pytest.mark.parametrize('cls,foreach',
                         product([SGD_GC, SGD_GCC], [False, True]))
def test_state_dict_round_trip_continues_identically(cls, foreach):
    hyper = dict(lr=0.05, momentum=0.9, weight_decay=1e-3)
    a = make_params()
    opt_a = cls(a.values(), foreach=foreach, **hyper)
    for step in range(5):
        set_grads(a, step)
        opt_a.step()
    sd = copy.deepcopy(opt_a.state_dict())
    assert all('momentum_buffer' in s for s in sd['state'].values())
    b = {k: p.detach().clone().requires_grad_() for k, p in a.items()}
    opt_b = cls(b.values(), foreach=foreach, lr=1.0)  # overwritten by load
    opt_b.load_state_dict(sd)
    assert opt_b.param_groups[0]['lr'] == 0.05
    for step in range(5, 10):
        for params, opt in ((a, opt_a), (b, opt_b)):
            set_grads(params, step)
            opt.step()
    for k in SHAPES:
        assert torch.equal(a[k], b[k]), k
        assert torch.equal(opt_a.state[a[k]]['momentum_buffer'],
                           opt_b.state[b[k]]['momentum_buffer'])


@pytest.mark.parametrize('kwargs,name', [
    (dict(lr=-0.1), 'lr'),
    (dict(lr=0.1, momentum=-0.9), 'momentum'),
    (dict(lr=0.1, weight_decay=-1e-4), 'weight_decay'),
    (dict(lr=0.1, dampening=-0.1), 'dampening'),
    (dict(lr=0.1, nesterov=True), 'nesterov'),
    (dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), 'nesterov'),
])
@pytest.mark.parametrize('cls', [SGD_GC, SGD_GCC])
def test_bad_hyper_parameters_raise(cls, kwargs, name):
    with pytest.raises(ValueError, match=name):
        cls([torch.nn.Parameter(torch.ones(2, 2))], **kwargs)


def test_sparse_gradients_are_refused():
    emb = torch.nn.Embedding(10, 4, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match='sparse gradients'):
        SGD_GC(emb.parameters(), lr=0.1).step()


def test_closure_and_no_grad_params():
    p = torch.nn.Parameter(torch.ones(3, 3, dtype=DT))
    q = torch.nn.Parameter(torch.ones(3, 3, dtype=DT))

    def closure():
        p.grad = torch.arange(9, dtype=DT).view(3, 3)
        return torch.tensor(1.5)

    opt = SGD_GC([p, q], lr=1.0, momentum=0.9)
    assert opt.step(closure).item() == 1.5
    assert torch.equal(q, torch.ones(3, 3, dtype=DT))  # no grad: skipped
    assert 'momentum_buffer' not in opt.state[q]
    # Row [0, 1, 2] centred to [-1, 0, 1]: p = 1 - d.
    assert torch.equal(p[0].detach(), torch.tensor([2., 1., 0.], dtype=DT))
