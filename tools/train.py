"""Train a detector with MMDetection 3.x (mmdet's flags, plus --gc NAME).

Same as ``mmdet-gc train`` (the code: :mod:`mmdet_gc.cli.train`, so that an
installed wheel runs it without a checkout).
"""
from mmdet_gc.cli.train import main

if __name__ == '__main__':
    main(prog='tools/train.py')
