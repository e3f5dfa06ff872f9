# DINO-4scale R50 12e + GC on the update of torch's AdamW: beyond the
# paper's tables, a DETR-style detector (Yong et al., Gradient
# Centralization, ECCV 2020, arXiv:2004.01461). GCOptimWrapperConstructor
# with gc=dict(on='update') centralizes each step of every conv / fc weight
# of whatever optimizer is built, here mmdet's own AdamW (lr 1e-4, weight
# decay 1e-4, clipping 0.1, backbone lr x0.1); nothing else changes.
_base_ = 'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py'

custom_imports = dict(imports=['mmdet_gc'], allow_failed_imports=False)
# Checkpoints as plain data: stock torch.load(weights_only=True) loads them.
custom_hooks = [dict(type='PlainCheckpointHook')]

optim_wrapper = dict(
    constructor='GCOptimWrapperConstructor', gc=dict(on='update'))
