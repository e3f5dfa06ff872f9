# Mask R-CNN R50-FPN, GN + Weight Standardization everywhere, 2x + SGD_GC:
# Yong et al., Gradient Centralization, ECCV 2020 (arXiv:2004.01461),
# row 'R50 GN+WS'.
#
# MMDetection's gn+ws/mask-rcnn_r50_fpn_gn-ws-all_2x_coco.py, restated:
# mmengine's 'mmdet::' prefix cannot address a folder with '+' in its name,
# so its changes are repeated here on top of the R50 1x config it inherits
# itself (tests/test_configs.py checks that the result equals mmdet's file,
# optimizer aside).
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mmdet_gc'], allow_failed_imports=False)
# Checkpoints as plain data: stock torch.load(weights_only=True) loads them.
custom_hooks = [dict(type='PlainCheckpointHook')]

conv_cfg = dict(type='ConvWS')
norm_cfg = dict(type='GN', num_groups=32, requires_grad=True)
model = dict(
    backbone=dict(
        conv_cfg=conv_cfg,
        norm_cfg=norm_cfg,
        init_cfg=dict(
            type='Pretrained', checkpoint='open-mmlab://jhu/resnet50_gn_ws')),
    neck=dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg),
    roi_head=dict(
        bbox_head=dict(
            type='Shared4Conv1FCBBoxHead',
            conv_out_channels=256,
            conv_cfg=conv_cfg,
            norm_cfg=norm_cfg),
        mask_head=dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg)))

max_epochs = 24
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(
        type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_epochs,
        by_epoch=True,
        milestones=[16, 22],
        gamma=0.1)
]

optim_wrapper = dict(
    optimizer=dict(type='SGD_GC', lr=0.02, momentum=0.9, weight_decay=0.0001))
