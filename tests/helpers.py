"""Shared fixtures of the optimizer tests: deterministic float64 parameters
of the shapes GC distinguishes, and gradients for them (one parameter has
none on some steps)."""
import itertools

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
