"""torch's own optimizer test inputs, not ours: ``optim_db`` from
``torch.testing._internal.common_optimizers``, for SGD, Adam, AdamW and
Adagrad. With GC off each GC optimizer equals torch.optim bit for bit over
every input that runs on the CPU; with GC on it equals the float64
reference written from the maths (Yong et al., ECCV 2020); torch's error
inputs raise as torch's do.
"""
import pytest
import torch
from torch.testing._internal.common_optimizers import (OptimizerErrorEnum,
                                                       optim_db)

from mmdet_gc import GC_OPTIMIZERS

from helpers import (DEVICES, DT, assert_same_as, check_against_reference,
                     kind, make_params, reference_for)

TORCH = {info.optim_cls.__name__: info for info in optim_db}
STEPS = 4


def inputs(algo):
    """``(kwargs, desc)`` of torch's inputs for ``algo`` on the CPU."""
    info = TORCH[algo]
    return [(i.kwargs, i.desc)
            for i in info.optim_inputs_func(device='cpu', dtype=DT)
            if i.params is None]


CASES = [
    pytest.param(name, kwargs, foreach, id=f'{name}-{desc}-foreach{foreach}')
    for name, cls in GC_OPTIMIZERS.items() if kind(cls).algorithm in TORCH
    for kwargs, desc in inputs(kind(cls).algorithm)
    for foreach in (False, True)
]


def _builds(make):
    """Build, or return the exception torch's validation raised."""
    try:
        return make()
    except ValueError as e:
        return e


@pytest.mark.parametrize('name,kwargs,foreach', CASES)
@pytest.mark.parametrize('device', DEVICES)
def test_gc_off_equals_torch_on_torchs_inputs(name, kwargs, foreach, device):
    cls = GC_OPTIMIZERS[name]
    a, b = make_params(device=device), make_params(device=device)
    theirs = _builds(lambda: TORCH[kind(cls).algorithm].optim_cls(
        b.values(), foreach=foreach, **kwargs))
    ours = _builds(
        lambda: cls(a.values(), foreach=foreach, gc=False, **kwargs))
    if isinstance(theirs, ValueError):  # e.g. a tensor lr with foreach
        assert isinstance(ours, ValueError), theirs
        return
    assert not isinstance(ours, Exception), ours
    assert_same_as(ours, a, theirs, b, STEPS)


def _has_tensor_hyper(kwargs):
    return any(
        torch.is_tensor(v)
        or isinstance(v, tuple) and any(map(torch.is_tensor, v))
        for v in kwargs.values())


def tensor_hyper_inputs(algo):
    """torch's inputs for ``algo`` with a tensor lr or betas. torch lists
    them among its CUDA inputs, with ``capturable`` (CUDA graphs), which
    the CPU has no use for: the same values without it."""
    info = TORCH[algo]
    return [({
        k: v
        for k, v in i.kwargs.items() if k != 'capturable'
    }, i.desc) for i in info.optim_inputs_func(device='cuda', dtype=DT)
            if i.params is None and _has_tensor_hyper(i.kwargs)]


# In float32, a tensor lr or betas rounds differently from a Python number:
# the Adam family hands them to torch's kernels as given. torch's fused CPU
# Adam takes them too.
TENSOR_HYPER = [
    pytest.param(name, kwargs, mode, id=f'{name}-{desc}-{mode}')
    for name, cls in GC_OPTIMIZERS.items()
    if kind(cls).algorithm in ('Adam', 'AdamW')
    for kwargs, desc in tensor_hyper_inputs(kind(cls).algorithm)
    for mode in ('single', 'foreach', 'fused')
]


@pytest.mark.parametrize('name,kwargs,mode', TENSOR_HYPER)
def test_gc_off_equals_torch_with_tensor_hyper_parameters_in_float32(
        name, kwargs, mode):
    cls = GC_OPTIMIZERS[name]
    flag = {
        'single': dict(foreach=False),
        'foreach': dict(foreach=True),
        'fused': dict(fused=True)
    }[mode]
    a = make_params(dtype=torch.float32)
    b = make_params(dtype=torch.float32)
    theirs = _builds(lambda: TORCH[kind(cls).algorithm].optim_cls(
        b.values(), **flag, **kwargs))
    ours = _builds(lambda: cls(a.values(), gc=False, **flag, **kwargs))
    if isinstance(theirs, ValueError):  # torch refuses the combination
        assert isinstance(ours, ValueError), theirs
        return
    assert not isinstance(ours, Exception), ours
    assert_same_as(ours, a, theirs, b, STEPS)


def test_there_are_tensor_hyper_parameter_inputs():
    # 8 Adam-family classes x torch's inputs with a tensor lr or betas.
    assert len(tensor_hyper_inputs('Adam')) >= 2
    assert len(TENSOR_HYPER) >= 16 * 3


@pytest.mark.parametrize('name,kwargs,foreach', CASES)
@pytest.mark.parametrize('device', DEVICES)
def test_gc_on_equals_the_reference_on_torchs_inputs(name, kwargs, foreach,
                                                     device):
    cls = GC_OPTIMIZERS[name]
    params = make_params(device=device)
    opt = _builds(lambda: cls(params.values(), foreach=foreach, **kwargs))
    if isinstance(opt, ValueError):
        # Skipped only where torch refuses the arguments too.
        theirs = _builds(lambda: TORCH[kind(cls).algorithm].optim_cls(
            make_params(device=device).values(), foreach=foreach, **kwargs))
        assert isinstance(theirs, ValueError), opt
        pytest.skip(f'torch refuses these arguments as well: {theirs}')
    hyper = {
        k: v.item() if torch.is_tensor(v) else v
        for k, v in kwargs.items()
    }
    hyper.setdefault(
        'lr', opt.defaults['lr'].item()
        if torch.is_tensor(opt.defaults['lr']) else opt.defaults['lr'])
    if kind(cls).algorithm == 'Adagrad':
        hyper = {**dict(lr_decay=0., weight_decay=0., eps=1e-10), **hyper}
    check_against_reference(opt, params, reference_for(name),
                            kind(cls).conv_only, lambda k: hyper, STEPS)


ERRORS = [
    pytest.param(name, err, id=f'{name}-{i}')
    for name, cls in GC_OPTIMIZERS.items() if kind(cls).algorithm in TORCH
    for i, err in enumerate(TORCH[kind(cls).algorithm].optim_error_inputs_func(
        device='cpu', dtype=torch.float32))
]


@pytest.mark.parametrize('name,err', ERRORS)
def test_torchs_error_inputs_raise_as_torchs(name, err):
    cls = GC_OPTIMIZERS[name]
    given = err.optimizer_error_input
    expect = pytest.warns if issubclass(err.error_type, Warning) else \
        pytest.raises
    if err.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
        with expect(err.error_type, match=err.error_regex):
            cls(given.params, **given.kwargs)
    else:
        opt = cls(given.params, **given.kwargs)
        with expect(err.error_type, match=err.error_regex):
            opt.step()
