"""Config preparation and input checks shared by ``tools/train.py`` and
``tools/test.py``.

Every check here runs before MMEngine's ``Runner`` is built, so bad input
stops the tool with a message that names the problem before any work
directory, log or checkpoint is touched.
"""
import argparse
import os
import os.path as osp
import sys
from typing import Any, Callable, Iterator, List, Optional, Tuple

from mmengine.config import Config, ConfigDict, DictAction

from ..optim import GC_OPTIMIZERS
from ..utils import InputError
from ..utils.messages import first_line, one_line


def _gc_names() -> str:
    return ', '.join(GC_OPTIMIZERS)


def apply_gc(cfg: Config, name: str) -> None:
    """Switch ``cfg``'s optimizer to the GC optimizer ``name`` in place.

    Every other optimizer argument (lr, momentum, weight decay, ...) and the
    rest of ``optim_wrapper`` (clipping, ``paramwise_cfg``) stay as they
    are, so a run differs from its baseline in GC only. ``fused=True``
    stays for the SGD and Adam families (:mod:`mmdet_gc.optim.fused`) and
    becomes ``foreach=True`` for the others (said on stderr).

    Args:
        cfg (Config): A training config with ``optim_wrapper.optimizer``.
        name (str): A GC optimizer, e.g. ``'SGD_GC'``.

    Raises:
        InputError: Unknown ``name``, a config without an optimizer, or an
            optimizer of another algorithm (e.g. ``SGD_GC`` over AdamW).
    """
    if name not in GC_OPTIMIZERS:
        raise InputError(f'unknown GC optimizer {name!r} for --gc; '
                         f'choose one of: {_gc_names()}')
    optimizer = cfg.get('optim_wrapper', {}).get('optimizer')
    if optimizer is None:
        raise InputError('--gc needs a config with optim_wrapper.optimizer')
    current = optimizer.get('type')
    current = getattr(current, '__name__', current)
    base = GC_OPTIMIZERS[name].base_algorithm
    known = GC_OPTIMIZERS.get(current)
    current_base = known.base_algorithm if known else current
    if current_base != base:
        raise InputError(
            f'--gc {name} is {base} with GC, but the config trains with '
            f'{current}; pick the GC optimizer of the same algorithm so '
            'that its arguments carry over')
    # Every GC optimizer has a fused step: a config's fused=True carries
    # over.
    optimizer['type'] = name


def check_optimizer(cfg: Config) -> None:
    """Fail early when the config's optimizer type cannot be built."""
    from mmdet.registry import OPTIMIZERS
    optimizer = cfg.get('optim_wrapper', {}).get('optimizer')
    if optimizer is None:
        return
    name = optimizer.get('type')
    if not isinstance(name, str):
        return
    if OPTIMIZERS.get(name) is None:
        raise InputError(
            f'unknown optimizer type {name!r} in optim_wrapper.optimizer; '
            f'the GC optimizers are: {_gc_names()} (and every '
            'torch.optim optimizer). If the name comes from another '
            'package, add it to custom_imports')


def _datasets(dataset: dict) -> Iterator[dict]:
    """The leaf datasets of a dataset config (through mmdet's wrappers)."""
    if 'datasets' in dataset:
        for child in dataset['datasets']:
            yield from _datasets(child)
    elif 'dataset' in dataset:
        yield from _datasets(dataset['dataset'])
    else:
        yield dataset


def _is_local(path: str) -> bool:
    return '://' not in path


