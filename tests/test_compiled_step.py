"""Compiled steps: every GC optimizer's ``step`` compiles whole
(``torch.compile(..., fullgraph=True)``, inductor on the CPU), equals the
eager step, and does not compile again when the learning rate changes,
given as a tensor (torch's recipe) directly or by
:class:`~mmdet_gc.engine.CompiledOptimWrapper` under an MMEngine scheduler.

Tolerance: float32 parameters, ``rtol=1e-5, atol=1e-6`` after six steps
(inductor fuses and reorders the arithmetic).
"""
import pytest
import torch
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS, PARAM_SCHEDULERS
from torch._dynamo.utils import counters

from mmdet_gc.optim import GC_OPTIMIZERS
from mmdet_gc.optim.gc import CUDA_PATHS_ENV

from helpers import kind

STEPS = 6
TOL = dict(rtol=1e-5, atol=1e-6)
LRS = [0.01 / (i + 1) for i in range(STEPS)]
HYPER = {
    'SGD': dict(momentum=0.9, weight_decay=1e-4),
    'SGDW': dict(momentum=0.9, weight_decay=1e-4),
    'Adam': dict(weight_decay=1e-4),
    'AdamW': dict(weight_decay=0.05),
    'Adagrad': dict(weight_decay=1e-4),
}


def _params():
    gen = torch.Generator().manual_seed(0)
    return [
        torch.randn(s, generator=gen).requires_grad_()
        for s in ((8, 4, 3, 3), (8, ), (5, 8))
    ]


def _grads(params, step):
    gen = torch.Generator().manual_seed(step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def compiled_frames():
    """How many graphs dynamo has compiled (a recompile is one more)."""
    return counters['stats']['unique_graphs']


def _eager_and_compiled(cls, steps, lr_at_construction=True, **mode):
    """``cls`` stepped eagerly and through ``torch.compile(fullgraph=True)``
    side by side, under the schedule :data:`LRS` (a tensor lr for the
    compiled one); the parameters agree after every step.

    Returns:
        list[int]: :func:`compiled_frames` after each step.
    """
    hyper = HYPER[kind(cls).algorithm]
    eager_params, compiled_params = _params(), _params()
    eager = cls(eager_params, lr=LRS[0], **mode, **hyper)
    lr = torch.tensor(LRS[0], dtype=torch.float64)
    if lr_at_construction:
        opt = cls(compiled_params, lr=lr, **mode, **hyper)
    else:  # as CompiledOptimWrapper hands it over: torch refuses a tensor
        # lr with foreach=True at construction
        opt = cls(compiled_params, lr=LRS[0], **mode, **hyper)
        opt.param_groups[0]['lr'] = lr
    step = torch.compile(opt.step, fullgraph=True, backend='inductor')
    frames = []
    for i in range(steps):
        _grads(eager_params, i)
        _grads(compiled_params, i)
        eager.param_groups[0]['lr'] = LRS[i]
        lr.fill_(LRS[i])
        eager.step()
        step()
        frames.append(compiled_frames())
        for a, b in zip(eager_params, compiled_params):
            torch.testing.assert_close(b, a, **TOL)
    return frames


@pytest.mark.parametrize('name', list(GC_OPTIMIZERS))
def test_step_compiles_whole_and_not_again_under_a_schedule(name):
    frames = _eager_and_compiled(GC_OPTIMIZERS[name], STEPS)
    # A first step that creates the state (Adam's) compiles once more.
    assert frames[-1] == frames[1] <= 2, frames


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(16, 2))


@pytest.mark.parametrize('name', ['SGD_GC', 'AdamW_GC'])
def test_compiled_optim_wrapper_under_an_mmengine_schedule(name):
    """Built from a config, under MMEngine's warm-up and step schedulers
    (the lr changes every iteration), the wrapper's steps equal
    OptimWrapper's eager ones, with no compile after the second step, and
    the groups keep float learning rates."""
    hyper = dict(type=name, lr=0.02, **HYPER[kind(name).algorithm])
    runs = []
    for wrapper in ('OptimWrapper', 'CompiledOptimWrapper'):
        model = _model()
        cfg = dict(type=wrapper, optimizer=hyper, clip_grad=dict(max_norm=5.))
        if wrapper != 'OptimWrapper':
            cfg['compile'] = dict(backend='inductor')
        from mmengine.optim import build_optim_wrapper
        optim = build_optim_wrapper(model, cfg)
        schedulers = [
            PARAM_SCHEDULERS.build(
                dict(
                    type='LinearLR',
                    start_factor=0.1,
                    by_epoch=False,
                    begin=0,
                    end=3),
                default_args=dict(optimizer=optim)),
            PARAM_SCHEDULERS.build(
                dict(
                    type='MultiStepLR',
                    milestones=[4],
                    gamma=0.1,
                    by_epoch=False),
                default_args=dict(optimizer=optim)),
        ]
        frames, lrs = [], []
        x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
        for _ in range(STEPS):
            optim.update_params(model(x).square().mean())
            frames.append(compiled_frames())
            lrs.append(optim.param_groups[0]['lr'])
            assert isinstance(lrs[-1], float)
            for s in schedulers:
                s.step()
        runs.append((list(model.parameters()), frames, lrs))
    (eager, _, lrs_a), (compiled, frames, lrs_b) = runs
    assert isinstance(OPTIM_WRAPPERS.get('CompiledOptimWrapper'), type)
    assert lrs_a == lrs_b and len(set(lrs_a)) >= 4
    assert frames[-1] == frames[1] <= 2, frames
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(b, a, **TOL)


def test_a_float_lr_would_compile_at_every_change():
    """What the wrapper is for: a step compiled with the float lr MMEngine's
    schedulers write compiles again at every new value."""
    params = _params()
    opt = GC_OPTIMIZERS['SGD_GC'](params, lr=0.01, momentum=0.9)
    step = torch.compile(opt.step, fullgraph=True, backend='inductor')
    for i in range(4):
        _grads(params, i)
        opt.param_groups[0]['lr'] = LRS[i]
        step()
    assert compiled_frames() == 4


def test_compile_must_be_a_dict_or_bool():
    model = _model()
    with pytest.raises(TypeError, match='compile must be a dict'):
        OPTIM_WRAPPERS.build(
            dict(
                type='CompiledOptimWrapper',
                optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                compile='inductor'))
    assert OptimWrapper  # the parent, for the reader


@pytest.mark.parametrize('cuda_paths', ['0', '1'])
@pytest.mark.parametrize(
    'mode', [dict(foreach=True), dict(fused=True)], ids=['foreach', 'fused'])
@pytest.mark.parametrize('name', ['SGD_GC', 'AdamW_GC', 'AdamW_GC2'])
def test_foreach_and_fused_optimizers_compile_too(monkeypatch, cuda_paths,
                                                  mode, name):
    """An optimizer built with foreach=True (the default on CUDA) or
    fused=True compiles whole as well: a compiled step runs the
    single-tensor kernel, which inductor fuses."""
    monkeypatch.setenv(CUDA_PATHS_ENV, cuda_paths)
    _eager_and_compiled(
        GC_OPTIMIZERS[name], 3, lr_at_construction=False, **mode)
