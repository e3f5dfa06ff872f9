"""Compare work dirs (e.g. baseline vs GC): COCO table and curves.

Same as ``mmdet-gc report`` (the code: :mod:`mmdet_gc.cli.report`, so that an
installed wheel runs it without a checkout).
"""
from mmdet_gc.cli.report import main

if __name__ == '__main__':
    main(prog='tools/gc_report.py')
