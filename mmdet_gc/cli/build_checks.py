"""What MMEngine's runner builds, built or checked before it makes the work
dir: the optimizer type, the model, optimizer wrapper and schedulers, and
the arguments of the train, val and test loops.
"""
from typing import Any

from mmengine.config import Config

from ..utils import InputError
from .config import _gc_names


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


#: The loop MMEngine's runner builds for a ``*_cfg`` without a ``type``.
DEFAULT_LOOPS = dict(val_cfg='ValLoop', test_cfg='TestLoop')

#: Loop arguments MMEngine turns into counts (``int(...)``) inside the run.
COUNTS = ('max_iters', 'max_epochs', 'val_begin', 'val_interval')


def _check_count(field: str, value: Any, least: int) -> None:
    """Refuse a ``value`` of ``field`` that is not a whole number (a bool is
    not) of at least ``least``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise InputError(f'{field} must be a whole number >= {least}, not '
                         f'{value!r:.60}')


def _loop_class(key: str, loop_cfg: dict) -> Any:
    """The class MMEngine's runner will build for ``cfg[key]``, or None."""
    import inspect

    from mmengine.registry import LOOPS
    if 'type' in loop_cfg:
        loop = loop_cfg['type']
    elif key == 'train_cfg':
        loop = 'EpochBasedTrainLoop' if loop_cfg.get('by_epoch') else \
            'IterBasedTrainLoop' if 'by_epoch' in loop_cfg else None
    else:
        loop = DEFAULT_LOOPS[key]
    if isinstance(loop, str):
        loop = LOOPS.get(loop)
    return loop if inspect.isclass(loop) else None


def _arguments(loop: type) -> set:
    """The keyword arguments ``loop(...)`` takes, through its ``**kwargs``
    to its bases."""
    import inspect
    taken = set()
    for klass in loop.__mro__:
        if '__init__' not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        taken |= {
            p.name
            for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return taken


def check_run_parts(cfg: Config) -> None:
    """:func:`check_loops` and :func:`check_dataloaders`: the parts of a
    run MMEngine builds after the work dir, checked before it."""
    check_loops(cfg)
    check_dataloaders(cfg)


def check_loops(cfg: Config) -> None:
    """Every key of ``train_cfg``, ``val_cfg`` and ``test_cfg`` is an
    argument of its loop, and each count in them a whole number: the loops
    are the parts of a run the runner builds after the work dir is made, so
    a typo (``max_iter``) or a bad value would otherwise stop the run
    there, in a traceback.

    Raises:
        InputError: Naming the loop and the keys it does not take, or the
            field whose value is not a count.
    """
    for key in ('train_cfg', 'val_cfg', 'test_cfg'):
        loop_cfg = cfg.get(key)
        if not isinstance(loop_cfg, dict):
            continue
        for name in COUNTS:
            if name in loop_cfg:
                _check_count(f'{key}.{name}', loop_cfg[name], 0)
        loop = _loop_class(key, loop_cfg)
        if loop is None:
            continue  # unknown: the runner names it
        taken = _arguments(loop)
        # ``_scope_`` and the like are MMEngine's, not the loop's.
        unknown = sorted(
            k for k in set(loop_cfg) - taken - {'type'}
            if not k.startswith('_')
            and not (key == 'train_cfg' and k == 'by_epoch'
                     and 'type' not in loop_cfg))
        if unknown:
            takes = ', '.join(
                sorted(taken - {'self', 'runner', 'dataloader', 'evaluator'}))
            name = loop.__name__
            if name.startswith('Resumable'):  # the config's, as made
                # resumable by the tools (config.make_resumable)
                name = f'{name[len("Resumable"):]} (run as {name})'
            raise InputError(f'{key}: {name} takes no '
                             f'{", ".join(unknown)} (it takes: {takes})')


def check_dataloaders(cfg: Config) -> None:
    """The arguments of each dataloader that torch's ``DataLoader`` checks
    only when the runner builds it, after the work dir is made.

    Raises:
        InputError: Naming the field and its value.
    """
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(key)
        if not isinstance(loader, dict):
            continue
        for name, least in (('batch_size', 1), ('num_workers', 0)):
            _check_count(f'{key}.{name}', loader.get(name, least), least)
        if loader.get('persistent_workers') and not loader.get(
                'num_workers', 0):
            raise InputError(f'{key}: persistent_workers=True needs '
                             'num_workers > 0 (set persistent_workers=False '
                             'to load in the main process)')
