"""The whole GC optimizer family against float64 references from the maths.

Each optimizer is torch.optim's algorithm with GC where the paper puts it
(Yong et al., ECCV 2020, arXiv:2004.01461):
parameters and every state tensor are compared with a reference written
here, every step, for both kernels; with GC off each equals its torch.optim
counterpart exactly; the "2" variants keep the row means of centralized
weights.
"""
import copy

import pytest
import torch

import mmdet_gc
from mmdet_gc import GC_OPTIMIZERS
from mmdet_gc.optim.gc import CUDA_PATHS_ENV

from helpers import (DEVICES, SGD_HYPER, SHAPES, assert_kernels_agree,
                     assert_same_as, check_against_reference, kind,
                     make_params, product, reference_for, set_grads)

STEPS = 10

HYPER = {
    'SGDW': [
        dict(lr=0.05, momentum=0.9),
        dict(lr=0.05, momentum=0.9, weight_decay=0.1),
        dict(lr=0.05, weight_decay=0.1, maximize=True),
    ],
    'Adam': [
        dict(lr=1e-2),
        dict(lr=1e-2, weight_decay=0.1, betas=(0.8, 0.99)),
        dict(lr=1e-2, weight_decay=0.1, amsgrad=True, maximize=True),
    ],
    'AdamW': [
        dict(lr=1e-2, weight_decay=0.),
        dict(lr=1e-2, weight_decay=0.1),
        dict(lr=1e-2, weight_decay=0.1, amsgrad=True, maximize=True),
    ],
    'Adagrad': [
        dict(lr=0.1, lr_decay=0., weight_decay=0., eps=1e-10),
        dict(
            lr=0.1,
            lr_decay=0.01,
            weight_decay=0.1,
            eps=1e-10,
            initial_accumulator_value=0.1),
        dict(lr=0.1, lr_decay=0., weight_decay=0.1, eps=1e-10, maximize=True),
    ],
}
FAMILY = [n for n in GC_OPTIMIZERS if not n.startswith('SGD_')]
CASES = [(n, f, h) for n in FAMILY for f in (False, True)
         for h in HYPER[kind(n).algorithm]]


def test_all_fourteen_are_registered():
    from mmdet.registry import OPTIMIZERS
    assert len(GC_OPTIMIZERS) == 14
    for name, cls in GC_OPTIMIZERS.items():
        assert OPTIMIZERS.get(name) is cls


@pytest.mark.parametrize('name,foreach,hyper', CASES)
@pytest.mark.parametrize('device', DEVICES)
def test_matches_reference_every_step(name, foreach, hyper, device):
    cls = GC_OPTIMIZERS[name]
    params = make_params(device=device)
    opt = cls(params.values(), foreach=foreach, **hyper)
    check_against_reference(opt, params, reference_for(name),
                            kind(cls).conv_only, lambda k: hyper, STEPS)


@pytest.mark.parametrize('name', list(GC_OPTIMIZERS))
def test_the_paths_cuda_takes_match_the_reference(monkeypatch, name):
    """Run on the CPU (``MMDET_GC_CUDA_PATHS=1``), the paths a CUDA device
    takes (foreach: the row means of a step in one segmented reduction;
    fused: torch's fused kernels on centralized gradients) equal the
    float64 reference every step."""
    monkeypatch.setenv(CUDA_PATHS_ENV, '1')
    cls = GC_OPTIMIZERS[name]
    for hyper in HYPER.get(kind(cls).algorithm, SGD_HYPER):
        for mode in (dict(foreach=True), dict(fused=True)):
            params = make_params()
            opt = cls(params.values(), **mode, **hyper)
            check_against_reference(opt, params, reference_for(name),
                                    kind(cls).conv_only, lambda k: hyper,
                                    STEPS)


@pytest.mark.parametrize('name,hyper', [(n, h) for n in FAMILY
                                        for h in HYPER[kind(n).algorithm]])
def test_foreach_matches_single_tensor_kernel(name, hyper):
    cls = GC_OPTIMIZERS[name]
    assert_kernels_agree(lambda ps, **kw: cls(ps, **kw, **hyper), STEPS)


@pytest.mark.parametrize('name', FAMILY)
def test_foreach_matches_single_tensor_kernel_in_float32(name):
    """float32 rounding does not build up between the kernels (the foreach
    Adam kernels fold the bias correction into the step size and apply GC
    on the update through the row means' change)."""
    cls = GC_OPTIMIZERS[name]
    for hyper in HYPER[kind(cls).algorithm]:
        assert_kernels_agree(
            lambda ps, **kw: cls(ps, **kw, **hyper),
            STEPS,
            torch.float32,
            rtol=1e-5,
            atol=1e-6)


