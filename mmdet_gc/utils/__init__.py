"""Utilities of mmdet-gc (Yong et al., ECCV 2020, arXiv:2004.01461)."""
from .config import InputError, config_path, mmdet_config_path

__all__ = ['InputError', 'config_path', 'mmdet_config_path']
