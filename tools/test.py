"""Test a detector checkpoint with MMDetection 3.x: COCO box / mask AP.

Same as ``mmdet-gc test`` (the code: :mod:`mmdet_gc.cli.test`, so that an
installed wheel runs it without a checkout).
"""
from mmdet_gc.cli.test import main

if __name__ == '__main__':
    main(prog='tools/test.py')