TORCH_TWIN = {
    'SGD': torch.optim.SGD,
    'Adam': torch.optim.Adam,
    'AdamW': torch.optim.AdamW,
    'Adagrad': torch.optim.Adagrad
}


@pytest.mark.parametrize(
    'name,foreach,hyper',
    [c for c in CASES if GC_OPTIMIZERS[c[0]].base_algorithm in TORCH_TWIN])
@pytest.mark.parametrize('device', DEVICES)
def test_gc_off_equals_torch_exactly(name, foreach, hyper, device):
    cls = GC_OPTIMIZERS[name]
    a, b = make_params(device=device), make_params(device=device)
    ours = cls([dict(params=list(a.values()), gc=False)],
               foreach=foreach,
               **hyper)
    theirs = TORCH_TWIN[kind(cls).algorithm](
        b.values(), foreach=foreach, **hyper)
    assert_same_as(ours, a, theirs, b, STEPS)


def test_sgdw_without_decay_and_gc_equals_torch_sgd():
    a, b = make_params(), make_params()
    hyper = dict(lr=0.05, momentum=0.9, nesterov=True)
    ours = mmdet_gc.SGDW_GC(a.values(), gc=False, **hyper)
    theirs = torch.optim.SGD(b.values(), **hyper)
    assert_same_as(ours, a, theirs, b, STEPS)


@pytest.mark.parametrize(
    'name,foreach',
    product(['Adam_GC2', 'Adam_GCC2', 'AdamW_GC2', 'AdamW_GCC2'],
            [False, True]))
@pytest.mark.parametrize('device', DEVICES)
def test_update_variants_keep_row_means(name, foreach, device):
    cls = GC_OPTIMIZERS[name]
    params = make_params(device=device)
    cen = {
        k
        for k, p in params.items()
        if p.dim() > (3 if kind(cls).conv_only else 1)
    }
    dims = {k: tuple(range(1, params[k].dim())) for k in cen}
    before = {k: params[k].detach().mean(dims[k]) for k in cen}
    opt = cls(
        params.values(),
        lr=0.05,
        weight_decay=0.1,
        amsgrad=True,
        foreach=foreach)
    for step in range(40):
        set_grads(params, step)
        opt.step()
    for k in cen:
        torch.testing.assert_close(
            params[k].detach().mean(dims[k]),
            before[k],
            rtol=0,
            atol=1e-12,
            msg=k)
    # ...while the gradient-GC variant moves them under Adam's scaling.
    plain = make_params(device=device)
    opt = GC_OPTIMIZERS[name.replace('2', '')](
        plain.values(), lr=0.05, weight_decay=0.1, foreach=foreach)
    for step in range(40):
        set_grads(plain, step)
        opt.step()
    k = 'conv'
    assert (plain[k].detach().mean(dims[k]) - before[k]).abs().max() > 1e-3


@pytest.mark.parametrize('name', FAMILY)
def test_grad_untouched_and_state_dict_round_trip(name):
    cls = GC_OPTIMIZERS[name]
    hyper = HYPER[kind(cls).algorithm][1]
    a = make_params()
    opt_a = cls(a.values(), **hyper)
    for step in range(4):
        set_grads(a, step)
        saved = {k: p.grad.clone() for k, p in a.items() if p.grad is not None}
        opt_a.step()
        for k, g in saved.items():
            assert torch.equal(a[k].grad, g), k
    b = {k: p.detach().clone().requires_grad_() for k, p in a.items()}
    opt_b = cls(b.values(), **hyper)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    for step in range(4, 8):
        for params, opt in ((a, opt_a), (b, opt_b)):
            set_grads(params, step)
            opt.step()
    for k in SHAPES:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize('name,kwargs,match', [
    ('Adam_GC', dict(lr=-1.), 'lr'),
    ('AdamW_GCC2', dict(betas=(1.0, 0.9)), r'betas\[0\]'),
    ('Adam_GC2', dict(eps=-1e-8), 'eps'),
    ('AdamW_GC', dict(weight_decay=-0.1), 'weight_decay'),
    ('Adagrad_GC', dict(lr_decay=-0.1), 'lr_decay'),
    ('SGDW_GC', dict(lr=0.1, momentum=-1.), 'momentum'),
])
def test_bad_hyper_parameters_raise(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        GC_OPTIMIZERS[name]([torch.nn.Parameter(torch.ones(2, 2))], **kwargs)


def test_flattened_parameters_warn_once():
    flat = torch.nn.Parameter(torch.zeros(12))
    flat._fsdp_flattened = True
    with pytest.warns(UserWarning, match='flattened or sharded'):
        mmdet_gc.AdamW_GCC2([flat])
    ds = torch.nn.Parameter(torch.zeros(12))
    ds.ds_shape = (3, 4)
    with pytest.warns(UserWarning, match='ZeRO'):
        mmdet_gc.Adagrad_GC([ds])
