"""Optimizer wrappers of mmdet-gc (MMEngine's ``OPTIM_WRAPPERS``)."""
from .compiled_optim_wrapper import CompiledOptimWrapper

__all__ = ['CompiledOptimWrapper']
