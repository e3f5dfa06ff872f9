"""Where mmdet-gc's configs are, in a checkout or an installed wheel, and
the error bad user input raises.
"""
import os
import os.path as osp


class InputError(ValueError):
    """Bad user input (config, paths, flags), found before any work.

    Args:
        message (str): What is wrong: one line, or with ``lines`` one line
            per finding.
        lines (bool): Print the message's lines as they are.
    """

    def __init__(self, message: str, lines: bool = False) -> None:
        super().__init__(message)
        self.lines = lines


def _mim_config(root: str, owner: str, name: str) -> str:
    """``root/.mim/configs/name``, where OpenMMLab packages keep the configs
    that ``package::name`` in a ``_base_`` resolves to; ``name`` must be a
    relative path that stays in that folder."""
    configs = osp.join(root, '.mim', 'configs')
    if not isinstance(name, str):
        raise InputError(f'a config name is a str such as '
                         f"'mask_rcnn/NAME.py', not {type(name).__name__}")
    path = osp.normpath(osp.join(configs, name))
    if osp.isabs(name) or not path.startswith(osp.normpath(configs) + os.sep) \
            or not path.endswith('.py') or not osp.isfile(path):
        raise InputError(f'{owner} has no config {name!r} (looked in '
                         f'{configs})')
    return path


def mmdet_config_path(name: str) -> str:
    """Path of one of MMDetection's own configs, e.g.
    ``'mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'`` (what ``mmdet::`` names in
    a ``_base_``)."""
    import warnings

    from mmengine.utils import get_installed_path
    with warnings.catch_warnings():
        # MMEngine looks the package up with setuptools' pkg_resources,
        # which warns that it is deprecated: MMEngine's, not the user's.
        warnings.filterwarnings('ignore', message='pkg_resources')
        root = get_installed_path('mmdet')
    return _mim_config(root, 'MMDetection', name)


def config_path(name: str) -> str:
    """Path of one of mmdet-gc's configs, in a checkout or an installed
    wheel alike.

    A config of your own inherits one as ``_base_ =
    'mmdet_gc::mask_rcnn/mask-rcnn_r50_fpn_sgd-gc_1x_coco.py'``.

    Args:
        name (str): The config's path under ``configs/``, e.g.
            ``'mask_rcnn/mask-rcnn_r50_fpn_sgd-gc_1x_coco.py'``.

    Returns:
        str: Its absolute path.

    Raises:
        InputError: mmdet-gc has no such config.
    """
    return _mim_config(
        osp.dirname(osp.dirname(osp.abspath(__file__))), 'mmdet-gc', name)
