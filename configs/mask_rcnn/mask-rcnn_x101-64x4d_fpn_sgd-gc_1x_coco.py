# Mask R-CNN X101-64x4d-FPN 1x + SGD_GC:
# Yong et al., Gradient Centralization, ECCV 2020 (arXiv:2004.01461),
# Table 'Mask R-CNN'.
# MMDetection's own config with its SGD optimizer (lr 0.02, momentum 0.9,
# weight decay 1e-4) replaced by SGD_GC; nothing else changes.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_x101-64x4d_fpn_1x_coco.py'

custom_imports = dict(imports=['mmdet_gc'], allow_failed_imports=False)
# Checkpoints as plain data: stock torch.load(weights_only=True) loads them.
custom_hooks = [dict(type='PlainCheckpointHook')]

optim_wrapper = dict(
    optimizer=dict(type='SGD_GC', lr=0.02, momentum=0.9, weight_decay=0.0001))