def dataset_paths(cfg: Config,
                  loaders: Tuple[str, ...]) -> List[Tuple[str, str, str]]:
    """``(loader, what, path)`` for every annotation file and image folder.

    Args:
        cfg (Config): The config.
        loaders (tuple[str]): Dataloader keys, e.g. ``('train_dataloader',
            'val_dataloader')``.
    """
    out = []
    for key in loaders:
        loader = cfg.get(key)
        if not loader:
            continue
        for ds in _datasets(loader['dataset']):
            root = ds.get('data_root') or ''
            ann = ds.get('ann_file')
            if ann:
                out.append((key, 'annotation file', osp.join(root, ann)))
            prefix = ds.get('data_prefix') or {}
            img = prefix.get('img', prefix.get('img_path'))
            if img is not None:
                out.append((key, 'image folder', osp.join(root, img)))
    for key in ('val_evaluator', 'test_evaluator'):
        metrics = cfg.get(key) or []
        for metric in metrics if isinstance(metrics, list) else [metrics]:
            ann = metric.get('ann_file')
            if key.split('_')[0] + '_dataloader' in loaders and ann:
                out.append((key, 'annotation file', ann))
    return out


def check_dataset_paths(cfg: Config, loaders: Tuple[str, ...]) -> None:
    """Fail early, naming each missing annotation file or image folder."""
    missing = []
    for key, what, path in dataset_paths(cfg, loaders):
        if not _is_local(path):
            continue
        exists = osp.isfile(path) if what == 'annotation file' else \
            osp.isdir(path)
        if not exists:
            missing.append(f'  {key}: {what} not found: {path}')
    if missing:
        raise InputError(
            'the dataset in the config is not where it says:\n' +
            '\n'.join(missing) + '\nfix data_root / ann_file / data_prefix '
            "(e.g. --cfg-options train_dataloader.dataset.data_root=...)")


def check_checkpoint(door: Any,
                     path: Optional[str],
                     what: str,
                     resume: bool = False,
                     trust: bool = False) -> Optional[dict]:
    """Read a checkpoint through the run's door and check it, before the
    runner is built, so that a refusal is one line and nothing is written.

    Every source goes through :class:`~mmdet_gc.checkpoint.CheckpointDoor`:
    a local path (always, when it exists, even if it looks like a URL),
    ``http(s)://`` (downloaded into torch's hub cache, or taken from it),
    ``torchvision://``, ``open-mmlab://``, ``mmcls://``... It is read with
    ``weights_only=True`` (stock MMEngine files as data); with ``trust``
    (the user's ``--trust-checkpoint``) this one source is loaded with
    ``weights_only=False``, after a warning.

    Args:
        door (CheckpointDoor): The run's door; the runner's load of
            ``path`` gets the checked object.
        path (str, optional): The checkpoint source.
        what (str): What the file is for, e.g. ``'--resume'``.
        resume (bool): Also check what resuming needs.
        trust (bool): The user trusts this source.

    Returns:
        dict, optional: The checkpoint, or None without ``path``.

    Raises:
        InputError: Naming the source and the problem.
    """
    from ..checkpoint import CheckpointError
    from ..checkpoint.door import scheme_of
    if not path:
        return None
    if not isinstance(path, str) or any(ord(c) < 32 for c in path):
        raise InputError(f'{what} checkpoint {path!r:.200} is not a path or '
                         'URL')
    if scheme_of(path) == '' and not osp.exists(osp.expanduser(path)):
        raise InputError(f'{what} checkpoint not found: {path}')
    if trust:
        door.trust(path)
        print(
            f'warning: --trust-checkpoint: loading {path} with '
            'weights_only=False; a file loaded this way can run any code, '
            'so do this only for a checkpoint you made or trust',
            file=sys.stderr)
    try:
        return door.read(path, resume=resume)
    except CheckpointError as e:
        raise InputError(f'{what} {e}') from None


def _is_pretrained(kind: Any) -> bool:
    from mmengine.model.weight_init import PretrainedInit
    from mmengine.registry import WEIGHT_INITIALIZERS
    if isinstance(kind, str):
        try:
            kind = WEIGHT_INITIALIZERS.get(kind)
        except Exception:  # an unknown scope or name: not ours to judge
            return False
    return isinstance(kind, type) and issubclass(kind, PretrainedInit)


