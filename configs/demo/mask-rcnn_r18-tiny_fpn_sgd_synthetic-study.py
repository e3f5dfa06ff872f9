# The miniature paired GC study (`make study`): the demo's Mask R-CNN on the
# synthetic shapes, shortened to fit 2 x 5 runs in 30 minutes on 2 CPU
# cores, with torch.optim.SGD as the config's own optimizer (the study's
# "base" arm; `tools/gc_study.py --gc SGD_GC` makes the GC arm with the same
# lr, momentum, weight decay and clipping). RowMeanDriftHook records how far
# each weight's row means move (Yong et al., ECCV 2020: not at all under
# SGD_GC). Validation is left to the study's tools/test.py runs.
_base_ = './mask-rcnn_r18-tiny_fpn_sgd-gc_synthetic.py'

max_iters = 250
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
val_dataloader = None
val_cfg = None
val_evaluator = None
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=20),
    dict(
        type='MultiStepLR',
        by_epoch=False,
        begin=0,
        end=max_iters,
        milestones=[int(max_iters * 0.8)],
        gamma=0.1)
]
optim_wrapper = dict(optimizer=dict(type='SGD'))
custom_hooks = [
    dict(type='RowMeanDriftHook'),
    dict(type='PlainCheckpointHook')
]
default_hooks = dict(checkpoint=dict(interval=max_iters))
