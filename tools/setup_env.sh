#!/usr/bin/env bash
# Set up everything mmdet-gc needs, from nothing, idempotently.
#
#   .venv/ (made with the machine's python3)
#     torch        the user's own if importable, else torch==${TORCH_VERSION}
#     mmcv 2.1.0   built from source with its compiled ops (RoIAlign, NMS);
#                  skipped when an mmcv whose ``mmcv.ops`` imports is there
#     mmengine, mmdet 3.3.0, pycocotools, and mmdet_gc (editable, [tests])
#
# The mmcv build takes about 10 minutes on 2 cores the first time; pip's
# wheel cache makes later installs take seconds. With CUDA and nvcc visible, the same
# build compiles mmcv's CUDA ops too (FORCE_CUDA=1 forces it).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
BASE_PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
MMCV_VERSION=2.1.0
STAMP="$VENV/.mmdet_gc_ready"

say() { printf '[setup] %s\n' "$*"; }

# A finished setup whose inputs have not changed costs one `cmp`.
if [ -f "$STAMP" ] && cmp -s "$STAMP" "$ROOT/pyproject.toml"; then
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    # Reuse a torch the machine already has (e.g. a CUDA build) instead of
    # downloading another one.
    if "$BASE_PYTHON" -c 'import torch' >/dev/null 2>&1; then
        say "creating $VENV (reusing the base interpreter's torch)"
        "$BASE_PYTHON" -m venv --system-site-packages "$VENV"
    else
        say "creating $VENV"
        "$BASE_PYTHON" -m venv "$VENV"
    fi
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

if "$PY" -c 'import torch' >/dev/null 2>&1; then
    say "torch $("$PY" -c 'import torch; print(torch.__version__)') found; keeping it"
else
    say "installing torch==$TORCH_VERSION"
    "${PIP[@]}" install "torch==$TORCH_VERSION"
fi

# mmcv's setup.py needs setuptools < 70 (pkg_resources as it uses it) and,
# built without isolation, the torch above to compile its ops. The package
# install below moves setuptools back to what torch and mmengine accept.
"${PIP[@]}" install -q 'setuptools<70' wheel ninja packaging

if "$PY" -c 'import mmcv.ops' >/dev/null 2>&1; then
    say "mmcv $("$PY" -c 'import mmcv; print(mmcv.__version__)') with compiled ops found; keeping it"
else
    say "building mmcv==$MMCV_VERSION with its compiled ops (about 10" \
        "minutes on 2 cores the first time; pip's wheel cache makes later" \
        "runs take seconds)"
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
        "${PIP[@]}" install --no-build-isolation "mmcv==$MMCV_VERSION"
    "$PY" -c 'import mmcv.ops' || {
        say "mmcv installed but mmcv.ops does not import"; exit 1; }
fi

say "installing mmengine, mmdet, pycocotools and mmdet_gc[tests]"
"${PIP[@]}" install -q 'mmengine>=0.10.0,<0.11' 'mmdet==3.3.0' pycocotools
"${PIP[@]}" install -q -e "$ROOT[tests]"

cp "$ROOT/pyproject.toml" "$STAMP"
say "ready: $VENV"