def pretrained_sources(model_cfg: Any,
                       model: Any = None) -> List[Tuple[str, Optional[str]]]:
    """The ``checkpoint`` of every ``init_cfg`` of type ``Pretrained``, any
    spelling (``'Pretrained'``, ``'mmengine.Pretrained'``, the class): in
    the model config at any depth and, given the built ``model``, in its
    modules (e.g. a backbone's ``pretrained=`` turned into an
    ``init_cfg``): what the runner loads when it initialises the model.

    Returns:
        list[tuple]: ``(checkpoint, prefix)``; ``prefix`` is the
        ``init_cfg``'s, or None.
    """
    out: List[Tuple[str, Optional[str]]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if _is_pretrained(node.get('type')) and isinstance(
                    node.get('checkpoint'), str):
                out.append((node['checkpoint'], node.get('prefix')))
            for value in node.values():
                walk(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value)

    walk(model_cfg)
    for module in model.modules() if model is not None else ():
        walk(getattr(module, 'init_cfg', None))
    return list(dict.fromkeys(out))


def check_prefix(ckpt: dict, source: str, prefix: str) -> None:
    """A ``Pretrained`` ``init_cfg`` with ``prefix`` loads the weights under
    it (MMEngine asserts there are some, inside the runner): checked here.

    Raises:
        InputError: ``ckpt`` holds no weight under ``prefix``.
    """
    prefix = prefix if prefix.endswith('.') else prefix + '.'
    weights = ckpt.get('state_dict', ckpt)
    if not any(isinstance(k, str) and k.startswith(prefix) for k in weights):
        raise InputError(f'init_cfg checkpoint {source} has no weights under '
                         f'its prefix {prefix!r}')


def latest_checkpoint(work_dir: str) -> Optional[str]:
    """What MMEngine's auto-resume takes: the path the work dir's
    ``last_checkpoint`` names, or None.

    Raises:
        InputError: ``last_checkpoint`` cannot be read as a path.
    """
    pointer = osp.join(work_dir, 'last_checkpoint')
    if not osp.isdir(work_dir) or not osp.lexists(pointer):
        return None
    if not osp.isfile(pointer):  # a FIFO would block the read forever
        raise InputError(f'{pointer} is not a file')
    try:
        with open(pointer, 'rb') as f:  # a path, not gigabytes
            data = f.read(4097)
        found = data.decode('utf-8').strip()
    except (OSError, UnicodeError, ValueError) as e:
        raise InputError(
            f'cannot read {pointer}: {type(e).__name__}') from None
    if len(data) > 4096 or not found or not found.isprintable():
        raise InputError(f'{pointer} names no checkpoint')
    return found


def build_run_or_fail(cfg: Config,
                      optimizer: bool = True,
                      for_runner: bool = False) -> Any:
    """The config's model (and optimizer wrapper and schedulers), built as
    the runner will build them: a config that cannot build them (e.g. a
    bad ``--cfg-options`` value) fails here, with one line.

    With ``for_runner``, the model is built as the runner would build it,
    right after seeding the generators as it seeds them (a config without a
    seed gets the one drawn here), so that the runner can take it
    (:func:`build_runner`) instead of building it again; where it cannot
    be (several processes drawing or offsetting their seeds), the runner
    builds its own.

    Raises:
        InputError: Naming the error.
    """
    from ..checkpoint.run_checks import BuildError, build_run
    try:
        return build_run(
            cfg,
            optimizer=optimizer,
            after_model=for_runner and _seed_as_the_runner(cfg))
    except BuildError as e:
        raise InputError(f'the config cannot build its {e}') from None


def _seed_as_the_runner(cfg: Config) -> bool:
    """Seed the generators as ``Runner.set_randomness`` will; False (and
    nothing seeded) where a process cannot know its seed yet."""
    from mmengine.runner.utils import set_random_seed
    randomness = dict(cfg.get('randomness') or {})
    if cfg.get('launcher',
               'none') != 'none' and (randomness.get('seed') is None
                                      or randomness.get('diff_rank_seed')):
        return False  # drawn on rank 0 or offset by rank: after dist init
    randomness['seed'] = set_random_seed(
        seed=randomness.get('seed'),
        deterministic=randomness.get('deterministic', False),
        diff_rank_seed=randomness.get('diff_rank_seed', False))
    cfg.randomness = randomness
    return True


def add_plain_checkpoint_hook(cfg: Config) -> bool:
    """Add ``PlainCheckpointHook`` to ``cfg.custom_hooks`` unless it is
    there, so that every run's checkpoints are plain data (and ``--gc`` on
    an mmdet config is covered).

    Returns:
        bool: Whether it was added (the tools then say so in one line).
    """
    hooks = list(cfg.get('custom_hooks') or [])
    names = [getattr(h.get('type'), '__name__', h.get('type')) for h in hooks]
    added = 'PlainCheckpointHook' not in names
    if added:
        hooks.append(ConfigDict(type='PlainCheckpointHook'))
    cfg.custom_hooks = hooks
    return added


#: MMEngine's loops and hook, and ours that resume them bitwise.
RESUMABLE = {
    'IterBasedTrainLoop': 'ResumableIterBasedTrainLoop',
    'EpochBasedTrainLoop': 'ResumableEpochBasedTrainLoop',
    'CheckpointHook': 'ResumableCheckpointHook',
}


def make_resumable(cfg: Config) -> None:
    """Train with the loops and checkpoint hook that resume bitwise,
    mid-epoch and at once (:mod:`mmdet_gc.engine.runner.loops`,
    :class:`~mmdet_gc.engine.hooks.ResumableCheckpointHook`): MMEngine's
    ``IterBasedTrainLoop`` / ``EpochBasedTrainLoop`` (also as ``by_epoch``)
    and ``CheckpointHook`` become ours, with the same arguments. A loop or
    hook of another kind, or one named with its scope
    (``'mmengine.IterBasedTrainLoop'``), is left as it is."""
    train = cfg.get('train_cfg')
    if isinstance(train, dict):
        if 'by_epoch' in train and 'type' not in train:
            by_epoch = train.pop('by_epoch')
            train['type'] = 'EpochBasedTrainLoop' if by_epoch else \
                'IterBasedTrainLoop'
        kind = train.get('type')
        if isinstance(kind, str) and kind in RESUMABLE:
            train['type'] = RESUMABLE[kind]
    hook = (cfg.get('default_hooks') or {}).get('checkpoint')
    if isinstance(hook, dict) and isinstance(hook.get('type'), str) and \
            hook['type'] in RESUMABLE:
        hook['type'] = RESUMABLE[hook['type']]


def check_train_loop(cfg: Config) -> None:
    """Every ``train_cfg`` key is an argument of its loop: the loop is the
    one part of a run the runner builds after the work dir is made, so a
    typo (``max_iter``) would otherwise stop the run there, in a traceback.

    Raises:
        InputError: Naming the keys the loop does not take.
    """
    import inspect

    from mmengine.registry import LOOPS
    train = cfg.get('train_cfg')
    if not isinstance(train, dict) or 'type' not in train:
        return
    loop = train['type']
    if isinstance(loop, str):
        loop = LOOPS.get(loop)
    if not inspect.isclass(loop):
        return  # unknown: the runner names it
    taken = set()
    for klass in loop.__mro__:
        if '__init__' not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        taken |= {p.name for p in params if p.kind not in (p.VAR_POSITIONAL,
                                                           p.VAR_KEYWORD)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    # ``_scope_`` and the like are MMEngine's, not the loop's.
    unknown = sorted(
        k for k in set(train) - taken - {'type'} if not k.startswith('_'))
    if unknown:
        takes = ', '.join(sorted(taken - {'self', 'runner', 'dataloader'}))
        raise InputError(f'train_cfg: {loop.__name__} takes no '
                         f'{", ".join(unknown)} (it takes: {takes})')


def use_cpu_distributed(cfg: Config) -> None:
    """Let ``--launcher pytorch`` run on a machine without CUDA (gloo).

    MMEngine 0.10's ``init_dist`` calls ``torch.cuda.set_device`` and
    defaults to NCCL, and its runner passes ``device_ids=[LOCAL_RANK]`` to
    DDP: all three need CUDA. Here the process group is started with gloo
    from torchrun's environment (the runner then skips ``init_dist``) and
    DDP gets ``device_ids=None``, as CPU modules need.
    """
    import torch.distributed as dist
    if cfg.get('launcher') != 'pytorch':
        raise InputError(f'--launcher {cfg.get("launcher")} needs CUDA; '
                         'without it only --launcher pytorch (gloo) runs')
    env = cfg.setdefault('env_cfg', ConfigDict())
    env.setdefault('dist_cfg', ConfigDict())['backend'] = 'gloo'
    wrapper = cfg.get('model_wrapper_cfg') or ConfigDict(
        type='MMDistributedDataParallel')
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')


def add_runner_args(parser: argparse.ArgumentParser) -> None:
    """The flags ``tools/train.py`` and ``tools/test.py`` share: MMDetection's
    ``--work-dir``, ``--cfg-options``, ``--launcher`` and ``--local-rank``,
    and ``--trust-checkpoint``."""
    parser.add_argument(
        '--work-dir',
        help='the dir to save logs, models and evaluation metrics')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=CfgOptions,
        help='override some settings in the used config, the key-value pair '
        'in xxx=yyy format will be merged into config file. If the value to '
        'be overwritten is a list, it should be like key="[a,b]" or key=a,b '
        'It also allows nested list/tuple values, e.g. key="[(a,b),(c,d)]" '
        'Note that the quotation marks are necessary and that no white space '
        'is allowed.')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    parser.add_argument(
        '--trust-checkpoint',
        action='store_true',
        help='load the checkpoint given (test checkpoint, --resume or '
        'load_from) with weights_only=False. A file loaded this way can run '
        'any code: only for a checkpoint you made or trust, e.g. one written '
        'by stock MMEngine')
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK.
    parser.add_argument(
        '--local_rank',
        '--local-rank',
        type=int,
        default=0,
        help='set by torch.distributed.launch (torchrun sets LOCAL_RANK '
        'instead)')


def read_config(path: str) -> Config:
    """``Config.fromfile(path)``, with what stops it in one line.

    Raises:
        InputError: No such file, or one MMEngine cannot read (a syntax
            error, an unsupported file type, a missing base config...),
            named with the error.
    """
    if not osp.isfile(path):
        raise InputError(f'config file not found: {path}')
    try:
        return Config.fromfile(path)
    except SyntaxError as e:
        raise InputError(f'cannot read config {path}: SyntaxError: {e.msg} '
                         f'({e.filename}, line {e.lineno})') from e
    except (OSError, ValueError, KeyError, ImportError, TypeError,
            AssertionError, RuntimeError) as e:
        raise InputError(
            f'cannot read config {path}: {first_line(e)}') from e


class CfgOptions(DictAction):
    """MMEngine's ``--cfg-options`` action; a value without ``=`` is a
    usage error (one line, exit status 2) instead of a traceback."""

    def __call__(self, parser, namespace, values, option_string=None):
        bad = [v for v in values if '=' not in v]
        if bad:
            parser.error(f'{option_string} takes KEY=VALUE pairs; got '
                         f'{bad[0]!r}')
        super().__call__(parser, namespace, values, option_string)


def merge_options(cfg: Config, options: Optional[dict], config: str) -> None:
    """Merge ``--cfg-options`` into ``cfg`` (read from ``config``).

    Raises:
        InputError: They cannot be merged, named with the error.
    """
    if options is None:
        return
    try:
        cfg.merge_from_dict(options)
    except (TypeError, KeyError, ValueError, AttributeError) as e:
        raise InputError(f'--cfg-options cannot be merged into {config}: '
                         f'{first_line(e)}') from None


def load_config(args: argparse.Namespace) -> Config:
    """The config named by ``args.config`` with the shared flags applied.

    ``--cfg-options`` are merged, ``--launcher`` recorded, and the work dir
    resolved as MMDetection does: flag > config > ``./work_dirs/<name>``.
    ``PlainCheckpointHook`` is added (:func:`add_plain_checkpoint_hook`).

    Raises:
        InputError: The config file does not exist or cannot be read.
    """
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    cfg = read_config(args.config)
    cfg.launcher = args.launcher
    merge_options(cfg, args.cfg_options, args.config)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    args.added_plain_hook = add_plain_checkpoint_hook(cfg)
    return cfg


def prepare_or_exit(build_cfg: Callable[[argparse.Namespace, Any],
                                         Tuple[Config, Any]],
                    args: argparse.Namespace,
                    tool: str) -> Tuple[Config, Any, Any]:
    """Run a tool's config checks; on bad input exit with one line.

    ``build_cfg(args, door)`` reads every checkpoint the run will load
    through ``door``, the run's :class:`~mmdet_gc.checkpoint.CheckpointDoor`,
    and returns the config and the objects it built for the runner (or
    None). Also applies :func:`use_cpu_distributed` for a launcher without
    CUDA. Nothing is written before this returns.

    Returns:
        tuple: The config, the door and those objects (see
        :func:`run_through_door`).
    """
    import torch

    from ..checkpoint import CheckpointDoor, CheckpointError
    door = CheckpointDoor()
    try:
        # The door is MMEngine's loader while the checks build the model
        # too: a model that loads weights when it is built goes through it.
        with door.installed():
            cfg, run = build_cfg(args, door)
        if args.launcher != 'none' and not torch.cuda.is_available():
            use_cpu_distributed(cfg)
    except (InputError, CheckpointError) as e:
        text = '\n'.join(map(one_line,
                             str(e).splitlines())) if getattr(
                                 e, 'lines', False) else one_line(e)
        sys.exit(f'{tool}: error: {text}')
    if getattr(args, 'added_plain_hook', False):
        print(
            f'{tool}: added PlainCheckpointHook to custom_hooks: checkpoints '
            'are saved as plain data that torch.load(weights_only=True) '
            'reads',
            file=sys.stderr)
    return cfg, door, run


def run_through_door(cfg: Config,
                     door: Any,
                     tool: str,
                     action: Callable[[Any], None],
                     run: Any = None) -> None:
    """Build the runner (taking ``run``'s model, see :func:`build_runner`)
    and run ``action(runner)`` with ``door`` as MMEngine's loader for every
    checkpoint scheme; a checkpoint the door refuses there (one not read up
    front) ends the tool with one line."""
    from ..checkpoint import CheckpointError
    with door.installed():
        try:
            action(build_runner(cfg, run))
        except CheckpointError as e:
            sys.exit(f'{tool}: error: {one_line(e)}')


def build_runner(cfg: Config, run: Any = None) -> Any:
    """MMEngine's ``Runner``, or the config's ``runner_type`` (as mmdet).

    Given ``run`` (:func:`build_run_or_fail` with ``for_runner``), MMEngine's
    runner takes its model instead of building the config's again
    (:class:`~mmdet_gc.engine.runner.PrebuiltModelRunner`); a
    ``runner_type`` of the config builds its own.
    """
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    if run is None or run.random_state is None:
        return Runner.from_cfg(cfg)
    from ..engine.runner import PrebuiltModelRunner, model_built
    with model_built(run.model, run.random_state):
        return PrebuiltModelRunner.from_cfg(cfg)
