# RTMDet-tiny 300e + AdamW_GCC2: beyond the paper's tables, GC on the update
# of an AdamW-trained one-stage detector (Yong et al., Gradient
# Centralization, ECCV 2020, arXiv:2004.01461: the "2" variants centralize
# the update, the authors' advice for adaptive methods; "C": conv weights
# only). MMDetection's own config with its AdamW (lr 0.004, weight decay
# 0.05, norm / bias decay 0) replaced by AdamW_GCC2; nothing else changes.
_base_ = 'mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py'

custom_imports = dict(imports=['mmdet_gc'], allow_failed_imports=False)
# mmdet's EMA and pipeline-switch hooks, then plain-data checkpoints.
custom_hooks = [*_base_.custom_hooks, dict(type='PlainCheckpointHook')]

optim_wrapper = dict(optimizer=dict(type='AdamW_GCC2'))
