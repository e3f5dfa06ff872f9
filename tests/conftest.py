"""Fixtures shared by the test modules."""
import pytest

from mmdet_gc.data import make_synthetic_coco


@pytest.fixture(scope='session')
def data_root(tmp_path_factory):
    """A tiny synthetic COCO set: 8 train and 4 val images of 64 px."""
    root = str(tmp_path_factory.mktemp('coco'))
    make_synthetic_coco(root, num_train=8, num_val=4, size=64, max_objects=2)
    return root
