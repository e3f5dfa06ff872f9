#!/usr/bin/env bash
# Set up everything mmdet-gc needs, from nothing, idempotently.
#
#   .venv/ (made with the machine's python3)
#     torch        the user's own if importable, else torch==${TORCH_VERSION}
#     mmcv 2.1.0   built from source with its compiled ops (RoIAlign, NMS);
#                  skipped when an mmcv whose ``mmcv.ops`` imports is there
#     mmengine, mmdet 3.3.0, pycocotools, and mmdet_gc (editable, [tests];
#                  linked into site-packages, where mim looks)
#
# The mmcv build takes about 7 minutes on 2 cores the first time; pip's
# wheel cache makes later installs take seconds. With CUDA and nvcc visible, the same
# build compiles mmcv's CUDA ops too (FORCE_CUDA=1 forces it).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
BASE_PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
MMCV_VERSION=2.1.0
STAMP="$VENV/.mmdet_gc_ready"

# Each line carries the seconds since the start: where a set-up's time goes.
say() { printf '[setup %4ss] %s\n' "$SECONDS" "$*"; }

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

if "$PY" -c 'import mmcv.ops' >/dev/null 2>&1; then
    say "mmcv $("$PY" -c 'import mmcv; print(mmcv.__version__)') with compiled ops found; keeping it"
else
    say "building mmcv==$MMCV_VERSION with its compiled ops (about 7" \
        "minutes on 2 cores the first time; pip's wheel cache makes later" \
        "runs take seconds)"
    # mmcv's setup.py needs setuptools < 70 (pkg_resources as it uses it)
    # and, built without isolation, the torch above to compile its ops.
    # torch asks for a newer setuptools, which the package install below
    # brings back: the conflict lasts only for this build, so pip is not
    # asked to report it.
    "${PIP[@]}" install -q --no-warn-conflicts 'setuptools<70' wheel ninja \
        packaging
    # torch compiles in parallel (MAX_JOBS) only where it finds ninja on
    # PATH: the venv's, where the machine has none.
    PATH="$VENV/bin:$PATH" MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
        "${PIP[@]}" install --no-build-isolation --no-warn-conflicts \
        "mmcv==$MMCV_VERSION"
    "$PY" -c 'import mmcv.ops' || {
        say "mmcv installed but mmcv.ops does not import"; exit 1; }
fi

say "installing mmengine, mmdet, pycocotools and mmdet_gc[tests]"
# setuptools back to what torch asks for (and below 81, which has no
# pkg_resources for mmengine 0.10 and mmcv 2.1), in the same step.
# One resolve for all of them (the package's own requirements included).
"${PIP[@]}" install -q 'mmengine>=0.10.0,<0.11' 'mmdet==3.3.0' pycocotools \
    'setuptools>=77.0.3,<81' -e "$ROOT[tests]"

# mim finds a package's configs at <its dist-info's folder>/<its name>/.mim
# (openmim's get_installed_path), which an editable install (PEP 660) does
# not make: the package is linked there, as `setup.py develop` made it
# importable, and the link is added to the install's RECORD so that
# `pip uninstall mmdet_gc` (or installing the wheel over it) removes it
# instead of writing through it into the checkout.
PURELIB=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
RECORD=$(echo "$PURELIB"/mmdet_gc-*.dist-info/RECORD)
if [ -e "$PURELIB/mmdet_gc" ] && [ ! -L "$PURELIB/mmdet_gc" ]; then
    say "$PURELIB/mmdet_gc is a folder no install owns: remove it and" \
        "run the set-up again"
    exit 1
fi
ln -sfn "$ROOT/mmdet_gc" "$PURELIB/mmdet_gc"
grep -qx 'mmdet_gc,,' "$RECORD" || echo 'mmdet_gc,,' >> "$RECORD"

# torchvision of this torch (torch 2.N pairs with torchvision 0.(N+15)), as
# MMDetection's install guide installs both; after the packages above, so
# that numpy is there when torch is imported to check it. Where no build that imports
# beside this torch can be had (a CPU-only torch where the registries
# serve CUDA torchvision builds only), say so and carry on: torchvision://
# weights resolve without it (mmdet_gc.checkpoint.door).
if ! "$PY" -c 'import torchvision' >/dev/null 2>&1; then
    TORCH_V=$("$PY" -c 'import torch; print(torch.__version__)')
    TV=$("$PY" -c 'import torch; v = torch.__version__.split(".")
print(f"0.{int(v[1]) + 15}.*" if v[0] == "2" else "")')
    if [ -n "$TV" ] && "${PIP[@]}" install -q --no-deps "torchvision==$TV" \
            >/dev/null 2>&1 && "$PY" -c 'import torchvision' >/dev/null 2>&1
    then
        say "torchvision $("$PY" -c 'import torchvision as t; print(t.__version__)') installed for torch $TORCH_V"
    else
        "${PIP[@]}" uninstall -q -y torchvision >/dev/null 2>&1 || true
        say "no torchvision build that imports beside torch $TORCH_V can" \
            "be installed here; carrying on without it (torchvision://" \
            "weights resolve through MMEngine's URL table)"
    fi
fi

cp "$ROOT/pyproject.toml" "$STAMP"
say "ready: $VENV (${SECONDS} s)"
