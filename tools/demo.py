"""The main job, end to end on an embedded default (no download): what
``mmdet-gc demo`` does (:mod:`mmdet_gc.cli.demo`).

    python tools/demo.py [--work-dir work_dirs/demo]
"""
from mmdet_gc.cli.demo import main

if __name__ == '__main__':
    main(prog='tools/demo.py')
