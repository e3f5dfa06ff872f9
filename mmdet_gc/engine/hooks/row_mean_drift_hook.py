"""The row means of the weights under GC: recorded when training starts,
their drift written when it ends.

Yong et al., ECCV 2020 (arXiv:2004.01461), Sec. 3: with GC the gradient of
every centralized weight has zero mean over each output row, so under SGD
the row means of the weights never move from their initial values.
:class:`RowMeanDriftHook` measures that on a trained detector
(``row_mean_drift.json`` in the work dir, read by the GC studies).
"""
import json
import os.path as osp
from typing import Dict, Iterable, List, Tuple

import torch
from mmengine.dist import master_only
from mmengine.hooks import Hook

from ...optim.gc import row_mean

#: Where the hook keeps the row means of the first training start.
INIT_FILE = 'row_means_init.pth'

#: What it writes at the end of training.
DRIFT_FILE = 'row_mean_drift.json'


def row_means(
        named: Iterable[Tuple[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """The float64 row means (:func:`~mmdet_gc.optim.gc.row_mean`) of the
    ``(name, weight)`` pairs, by name: the snapshot both GC hooks take."""
    return {
        name: row_mean(p.detach(), torch.float64, keepdim=False)
        for name, p in named
    }


def drifts(start: Dict[str, torch.Tensor],
           now: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """Per name in both snapshots, the largest ``|mean_now - mean_start|``
    over its rows."""
    return {
        name: float((now[name] - start[name]).abs().max())
        for name in now if name in start
    }


def conv_fc_weights(model: torch.nn.Module) -> List[Tuple[str, torch.Tensor]]:
    """``(name, weight)`` of every weight with ``ndim > 1`` (conv and
    fc)."""
    return [(n, p) for n, p in model.named_parameters() if p.dim() > 1]


class RowMeanDriftHook(Hook):
    """Write how far each weight's row means moved during training.

    The row means at the first start of training are kept in the work dir
    (``row_means_init.pth``, plain tensors), so a resumed run still measures
    from the start. At the end, ``row_mean_drift.json`` holds per layer the
    largest ``|mean_now - mean_init|`` over its rows, and its ``ndim``
    (conv weights are 4-D, fc weights 2-D), for the report.
    """

    priority = 'LOW'

    def _model(self, runner):
        model = runner.model
        return getattr(model, 'module', model)

    @master_only
    def before_train(self, runner) -> None:
        path = osp.join(runner.work_dir, INIT_FILE)
        if runner.iter == 0 or not osp.isfile(path):
            torch.save(row_means(conv_fc_weights(self._model(runner))), path)

    @master_only
    def after_train(self, runner) -> None:
        init = torch.load(
            osp.join(runner.work_dir, INIT_FILE), map_location='cpu')
        params = dict(self._model(runner).named_parameters())
        moved = drifts(init, row_means(conv_fc_weights(self._model(runner))))
        drift = {
            name: dict(max_drift=value, ndim=params[name].dim())
            for name, value in moved.items()
        }
        with open(osp.join(runner.work_dir, DRIFT_FILE), 'w') as f:
            json.dump(dict(iter=runner.iter, layers=drift), f, indent=1)
