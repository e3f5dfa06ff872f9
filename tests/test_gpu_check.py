"""The CPU side of ``tools/gpu_check.sh``: it refuses to start without a
CUDA device, in one line and before any work, and every step it runs on a
GPU runs here CPU-sized (``--cpu-smoke``): the selection of CUDA test cases
(collected: each is a skip without a device), the step benchmark, the
Mask R-CNN iteration benchmark, SGD against SGD_GC, and the launches per
step."""
import os
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SCRIPT = osp.join(ROOT, 'tools', 'gpu_check.sh')
#: The test modules whose cases take a CUDA device.
CUDA_MODULES = ('test_amp', 'test_conformance', 'test_family', 'test_sgd_gc',
                'test_torch_inputs', 'test_update_gc', 'test_torch_fused',
                'test_host_syncs', 'test_low_precision')


def run(*args, out):
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_OUT=str(out))
    return subprocess.run(['bash', SCRIPT, *args],
                          capture_output=True,
                          text=True,
                          env=env,
                          timeout=600)


@pytest.mark.skipif(
    torch.cuda.is_available(), reason='a CUDA device is present')
def test_without_a_gpu_it_stops_in_one_line_before_any_work(tmp_path):
    out = tmp_path / 'out'
    proc = run(out=out)
    assert proc.returncode == 2
    assert proc.stdout == ''
    assert proc.stderr.startswith('gpu_check: no CUDA device')
    assert proc.stderr.count('\n') == 1
    assert not out.exists()


def test_an_unknown_argument_is_refused(tmp_path):
    proc = run('--gpu', out=tmp_path / 'out')
    assert proc.returncode == 2
    assert "unknown argument '--gpu'" in proc.stderr


def test_every_step_runs_cpu_sized(tmp_path):
    out = tmp_path / 'out'
    proc = run('--cpu-smoke', out=out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = (out / 'summary.txt').read_text()
    assert 'FAILED' not in steps and steps.count('== gpu_check') == 5
    # The CUDA cases of every numerics module are selected.
    tests = (out / 'tests.txt').read_text()
    counts = dict(re.findall(r'^tests/(\w+)\.py: (\d+)$', tests, re.M))
    assert set(CUDA_MODULES) <= set(counts), counts
    assert sum(map(int, counts.values())) > 1000
    # The benchmarks print their tables and ratios.
    step = (out / 'bench_step.txt').read_text()
    assert re.search(r'SGD_GC \(foreach\): [\d.]+x torch\.optim\.SGD', step)
    rows = re.findall(
        r'^\| (SGD|SGD_GC) \| [\d.]+ \| [\d.]+ \| [\d.]+ \| '
        r'[\d.]+ \|$', (out / 'bench_iter.txt').read_text(), re.M)
    assert rows == ['SGD', 'SGD_GC']
    ops = (out / 'bench_ops.txt').read_text()
    assert re.search(r'^SGD_GC \(foreach\) +\d+ +\d+ +\d+$', ops, re.M)


def test_the_training_tests_it_runs_exist():
    """The tests gpu_check.sh names on a GPU are the suite's own (a renamed
    test would otherwise be missed only on a lent GPU)."""
    text = open(SCRIPT).read()
    block = re.search(r'^training=\((.*?)^\)', text, re.S | re.M).group(1)
    named = re.findall(r'(tests/\w+\.py)::(\w+)', block)
    assert len(named) == 3
    for path, name in named:
        assert re.search(rf'^def {name}\(', open(osp.join(ROOT, path)).read(),
                         re.M), f'{path}::{name}'
