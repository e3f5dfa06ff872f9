# mmdet-gc: every target sets up what it needs first (tools/setup_env.sh is
# idempotent: a finished setup costs one file comparison).
PY := .venv/bin/python

.PHONY: setup test demo bench clean-demo

setup:
	bash tools/setup_env.sh

## The tests (what CI runs).
test: setup
	$(PY) -m pytest -q tests

## The main job: synthetic COCO, Mask R-CNN + SGD_GC train, COCO box/mask AP.
demo: setup
	$(PY) tools/demo.py

## Optimizer-step and training-iteration benchmarks.
bench: setup
	$(PY) benchmarks/bench_step.py
	$(PY) benchmarks/bench_iter.py

clean-demo:
	rm -rf work_dirs/demo data/synthetic_coco
