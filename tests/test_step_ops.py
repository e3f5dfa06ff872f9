"""GC's kernel launches per step do not grow with the number of tensors.

Counted as ``benchmarks/bench_ops.py`` counts them (aten ops one
steady-state step dispatches, views and host reads left out), on the paths
a CUDA device takes, run on the CPU (``MMDET_GC_CUDA_PATHS=1``).
"""
import os.path as osp
import sys

import pytest
import torch

from mmdet_gc.optim import GC_OPTIMIZERS
from mmdet_gc.optim.gc import CUDA_PATHS_ENV

sys.path.insert(0, osp.join(osp.dirname(osp.dirname(__file__)), 'benchmarks'))
from bench_ops import HYPER, TORCH, launches, ops_per_step  # noqa: E402

from helpers import kind  # noqa: E402

#: The most launches the GC foreach step of SGD_GC or AdamW_GC may add to
#: torch's foreach step of its family, at any tensor count (measured: 8
#: and 13).
BUDGET = 16

#: One of each kind: conv, fc, bias, norm scale, conv1d, depthwise conv.
KINDS = [(8, 4, 3, 3), (6, 10), (8, ), (8, ), (4, 3, 5), (8, 1, 3, 3)]


def shapes(n):
    return [torch.Size(KINDS[i % len(KINDS)]) for i in range(n)]


@pytest.fixture(autouse=True)
def cuda_paths(monkeypatch):
    monkeypatch.setenv(CUDA_PATHS_ENV, '1')


@pytest.mark.parametrize('name', ['SGD_GC', 'AdamW_GC'])
def test_foreach_stays_within_a_budget_of_torchs(name):
    cls = GC_OPTIMIZERS[name]
    hyper = HYPER[kind(cls).algorithm]
    for n in (6, 60, 240):
        ours = launches(
            ops_per_step(lambda ps: cls(ps, foreach=True, **hyper), shapes(n)))
        theirs = launches(
            ops_per_step(
                lambda ps: TORCH[kind(cls).algorithm]
                (ps, foreach=True, **hyper), shapes(n)))
        assert ours <= theirs + BUDGET, (n, ours, theirs)


@pytest.mark.parametrize('mode', ['foreach', 'fused'])
@pytest.mark.parametrize('name', list(GC_OPTIMIZERS))
def test_launches_do_not_grow_with_the_tensor_count(name, mode):
    cls = GC_OPTIMIZERS[name]
    hyper = HYPER[kind(cls).algorithm]
    counts = [
        launches(
            ops_per_step(lambda ps: cls(ps, **{mode: True}, **hyper),
                         shapes(n))) for n in (12, 120)
    ]
    assert counts[0] == counts[1], counts
