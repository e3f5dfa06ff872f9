"""What each of the 14 optimizers is, from the table written out in
``tests/helpers.py`` (``FAMILY``, which every numerics test takes its
expectations from), checked by behaviour (never read from the class):
which torch.optim algorithm it steps, its decay rule, whether GC reaches fc
weights (``_GC``) or conv weights only (``_GCC``), and whether it
centralizes the gradient or the update ("2").

Deleting ``gc_conv_only = True`` from ``AdamW_GCC`` (so that it centralizes
fc weights too), or any such slip, fails here.
"""
import pytest
import torch

from mmdet_gc.optim import GC_OPTIMIZERS

from helpers import FAMILY

HYPER = {
    'SGD': dict(lr=0.1, momentum=0.9, weight_decay=0.05),
    'SGDW': dict(lr=0.1, momentum=0.9, weight_decay=0.05),
    'Adam': dict(lr=0.1, weight_decay=0.05),
    'AdamW': dict(lr=0.1, weight_decay=0.05),
    'Adagrad': dict(lr=0.1, weight_decay=0.05),
}
SHAPES = {'conv': (4, 3, 3, 3), 'fc': (5, 6), 'bias': (5, )}
STEPS = 3


def _params():
    gen = torch.Generator().manual_seed(0)
    return {
        k:
        torch.randn(s, generator=gen,
                    dtype=torch.float64).add_(1.).requires_grad_()
        for k, s in SHAPES.items()
    }


def _grads(params, step):
    gen = torch.Generator().manual_seed(10 + step)
    for p in params.values():
        # Rows with a mean of their own, for GC to remove.
        p.grad = torch.randn(
            p.shape, generator=gen, dtype=torch.float64).add_(0.5)


def _sgdw(params, lr, momentum, weight_decay):
    """SGD with decoupled decay, from the maths: p -= lr * wd * p, then
    torch's SGD step without decay."""
    sgd = torch.optim.SGD(params, lr=lr, momentum=momentum)

    class Step:

        def step(self):
            with torch.no_grad():
                for p in params:
                    p.mul_(1 - lr * weight_decay)
            sgd.step()

    return Step()


def _twin(algo, params):
    """torch's optimizer of ``algo`` (SGDW from the maths)."""
    if algo == 'SGDW':
        return _sgdw(params, **HYPER[algo])
    return getattr(torch.optim, algo)(params, **HYPER[algo])


def _run(make):
    params = _params()
    opt = make(list(params.values()))
    for step in range(STEPS):
        _grads(params, step)
        opt.step()
    return {k: p.detach() for k, p in params.items()}


@pytest.mark.parametrize('name', list(FAMILY))
def test_each_optimizer_is_what_its_name_says(name):
    algo, decoupled, conv_only, on_update = FAMILY[name]
    assert decoupled == (algo in ('SGDW', 'AdamW'))
    cls = GC_OPTIMIZERS[name]
    ours = _run(lambda ps: cls(ps, **HYPER[algo]))
    twin = _run(lambda ps: _twin(algo, ps))
    # The bias is never centralized: it steps as torch's algorithm.
    torch.testing.assert_close(
        ours['bias'], twin['bias'], rtol=1e-13, atol=1e-15)
    # fc weights: stepped as torch's algorithm by _GCC, centralized by _GC.
    fc_plain = torch.allclose(ours['fc'], twin['fc'], rtol=1e-13, atol=1e-15)
    assert fc_plain == conv_only, f'{name}: fc weights stepped plain?'
    assert not torch.allclose(ours['conv'], twin['conv'], rtol=1e-6)
    # GC on the update keeps every centralized weight's row means; so does
    # SGD's GC on the (L2-folded) gradient, whose update is linear in it
    # (the paper's theorem); SGDW's decoupled decay scales them.
    before = _params()['conv'].detach().mean(dim=(1, 2, 3))
    kept = torch.allclose(
        ours['conv'].mean(dim=(1, 2, 3)), before, rtol=0, atol=1e-12)
    assert kept == (on_update or algo == 'SGD'), f'{name}: row means kept?'


def test_the_table_is_the_whole_family():
    assert len(FAMILY) == 14 and set(FAMILY) == set(GC_OPTIMIZERS)
