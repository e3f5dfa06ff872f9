"""``python -m mmdet_gc``: the ``mmdet-gc`` command (:mod:`mmdet_gc.cli`)."""
from mmdet_gc.cli import main

main()
