"""A paired GC study: arms x seeds over one config, then its report.

Same as ``mmdet-gc study`` (the code: :mod:`mmdet_gc.cli.study`, so that an
installed wheel runs it without a checkout).
"""
from mmdet_gc.cli.study import main

if __name__ == '__main__':
    main(prog='tools/gc_study.py')
