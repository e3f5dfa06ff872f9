"""No step waits for the device: no host read of a tensor's value and no
copy from the device to the host in any step path of any GC optimizer.

Every step runs under a dispatch mode that fails on
``aten._local_scalar_dense`` (``.item()``, ``bool(t)``, a Python branch
on a value, ``.tolist()``) and on copies to the CPU from another device.
The one exception is torch's own: a non-capturable step count (Adam,
Adagrad: ``state['step']``, a CPU tensor) is read on the host every step,
as torch.optim reads it; on CUDA it lives on the CPU, so the read waits
for nothing.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mmdet_gc.optim import GC_OPTIMIZERS
from mmdet_gc.optim.gc import CUDA_PATHS_ENV

from helpers import DEVICES, kind, make_params, set_grads

HYPER = {
    'SGD': dict(lr=0.02, momentum=0.9, weight_decay=1e-4, nesterov=True),
    'SGDW': dict(lr=0.02, momentum=0.9, weight_decay=1e-4),
    'Adam': dict(lr=1e-3, weight_decay=1e-4, amsgrad=True),
    'AdamW': dict(lr=1e-3, weight_decay=0.05),
    'Adagrad': dict(lr=0.01, weight_decay=1e-4, lr_decay=1e-3),
}
MODES = [dict(foreach=False), dict(foreach=True), dict(fused=True)]


class NoHostSync(TorchDispatchMode):
    """Fails on a host read of any tensor but ``allowed`` (torch's
    non-capturable step counts) and on a copy to the CPU from another
    device."""

    def __init__(self, optimizer):
        super().__init__()
        self.optimizer = optimizer

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default:
            steps = [s.get('step') for s in self.optimizer.state.values()]
            assert any(args[0] is t for t in steps), (
                f'host read of a {tuple(args[0].shape)} '
                f'{args[0].dtype} tensor on {args[0].device}')
        out = func(*args, **kwargs)
        sources = [a for a in args if isinstance(a, torch.Tensor)]
        results = out if isinstance(out, (list, tuple)) else [out]
        if any(
                isinstance(r, torch.Tensor) and r.device.type == 'cpu'
                for r in results) and any(
                    s.device.type not in ('cpu', 'meta') for s in sources):
            raise AssertionError(f'{func} copies to the host')
        return out


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('cuda_paths', ['0', '1'])
@pytest.mark.parametrize('mode', MODES, ids=['single', 'foreach', 'fused'])
@pytest.mark.parametrize('name', list(GC_OPTIMIZERS))
def test_no_step_reads_the_device(monkeypatch, device, cuda_paths, mode, name):
    monkeypatch.setenv(CUDA_PATHS_ENV, cuda_paths)
    cls = GC_OPTIMIZERS[name]
    params = make_params(device=device)
    opt = cls(params.values(), **mode, **HYPER[kind(cls).algorithm])
    for step in range(3):
        set_grads(params, step)
        with NoHostSync(opt):
            opt.step()


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize(
    'name',
    [n for n, c in GC_OPTIMIZERS.items() if c.amp_scaling_in_fused_step])
def test_no_fused_step_under_a_grad_scaler_reads_the_device(device, name):
    """A GradScaler hands the fused step its scale and inf flag, which the
    step uses on the device (an inf gradient included)."""
    cls = GC_OPTIMIZERS[name]
    params = make_params(device=device)
    opt = cls(params.values(), fused=True, **HYPER[kind(cls).algorithm])
    opt.grad_scale = torch.tensor(1024., device=device)
    for step, inf in enumerate((0., 0., 1., 0.)):
        set_grads(params, step)
        opt.found_inf = torch.tensor(inf, device=device)
        with NoHostSync(opt):
            opt.step()
