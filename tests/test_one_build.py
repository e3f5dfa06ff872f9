"""One build: ``tools/train.py`` builds the config's model to check the
config and every checkpoint against it, and MMEngine's runner then takes
that model instead of building it again, with the random states its own
build would have left: the run is the one MMEngine would have started."""
import copy

import torch
from mmengine.config import Config
from mmengine.runner import Runner

from mmdet_gc.cli.build_checks import build_run_or_fail
from mmdet_gc.cli.launch import build_runner
from mmdet_gc.utils.random_state import capture_random_state

from tool_helpers import tiny_config


def _same_states(a, b):
    """Nested dicts / lists of tensors and numbers, equal bit for bit."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _same_states(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same_states(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b


def test_the_runner_takes_the_built_model_as_its_own(tmp_path, data_root):
    cfg = Config.fromfile(
        tiny_config(tmp_path, data_root, extra='randomness = dict(seed=7)'))
    stock_cfg, ours_cfg = copy.deepcopy(cfg), copy.deepcopy(cfg)
    stock_cfg.work_dir = str(tmp_path / 'stock')
    ours_cfg.work_dir = str(tmp_path / 'ours')

    stock = Runner.from_cfg(stock_cfg)
    stock_state = capture_random_state()
    stock_weights = {k: v.clone() for k, v in stock.model.state_dict().items()}

    torch.manual_seed(12345)  # whatever the process drew before
    run = build_run_or_fail(ours_cfg, for_runner=True)
    ours = build_runner(ours_cfg, run)
    ours_state = capture_random_state()

    assert ours.model is run.model  # one build
    assert ours.seed == stock.seed == 7
    _same_states(ours_state, stock_state)
    weights = ours.model.state_dict()
    assert weights.keys() == stock_weights.keys()
    for k, v in stock_weights.items():
        assert torch.equal(weights[k], v), k
