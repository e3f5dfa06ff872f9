"""Shared helpers of the tool tests: the demo config shrunk to 64 px with
deterministic sampling, running ``tools/*.py`` (in this process, as its
own run), and the configs mim finds for an installed mmdet_gc."""
import glob
import os
import os.path as osp
import subprocess
import sys
import textwrap

import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO = osp.join(ROOT, 'configs', 'demo',
                'mask-rcnn_r18-tiny_fpn_sgd-gc_synthetic.py')
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
# No PYTHONPATH: an interpreter finds mmdet_gc where it is installed.
INSTALLED_ENV = {k: v for k, v in ENV.items() if k != 'PYTHONPATH'}
CONFIGS = sorted(
    osp.relpath(p, ROOT)
    for p in glob.glob(osp.join(ROOT, 'configs', '*', '*.py')))

# What ``mim search mmdet_gc`` reads, found as openmim 0.3.9 finds it
# (``mim.utils.get_installed_path``): the folder named after the package
# (else after its top_level.txt) beside its installed distribution's
# metadata, whatever ``import mmdet_gc`` would find; then the model index
# there, each metafile it imports and each config they list.
MIM_LOOKUP = """
import os.path as osp
import warnings
import yaml
warnings.simplefilter('ignore')
from pkg_resources import get_distribution
dist = get_distribution('mmdet_gc')
path = osp.join(dist.location, 'mmdet_gc')
if not osp.exists(path):
    path = osp.join(dist.location,
                    dist.get_metadata('top_level.txt').split()[0])
mim = osp.join(path, '.mim')
for meta in yaml.safe_load(open(osp.join(mim, 'model-index.yml')))['Import']:
    for model in yaml.safe_load(open(osp.join(mim, meta)))['Models']:
        assert osp.isfile(osp.join(mim, model['Config'])), model['Config']
        print(model['Config'])
"""


