"""Rewrite a trusted MMEngine checkpoint into mmdet-gc's plain form, once.

Same as ``mmdet-gc convert`` (the code: :mod:`mmdet_gc.cli.convert`, so that an
installed wheel runs it without a checkout).
"""
from mmdet_gc.cli.convert import main

if __name__ == '__main__':
    main(prog='tools/convert_checkpoint.py')
