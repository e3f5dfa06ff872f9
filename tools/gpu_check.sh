#!/usr/bin/env bash
# The GPU check: what only a CUDA device can run, in at most 10 minutes.
#
#   bash tools/gpu_check.sh              # on a machine with a CUDA GPU
#   bash tools/gpu_check.sh --cpu-smoke  # anywhere: every step, CPU-sized
#
# 1. The tests that take a CUDA device (pytest -m cuda: the optimizers
#    against the float64 reference from the maths and against torch.optim,
#    fused=True dispatch, AMP with a CUDA GradScaler), then the tools'
#    training tests (MMEngine trains on the GPU when there is one: train +
#    COCO test, exact resume, --amp).
# 2. benchmarks/bench_step.py on CUDA: GC foreach, fused (torch's fused
#    kernels on centralized gradients) and compiled steps against torch's
#    foreach and fused steps over Mask R-CNN R50-FPN's parameters.
# 3. benchmarks/bench_iter.py on CUDA: 50 Mask R-CNN R50-FPN iterations
#    (800 px, batch 2) with SGD and with SGD_GC, side by side.
# 4. benchmarks/bench_ops.py on CUDA: kernel launches per step of every
#    optimizer beside torch's, at Mask R-CNN's tensors and twice as many.
#
# Needs an environment with a CUDA torch, mmcv with its ops, mmdet 3.3 and
# this package: PYTHON=/path/to/python (default .venv/bin/python, else
# python3). Figures go to stdout and to $GPU_CHECK_OUT (default
# work_dirs/gpu_check;
# relative paths are taken from the repository's root). Each step has a
# time limit, 570 s in all; without a CUDA device, or with an mmcv whose
# ops do not run on CUDA, it stops in one line before any work.
# --cpu-smoke runs the same steps on the CPU, sized to a minute: the test
# suite runs it (tests/test_gpu_check.py), so the check cannot rot unseen.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode=gpu
case "${1:-}" in
'') ;;
--cpu-smoke) mode=cpu ;;
*)
    echo "gpu_check: unknown argument '$1' (none, or --cpu-smoke)" >&2
    exit 2
    ;;
esac
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
OUT=${GPU_CHECK_OUT:-work_dirs/gpu_check}

if [ "$mode" = gpu ]; then
    # Before any work: a CUDA device, or one line that says why not.
    "$PY" - <<'EOF' || exit 2
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(f'gpu_check: no CUDA device (torch {torch.__version__}, '
             f'CUDA build: {torch.version.cuda or "none"}); '
             '--cpu-smoke runs the steps on the CPU')
# Training needs mmcv's ops built for CUDA (a CPU build imports fine).
try:
    from mmcv.ops import nms
    boxes = torch.tensor([[0., 0., 1., 1.]], device='cuda')
    nms(boxes, torch.ones(1, device='cuda'), 0.5)
except Exception as e:
    first = (str(e).strip().splitlines() or [''])[0][:160]
    sys.exit('gpu_check: mmcv\'s ops do not run on CUDA here (build mmcv '
             f'with FORCE_CUDA=1): {type(e).__name__}: {first}')
print(f'gpu_check: {torch.cuda.get_device_name()}, torch {torch.__version__}'
      f', CUDA {torch.version.cuda}', flush=True)
EOF
    device=cuda
    tests=(-m cuda)
    step_args=(--steps 50 --warmup 5)
    iter_args=(--iters 50 --warmup 5 --size 800 --batch 2)
    ops_args=(--device cuda)
    # Seconds per step, 570 in all: the check stays within 10 minutes.
    limits=(190 140 90 110 40)
else
    device=cpu
    # Collected, not run: on the CPU every cuda case is a skip.
    tests=(-m cuda --collect-only -q)
    step_args=(--steps 1 --warmup 0 --rows SGD --design round-robin)
    iter_args=(--iters 1 --warmup 0 --size 64 --batch 1)
    ops_args=(--device cpu)
    limits=(300 0 300 300 120)
fi
training=(
    tests/test_tools.py::test_train_then_test_reports_an_ap_only_learning_reaches
    tests/test_tools.py::test_resume_continues_exactly
    tests/test_tools.py::test_amp
)
mkdir -p "$OUT"
: >"$OUT/summary.txt"
start=$SECONDS
failed=()
n=0
# Every step runs, a failed one is named at the end (exit 1): one run on a
# lent GPU gives every figure it can.
step() {
    local what=$1 log=$2 limit=${limits[$n]}
    shift 2
    n=$((n + 1))
    echo "== gpu_check [$((SECONDS - start)) s]: $what (at most $limit s)" |
        tee -a "$OUT/summary.txt"
    # pipefail: the status is the command's (124: over its time).
    if ! timeout "$limit" "$@" 2>&1 | tee "$OUT/$log"; then
        failed+=("$what")
        echo "== gpu_check: FAILED: $what (see $OUT/$log)" |
            tee -a "$OUT/summary.txt"
    fi
}

# Without a CUDA device the suite does not collect the CUDA cases unless
# asked to (here, to list them).
step "tests that take a CUDA device (pytest ${tests[*]})" tests.txt \
    env MMDET_GC_COLLECT_CUDA=1 "$PY" -m pytest -q -p no:cacheprovider \
    "${tests[@]}" tests
if [ "$mode" = gpu ]; then
    step "training tests of the tools" training.txt \
        "$PY" -m pytest -q -p no:cacheprovider "${training[@]}"
else
    n=$((n + 1))
fi
step "optimizer step on $device (benchmarks/bench_step.py)" bench_step.txt \
    "$PY" benchmarks/bench_step.py --device "$device" "${step_args[@]}"
step "Mask R-CNN R50-FPN iterations, SGD vs SGD_GC (bench_iter.py)" \
    bench_iter.txt \
    "$PY" benchmarks/bench_iter.py --device "$device" "${iter_args[@]}"
step "kernel launches per step (benchmarks/bench_ops.py)" bench_ops.txt \
    "$PY" benchmarks/bench_ops.py "${ops_args[@]}"
echo "== gpu_check: done in $((SECONDS - start)) s; figures in $OUT" |
    tee -a "$OUT/summary.txt"
if [ ${#failed[@]} -gt 0 ]; then
    printf 'gpu_check: %d step(s) failed: %s\n' "${#failed[@]}" \
        "$(IFS=';'; echo "${failed[*]}")" >&2
    exit 1
fi