def mim_configs(python: str, cwd: str) -> list:
    """The configs mim lists for the mmdet_gc that ``python`` has
    installed, run in ``cwd``; an AssertionError with mim's failure."""
    proc = subprocess.run([python, '-c', MIM_LOOKUP],
                          cwd=cwd,
                          env=INSTALLED_ENV,
                          capture_output=True,
                          text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return sorted(proc.stdout.split())


def tiny_config(tmp_path,
                data_root,
                max_iters=4,
                interval=None,
                extra='',
                base=DEMO):
    """The demo config (or ``base``, e.g. an ``mmdet_gc::`` name) at 64 px
    with deterministic sampling.

    RPN / R-CNN samplers that take every candidate and no random flip make
    an iteration a function of the data order alone, which the runner
    restores on resume.
    """
    ann = osp.join(data_root, 'annotations', 'instances_{}.json')
    text = f"""
    _base_ = {base!r}
    img_scale = (64, 64)
    model = dict(train_cfg=dict(
        rpn=dict(sampler=dict(num=100000)),
        rcnn=dict(sampler=dict(num=100000))))
    train_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
        dict(type='Resize', scale=img_scale, keep_ratio=True),
        dict(type='PackDetInputs')
    ]
    test_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=img_scale, keep_ratio=True),
        dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
        dict(type='PackDetInputs', meta_keys=('img_id', 'img_path',
             'ori_shape', 'img_shape', 'scale_factor'))
    ]
    train_dataloader = dict(batch_size=2, dataset=dict(
        data_root={data_root + '/'!r}, pipeline=train_pipeline))
    val_dataloader = dict(batch_size=2, dataset=dict(
        data_root={data_root + '/'!r}, pipeline=test_pipeline))
    test_dataloader = val_dataloader
    val_evaluator = dict(ann_file={ann.format('val')!r})
    test_evaluator = val_evaluator
    train_cfg = dict(max_iters={max_iters}, val_interval=100000)
    default_hooks = dict(
        logger=dict(interval=1),
        checkpoint=dict(interval={interval or max_iters}, max_keep_ckpts=5))
    randomness = dict(seed=0)
    """
    base = tmp_path / 'tiny_base.py'
    base.write_text(textwrap.dedent(text))
    # ``extra`` is a child config, so its dicts merge into the ones above.
    path = tmp_path / 'tiny.py'
    path.write_text("_base_ = './tiny_base.py'\n" + textwrap.dedent(extra))
    return str(path)


#: The command behind each tool script.
TOOLS = {
    'tools/train.py': 'mmdet_gc.cli.train',
    'tools/test.py': 'mmdet_gc.cli.test',
    'tools/gc_report.py': 'mmdet_gc.cli.report',
    'tools/gc_study.py': 'mmdet_gc.cli.study',
    'tools/convert_checkpoint.py': 'mmdet_gc.cli.convert',
    'tools/demo.py': 'mmdet_gc.cli.demo',
}


def run_tool(*args, ok=True, env=None, in_process=True):
    """``python *args`` from the checkout, as a finished process.

    A tool (``tools/*.py``, ``-m mmdet_gc``) runs in this process unless
    ``in_process`` is False: a fresh interpreter spends seconds importing
    mmdet, which every one of the suite's tool runs would pay again. It
    runs as in its own process (one intra-op thread, as ``ENV``'s
    ``OMP_NUM_THREADS=1``; the environment, working directory and loggers
    of the run its own), so runs compare bit for bit either way. An
    exception out of ``main`` (a traceback, where a tool must give one
    line) raises here.
    """
    if in_process and args[0] in TOOLS:
        proc = _run_in_process(TOOLS[args[0]], args[0], args[1:], env)
    elif in_process and args[:2] == ('-m', 'mmdet_gc'):
        proc = _run_in_process('mmdet_gc.cli', None, args[2:], env)
    else:
        proc = subprocess.run([sys.executable, *args],
                              cwd=ROOT,
                              env=env or ENV,
                              capture_output=True,
                              text=True,
                              timeout=600)
    if ok and proc.returncode != 0:
        raise AssertionError(f'{args} failed:\n{proc.stderr[-3000:]}')
    return proc


def _managed_classes():
    """Every class of MMEngine's ``ManagerMixin`` (named global instances:
    loggers, message hubs, visualizers, scopes)."""
    from mmengine.utils import ManagerMixin
    found, todo = [], [ManagerMixin]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if '_instance_dict' in vars(cls):
            found.append(cls)
    return found


def _run_in_process(module, prog, argv, env):
    """``module.main(argv, prog=prog)`` with ``env`` as the environment and
    the checkout as the working directory, its exit and output captured as
    a :class:`subprocess.CompletedProcess`."""
    import contextlib
    import importlib
    import io

    import torch._dynamo
    from mmengine.logging import MMLogger

    from mmdet_gc.utils.random_state import (capture_random_state,
                                             restore_random_state)
    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    cache_limit = torch._dynamo.config.cache_size_limit
    threads = torch.get_num_threads()
    # What a run's randomness settings switch, process-wide: restored.
    deterministic = (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled())
    cudnn = (torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark)
    # The run gets MMEngine's named instances of its own (a visualizer
    # named 'visualizer' left by an earlier run would write into that
    # run's work dir), and this process's random states back after it.
    managed = {cls: dict(cls._instance_dict) for cls in _managed_classes()}
    for cls in managed:
        cls._instance_dict.clear()
    rng = capture_random_state()
    unfrozen = getattr(torch.backends, '__allow_nonbracketed_mutation')
    code, message = 0, None
    try:
        torch.set_num_threads(1)
        # ENV as a subprocess gets it: the processes a tool starts (a
        # study's runs) see one thread, as everywhere in the suite.
        os.environ.clear()
        os.environ.update(env or ENV)
        os.chdir(ROOT)
        # torch's own test utilities (imported by the optimizer tests)
        # freeze the cudnn flags that MMEngine's seeding sets.
        with contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err), unfrozen():
            try:
                main = importlib.import_module(module).main
                main(list(argv), **({} if prog is None else dict(prog=prog)))
            except SystemExit as e:
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
                    message, code = e.code, 1
                else:
                    code = e.code or 0
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        torch._dynamo.config.cache_size_limit = cache_limit
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(
            deterministic[0], warn_only=deterministic[1])
        with unfrozen():
            torch.backends.cudnn.deterministic, \
                torch.backends.cudnn.benchmark = cudnn
        # The run's loggers, message hubs, visualizers and scopes go with
        # it; those from before it come back.
        for cls in _managed_classes():
            for instance in cls._instance_dict.values():
                if isinstance(instance, MMLogger):
                    for handler in instance.handlers:
                        handler.close()
            cls._instance_dict.clear()
            cls._instance_dict.update(managed.get(cls, {}))
        restore_random_state(rng)
    proc = subprocess.CompletedProcess([prog, *argv], code, out.getvalue(),
                                       err.getvalue())
    proc.exit_message = message  # what ``sys.exit`` said, whole
    return proc


def load(path):
    return torch.load(path, map_location='cpu')  # weights_only=True


def run_resume_cases(cfg, tmp_path, files):
    """Each of ``files`` (case -> path) through ``tools/train.py --resume``
    into a work dir holding a file of its own that must stay as it is and
    alone; ``{case: [error line or 'ran', work dir listing]}``."""
    work = tmp_path / 'work'
    work.mkdir()
    (work / 'iter_3.pth').write_bytes(b'precious')
    out = {}
    for case, path in files.items():
        proc = _run_in_process(
            TOOLS['tools/train.py'], 'train.py',
            [cfg, '--resume', path, '--work-dir',
             str(work)], None)
        out[case] = [proc.exit_message or 'ran', sorted(os.listdir(work))]
    for case, (_, listing) in out.items():
        assert listing == ['iter_3.pth'], case  # nothing written
    assert (work / 'iter_3.pth').read_bytes() == b'precious'
    return out
