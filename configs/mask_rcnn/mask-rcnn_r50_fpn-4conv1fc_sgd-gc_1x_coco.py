# Mask R-CNN R50-FPN 1x with the 4conv1fc box head + SGD_GC:
# Yong et al., Gradient Centralization, ECCV 2020 (arXiv:2004.01461),
# row 'R50 (4conv1fc)'. MMDetection 3.3 has no config for this row: this is
# its R50 1x config with the box head replaced by its own
# Shared4Conv1FCBBoxHead (four 3x3 convs, then one fc), and SGD replaced by
# SGD_GC (lr 0.02, momentum 0.9, weight decay 1e-4). The baseline is this
# file with `--cfg-options optim_wrapper.optimizer.type=SGD`.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mmdet_gc'], allow_failed_imports=False)
# Checkpoints as plain data: stock torch.load(weights_only=True) loads them.
custom_hooks = [dict(type='PlainCheckpointHook')]

model = dict(
    roi_head=dict(
        bbox_head=dict(type='Shared4Conv1FCBBoxHead', conv_out_channels=256)))

optim_wrapper = dict(
    optimizer=dict(type='SGD_GC', lr=0.02, momentum=0.9, weight_decay=0.0001))
