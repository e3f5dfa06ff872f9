"""Utilities of mmdet-gc."""
from .config import InputError, config_path, mmdet_config_path

__all__ = ['InputError', 'config_path', 'mmdet_config_path']
