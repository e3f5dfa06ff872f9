# mmdet-gc: every target sets up what it needs first (tools/setup_env.sh is
# idempotent: a finished setup costs one file comparison).
PY := .venv/bin/python

.PHONY: setup test demo study study-lr bench gpu-check clean-demo

setup:
	bash tools/setup_env.sh

## The tests (what CI runs).
test: setup
	$(PY) -m pytest -q tests

## The main job: synthetic COCO, Mask R-CNN + SGD_GC train, COCO box/mask AP.
demo: setup
	$(PY) tools/demo.py

## The miniature paired study: SGD vs SGD_GC x 5 seeds on the synthetic
## data, evaluated plain and under brightness offsets; report in
## work_dirs/study/report.{md,json,png}.
STUDY_CFG := configs/demo/mask-rcnn_r18-tiny_fpn_sgd_synthetic-study.py
study: setup
	test -f data/synthetic_coco/annotations/instances_val.json || \
		$(PY) tools/make_synthetic_coco.py data/synthetic_coco
	$(PY) tools/gc_study.py $(STUDY_CFG) --gc SGD_GC --seeds 0 1 2 3 4 \
		--shifts -40 0 40 --threshold 0.05 --work-dir work_dirs/study

## The learning-rate sweep: the same study's arms at lr 0.01, 0.02 and 0.08
## too (the config's own 0.04 is `make study`'s runs, reused), 5 seeds
## each; report in work_dirs/study/report.{md,json,png} and report_lr.png.
## 40 runs of about 1.4 minutes on 2 CPU cores: about 55 minutes from
## nothing, 37 after `make study` (measured: docs/en/studies.md).
study-lr: setup
	test -f data/synthetic_coco/annotations/instances_val.json || \
		$(PY) tools/make_synthetic_coco.py data/synthetic_coco
	$(PY) tools/gc_study.py $(STUDY_CFG) --gc SGD_GC --seeds 0 1 2 3 4 \
		--lr 0.01 0.02 0.08 --shifts 0 --threshold 0.05 \
		--work-dir work_dirs/study

## Optimizer-step and training-iteration benchmarks.
bench: setup
	$(PY) benchmarks/bench_step.py
	$(PY) benchmarks/bench_iter.py

## What only a CUDA GPU can run (tests, benchmarks; at most 10 minutes), in
## an environment with a CUDA torch and mmcv (PYTHON=...; no set-up here).
gpu-check:
	bash tools/gpu_check.sh

clean-demo:
	rm -rf work_dirs/demo data/synthetic_coco
