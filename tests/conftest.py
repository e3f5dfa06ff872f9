"""Fixtures shared by the test modules."""
import logging
import os.path as osp
import signal

import pytest
from mmengine.logging import MMLogger

import mmdet_gc.optim.fused as fused_mod
from mmdet_gc.datasets import make_synthetic_coco


@pytest.fixture(scope='session', autouse=True)
def formatted_once():
    """MMEngine formats a config's text with yapf each time it dumps or logs
    it (half a second a time, several times a run): the tools run in this
    process (``tool_helpers.run_tool``) format each text once, the same
    text as yapf gives."""
    import functools
    import json

    import mmengine.config.config as config_module
    format_code = config_module.FormatCode

    @functools.lru_cache(maxsize=256)
    def cached(text, style):
        return format_code(text, style_config=json.loads(style))

    def formatted(text, style_config=None, **kwargs):
        if kwargs or not isinstance(style_config, dict):
            return format_code(text, style_config=style_config, **kwargs)
        return cached(text, json.dumps(style_config, sort_keys=True))

    config_module.FormatCode = formatted
    yield
    config_module.FormatCode = format_code


@pytest.fixture(scope='session')
def data_root(tmp_path_factory):
    """A tiny synthetic COCO set: 8 train and 4 val images of 64 px."""
    root = str(tmp_path_factory.mktemp('coco'))
    make_synthetic_coco(root, num_train=8, num_val=4, size=64, max_objects=2)
    return root


@pytest.fixture(scope='session')
def trained_run(tmp_path_factory, data_root):
    """One real run of ours (``tools/train.py``, 2 iterations, a checkpoint
    after each), shared by the door, security and resume tests: its config
    (``cfg``), work dir (``work``) and checkpoints (``iter_1``,
    ``iter_2``)."""
    from tool_helpers import run_tool, tiny_config
    tmp = tmp_path_factory.mktemp('trained_run')
    cfg = tiny_config(tmp, data_root, max_iters=2, interval=1)
    work = str(tmp / 'work')
    run_tool('tools/train.py', cfg, '--work-dir', work)
    return dict(
        cfg=cfg,
        work=work,
        iter_1=osp.join(work, 'iter_1.pth'),
        iter_2=osp.join(work, 'iter_2.pth'))


@pytest.fixture(scope='module')
def kernel():
    """Skip where the fused kernel cannot be built (the fallback tests
    run)."""
    reason = fused_mod.fused_unavailable_reason()
    if reason is not None:
        pytest.skip(f'the fused kernel cannot be built here: {reason}')


class _Records(logging.Handler):

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def log_lines(monkeypatch):
    """The messages logged through MMEngine's current logger (each of
    mmdet_gc.optim.fused's lines once more)."""
    monkeypatch.setattr(fused_mod, '_logged', set())
    logger = MMLogger.get_current_instance()
    handler = _Records()
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


@pytest.fixture
def deadline():
    """Fail after 60 s instead of hanging: what reads a work dir must never
    open a FIFO planted there (opening one waits for a writer forever)."""

    def expire(signum, frame):
        raise TimeoutError('still running after 60 s: a FIFO was opened?')

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)
