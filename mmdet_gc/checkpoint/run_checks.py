"""What the runner acts on, checked against the objects the run builds.

Before ``--resume`` hands a checkpoint to MMEngine's runner, the tools
build the config's model, optimizer wrapper and parameter schedulers on the
CPU (:func:`build_run`) and check the file against them
(:func:`check_resume_against_run`): the iteration counters against the
configured length; the optimizer's groups, their parameter lists and every
hyper-parameter against the optimizer the config builds (of the same kind,
finite, and accepted by the optimizer's own constructor); each state
buffer against its parameter (shape, dtype, a dense strided layout, finite
values); each scheduler state against the scheduler the config builds
(only the keys its own ``state_dict`` produces, values of the same kind).
The state is then loaded into the throw-away objects, as the runner would.
Each failure is one line naming the file and the key path.
"""
import contextlib
import copy
import inspect
import math
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional

import torch
from mmengine.config import Config

from ..utils.messages import first_line
from .errors import CheckpointError
from .plain import key_label
from .reader import non_finite, real_number


@dataclass
class RunObjects:
    """What the config builds: the model, its optimizer wrapper and the
    parameter schedulers (a list, or a dict of lists by optimizer name)."""
    model: Any
    optim_wrapper: Any = None
    schedulers: Any = None
    #: The optimizer's and the schedulers' states as the config builds
    #: them, before any file is loaded into them.
    config_state: Optional[dict] = None
    #: With ``after_model``: the random states right after the model was
    #: built, for a runner that takes this model as its own.
    random_state: Optional[dict] = None


def build_run(cfg: Config,
              optimizer: bool = True,
              after_model: bool = False) -> RunObjects:
    """Build the config's model and, with ``optimizer``, its optimizer
    wrapper and parameter schedulers, as MMEngine's runner builds them, on
    the CPU and without loading any weights; with ``after_model``, record
    the random states the model's build left
    (:attr:`RunObjects.random_state`).

    Raises:
        BuildError: What a registry raised on a bad config, naming the
            part (``model``, ``optim_wrapper`` with its optimizer type,
            ``param_scheduler``).
    """
    from mmengine.registry import MODELS, DefaultScope
    scope = cfg.get('default_scope', 'mmdet')
    with DefaultScope.overwrite_default_scope(scope):
        if scope is not None and DefaultScope.get_current_instance() is None:
            DefaultScope.get_instance('mmdet_gc_checks', scope_name=scope)
        with _part('model'):
            model_cfg = copy.deepcopy(cfg.model)
            if cfg.get('data_preprocessor') is not None:  # as the runner
                model_cfg.setdefault('data_preprocessor',
                                     copy.deepcopy(cfg.data_preprocessor))
            model = MODELS.build(model_cfg)
        state = None
        if after_model:
            from ..utils.random_state import capture_random_state
            state = capture_random_state()
        run = _build_optim(cfg, model) if optimizer else RunObjects(model)
        run.random_state = state
        return run


def _build_optim(cfg: Config, model: Any) -> RunObjects:
    """The optimizer wrapper and schedulers of :func:`build_run` (in its
    default scope)."""
    from mmengine.optim import build_optim_wrapper
    if cfg.get('optim_wrapper') is None:
        return RunObjects(model)
    kind = (cfg.optim_wrapper.get('optimizer') or {}).get('type')
    kind = getattr(kind, '__name__', kind)
    with _part(f'optim_wrapper (optimizer {kind})'):
        wrapper = build_optim_wrapper(model,
                                      copy.deepcopy(cfg.optim_wrapper))
    schedulers = cfg.get('param_scheduler')
    if schedulers is None:
        return RunObjects(
            model, wrapper, None,
            dict(optimizer=copy.deepcopy(wrapper.state_dict()),
                 schedulers=None))

    def build(configs: Any, optim: Any) -> List[Any]:
        # The state's keys do not depend on the epoch length.
        return build_schedulers(cfg, configs, optim, epoch_length=1)

    with _part('param_scheduler'):
        if isinstance(schedulers, dict) and 'type' not in schedulers:
            built = {
                name: build(schedulers[name], wrapper[name])
                for name in schedulers
            }
        else:
            built = build(schedulers, wrapper)
    states = None if isinstance(built, dict) else [
        copy.deepcopy(one.state_dict()) for one in built
    ]
    return RunObjects(
        model, wrapper, built,
        dict(optimizer=copy.deepcopy(wrapper.state_dict()),
             schedulers=states))


def build_schedulers(cfg: Config, configs: Any, optimizer: Any,
                     epoch_length: int) -> List[Any]:
    """The parameter schedulers ``configs`` (one or a list) of ``cfg`` over
    ``optimizer``, as MMEngine's runner builds them (``end`` defaults to
    the run's length in epochs or iterations)."""
    from mmengine.registry import PARAM_SCHEDULERS
    train = cfg.get('train_cfg') or {}
    out = []
    for one in configs if isinstance(configs, list) else [configs]:
        one = copy.deepcopy(one)
        by_epoch = one.get('by_epoch', True)
        end = train.get('max_epochs' if by_epoch else 'max_iters')
        if end is not None:
            one.setdefault('end', end)
        built = PARAM_SCHEDULERS.build(
            one,
            default_args=dict(optimizer=optimizer, epoch_length=epoch_length))
        built._mmdet_gc_converted = bool(one.get('convert_to_iter_based'))
        out.append(built)
    return out


class BuildError(ValueError):
    """A part of the run that the config cannot build; one line."""


@contextlib.contextmanager
def _part(name: str) -> Iterator[None]:
    try:
        yield
    except Exception as e:  # whatever a registry or a constructor raises
        raise BuildError(f'{name}: {first_line(e, limit=300)}') from None


def _kind(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return 'tensor'
    if isinstance(value, bool):
        return 'bool'
    if real_number(value) is not None or isinstance(value, (int, float)):
        return 'number'
    if isinstance(value, (list, tuple)):
        return 'sequence'
    if isinstance(value, dict):
        return 'dict'
    if value is None:
        return 'None'
    if isinstance(value, str):
        return 'str'
    return 'object'


def same_kind(saved: Any,
              built: Any,
              where: str,
              exact: bool = False) -> Optional[str]:
    """Why ``saved`` (from a file) cannot stand for ``built`` (what the run
    holds), or None: the same kind of value (a number for a number, a list
    of as many for a list...), at any depth; with ``exact``, no int where
    the run holds a float."""
    kind, want = _kind(saved), _kind(built)
    if want == 'None':  # e.g. foreach=None: a plain value may replace it
        if kind in ('None', 'bool', 'number', 'str'):
            return None
    elif want == 'bool' and kind == 'None':  # a switch left to default
        return None
    elif want == 'object':  # a method or helper object of the scheduler
        return f'{where} would replace a {type(built).__name__}'
    elif kind != want:
        return f'{where} is a {kind}, not a {want}'
    if exact and want == 'number' and isinstance(
            built, float) and isinstance(saved, int):
        # Schedulers raise values to powers (gamma ** milestone count), and
        # Python does it exactly for ints: that could take forever.
        return f'{where} is an int where the run holds a float'
    if kind == 'number' and isinstance(saved, int) and abs(saved) > 10**12:
        return f'{where} is {float(saved):.3g}, beyond any count a run ' \
            'reaches'
    if kind == 'tensor' and (saved.shape != built.shape
                             or saved.dtype != built.dtype):
        return (f'{where} is a {saved.dtype} tensor of shape '
                f'{tuple(saved.shape)}, not {built.dtype} '
                f'{tuple(built.shape)}')
    if kind == 'sequence':
        if len(saved) != len(built):
            return f'{where} has {len(saved)} values, not {len(built)}'
        for i, (a, b) in enumerate(zip(saved, built)):
            why = same_kind(a, b, f'{where}[{i}]', exact)
            if why:
                return why
    if kind == 'dict' and set(saved) == set(built):  # a record, by key
        for k, v in saved.items():
            why = same_kind(v, built[k], f'{where}[{key_label(k)}]', exact)
            if why:
                return why
    elif kind == 'dict' and built:  # a mapping, e.g. a Counter of milestones
        model_key, model_value = next(iter(built.items()))
        for k, v in saved.items():
            why = same_kind(k, model_key, f'{where} key', exact) or same_kind(
                v, model_value, f'{where}[{key_label(k)}]', exact)
            if why:
                return why
    if non_finite(saved):
        return f'{where} is {saved!r:.40}, not a finite real number'
    return None


def _dense(t: torch.Tensor) -> bool:
    """A strided tensor whose elements each have their own memory and fill
    its span: what a kernel reads as values."""
    if t.layout != torch.strided or t.is_neg() or t.is_conj():
        return False
    dims = sorted((s, n) for s, n in zip(t.stride(), t.shape) if n != 1)
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


def _check_group_values(saved: dict, built: dict, where: str) -> None:
    for key, value in saved.items():
        if key == 'params':
            continue
        if key in built:
            why = same_kind(value, built[key], f'{where}.{key_label(key)}')
        elif _kind(value) in ('bool', 'number', 'str', 'None'):
            why = same_kind(value, value, f'{where}.{key_label(key)}')
        else:
            why = (f'{where}.{key_label(key)} is not a value this optimizer '
                   'keeps')
        if why:
            raise ValueError(why)


def _check_hyper_parameters(optimizer: Any, group: dict, where: str) -> None:
    """Ranges, by the optimizer's own constructor: the values a group holds
    must be values the config could have given."""
    params = inspect.signature(type(optimizer).__init__).parameters
    kwargs = {
        k: v
        for k, v in group.items() if k in params and k not in ('self',
                                                                'params')
    }
    dummy = torch.zeros(2, 2, requires_grad=True)
    try:
        type(optimizer)([dummy], **kwargs)
    except Exception as e:  # ValueError, TypeError, RuntimeError...
        raise ValueError(f'{where}: {first_line(e, typed=False)}') from None


def _check_state(state: dict, params: Dict[Any, torch.Tensor],
                 where: str) -> None:
    for pid, entry in state.items():
        if pid not in params:
            raise ValueError(f'{where}[{key_label(pid)}] is the state of no '
                             'parameter of the optimizer')
        if not isinstance(entry, dict):
            raise ValueError(f'{where}[{pid}] is not a dict')
        param = params[pid]
        for key, value in entry.items():
            at = f'{where}[{pid}].{key_label(key)}'
            if key == 'step':  # the only count: a number or a 1-element one
                count = real_number(value)
                if count is None or not count >= 0 or non_finite(value) or (
                        isinstance(value, torch.Tensor)
                        and not value.is_floating_point()):
                    raise ValueError(f'{at} is {value!r:.40}, not a finite '
                                     'count')
                continue
            if isinstance(value, torch.Tensor):
                if not _dense(value):
                    raise ValueError(f'{at} is not a dense strided tensor')
                if value.shape != param.shape or value.dtype != param.dtype:
                    raise ValueError(
                        f'{at} is a {value.dtype} tensor of shape '
                        f'{tuple(value.shape)}; its parameter is '
                        f'{param.dtype} {tuple(param.shape)}')
                if non_finite(value):
                    raise ValueError(f'{at} holds values that are not '
                                     'finite')
            else:  # every buffer is a tensor of its parameter's shape
                raise ValueError(f'{at} is {value!r:.40}, not a tensor')


#: Optimizer keys that choose an implementation, not the algorithm.
IMPLEMENTATION_KEYS = ('params', 'foreach', 'fused', 'differentiable',
                       'capturable')
#: Scheduler state that a run advances (the rest is its configuration).
SCHEDULER_COUNTERS = ('last_step', '_global_step', '_last_value',
                      '_get_value_called_within_step', 'verbose',
                      '_mmdet_gc_converted')


def _value(value: Any) -> Any:
    """A comparable form of a hyper-parameter or scheduler setting."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return tuple(_value(v) for v in value)
    if isinstance(value, dict):
        return {k: _value(v) for k, v in value.items()}
    return value


def _show(value: Any) -> str:
    text = repr(_value(value))
    return text if len(text) <= 60 else text[:57] + '...'


def _differences(saved: dict, built: dict, where: str,
                 skip: tuple) -> List[str]:
    """``where.key: file X, config Y`` for each setting that differs."""
    out = []
    for key in sorted(set(saved) | set(built), key=str):
        if key in skip or key not in built or callable(built[key]):
            continue  # a method (OneCycleLR's anneal_func) is code
        if key not in saved or _value(saved[key]) != _value(built[key]):
            old = _show(saved[key]) if key in saved else '(none)'
            out.append(f'{where}.{key_label(key)}: file {old}, config '
                       f'{_show(built[key])}')
    return out


def _check_optimizer(saved: Any, wrapper: Any, where: str,
                     differences: List[str]) -> None:
    optimizer = wrapper.optimizer
    built = optimizer.state_dict()
    groups = saved.get('param_groups') if isinstance(saved, dict) else None
    if not isinstance(groups, list) or not isinstance(
            saved.get('state'), dict):
        raise ValueError(f'{where} is malformed')
    if len(groups) != len(built['param_groups']):
        raise ValueError(f'{where}.param_groups has {len(groups)} groups; '
                         f'the config builds {len(built["param_groups"])}')
    ids = []
    for i, (group, want) in enumerate(zip(groups, built['param_groups'])):
        at = f'{where}.param_groups[{i}]'
        if not isinstance(group, dict) or not isinstance(
                group.get('params'), list):
            raise ValueError(f'{at} is malformed')
        if len(group['params']) != len(want['params']):
            raise ValueError(f'{at} has {len(group["params"])} parameters; '
                             f'the config builds {len(want["params"])}')
        if not all(type(p) is int for p in group['params']):
            raise ValueError(f'{at}.params are not parameter indices')
        ids += group['params']
        _check_group_values(group, want, at)
        # What the config asks for: every hyper-parameter; the lr as the
        # schedule's start (initial_lr) where the config has a schedule.
        skip = IMPLEMENTATION_KEYS + (('lr', ) if 'initial_lr' in want else
                                      ())
        differences += _differences(group, want, at, skip)
    if len(set(ids)) != len(ids):
        raise ValueError(f'{where}: a parameter index is in two places')
    params = [p for g in optimizer.param_groups for p in g['params']]
    _check_state(saved['state'], dict(zip(ids, params)), f'{where}.state')
    # As the runner will: torch's own checks, then every value the
    # optimizer reads is there and in range.
    try:
        # A copy: torch keeps the loaded tensors, which the dry step below
        # writes, and the runner must get the file's own.
        wrapper.load_state_dict(copy.deepcopy(saved))
    except Exception as e:
        raise ValueError(f'{where} does not load: '
                         f'{first_line(e, typed=False)}') from None
    for i, (group, want) in enumerate(
            zip(optimizer.param_groups, built['param_groups'])):
        missing = sorted(set(want) - set(group))
        if missing:
            raise ValueError(f'{where}.param_groups[{i}] lacks {missing}')
        _check_hyper_parameters(optimizer, group,
                                f'{where}.param_groups[{i}]')
    _dry_step(optimizer, where)


def _dry_step(optimizer: Any, where: str) -> None:
    """One step of the throw-away optimizer with zero gradients, with the
    loaded state: what the first real step will do with it."""
    params = [p for g in optimizer.param_groups for p in g['params']]
    try:
        for p in params:
            p.grad = torch.zeros_like(p)
        optimizer.step()
    except Exception as e:
        raise ValueError(f'{where}: a step with this state fails: '
                         f'{first_line(e)}') from None
    finally:
        for p in params:
            p.grad = None
    for i, p in enumerate(params):
        state = optimizer.state.get(p, {})
        if non_finite(p.detach()) or any(
                non_finite(v) for v in state.values()
                if isinstance(v, torch.Tensor)):
            raise ValueError(f'{where}: a step with this state leaves '
                             f'parameter {i} or its state not finite')


def _check_schedulers(saved: Any, built: List[Any], where: str,
                      differences: List[str]) -> None:
    if not isinstance(saved, list) or len(saved) != len(built):
        count = len(saved) if isinstance(saved, list) else 'no'
        raise ValueError(f'{where} has {count} scheduler states; the config '
                         f'builds {len(built)} schedulers')
    for i, (state, scheduler) in enumerate(zip(saved, built)):
        at = f'{where}[{i}]'
        want = scheduler.state_dict()
        if not isinstance(state, dict):
            raise ValueError(f'{at} is malformed')
        extra = sorted(map(key_label, set(state) - set(want)))
        if extra:
            raise ValueError(f'{at} has keys {type(scheduler).__name__} does '
                             f'not keep: {extra}')
        for key, value in state.items():
            why = same_kind(value, want[key], f'{at}.{key_label(key)}',
                            exact=True)
            if why:
                raise ValueError(why)
        differences += _differences(
            state, want, f'{at}', SCHEDULER_COUNTERS +
            (('begin', 'end', 'milestones', 'T_max', 'periods',
              'total_steps') if _converted(scheduler) else ()))
        last = state.get('last_step')
        if last is not None and last < -1:
            raise ValueError(f'{at}.last_step is {last}')
        scheduler.load_state_dict(copy.deepcopy(state))
        try:  # what the next step computes from this state
            scheduler.step()
        except Exception as e:
            raise ValueError(f'{at}: a step of {type(scheduler).__name__} '
                             f'with this state fails: {first_line(e)}'
                             ) from None
        for j, group in enumerate(scheduler.optimizer.param_groups):
            value = group.get(scheduler.param_name)
            if non_finite(value):
                raise ValueError(f'{at}: a step with this state sets '
                                 f'{scheduler.param_name} of group {j} to '
                                 f'{value!r:.40}')


def _converted(scheduler: Any) -> bool:
    """An epoch schedule turned into iterations (``convert_to_iter_based``):
    its bounds are in iterations of an epoch length the checks do not
    know, so only its other settings are compared."""
    return bool(getattr(scheduler, '_mmdet_gc_converted', False))


def _check_weights_against_model(weights: Any, model: Any) -> None:
    """Every tensor the model has is in the file, of its shape and dtype,
    and finite (``module.`` prefixes stripped, as MMEngine loads)."""
    if not isinstance(weights, dict):
        raise ValueError('state_dict is not a dict of tensors')
    named = {(k[len('module.'):] if isinstance(k, str)
              and k.startswith('module.') else k): v
             for k, v in weights.items()}
    for key, tensor in model.state_dict().items():
        at = f'state_dict.{key_label(key)}'
        if key not in named:
            raise ValueError(f'{at} is missing')
        value = named[key]
        if not isinstance(value, torch.Tensor):
            raise ValueError(f'{at} is not a tensor')
        if value.shape != tensor.shape or value.dtype != tensor.dtype:
            raise ValueError(f'{at} is a {value.dtype} tensor of shape '
                             f'{tuple(value.shape)}; the model has '
                             f'{tensor.dtype} {tuple(tensor.shape)}')
        if non_finite(value):
            raise ValueError(f'{at} holds values that are not finite')


def _check_resume_state(state: Any) -> None:
    """The run's position and random states (ResumableCheckpointHook)."""
    from ..utils.random_state import check_random_state
    if not isinstance(state, dict):
        raise ValueError('resume_state is not a dict')
    for key in ('batch', 'world_size', 'num_workers'):
        if not (type(state.get(key)) is int and 0 <= state[key] < 2**40):
            raise ValueError(f'resume_state.{key} is not a count')
    randoms = state.get('random', [])
    if not isinstance(randoms, list) or len(randoms) not in (
            0, state['world_size']):
        raise ValueError('resume_state.random is not a list of one state '
                         'per process (resume_state.world_size)')
    for rank, one in enumerate(randoms):
        try:
            check_random_state(one)
        except ValueError as e:
            raise ValueError(f'resume_state.random[{rank}] {e}') from None


#: The longest schedule replayed to check a file's lr (iterations).
MAX_REPLAY = 10**7


def _epoch_length(meta: dict, batch: int, epoch_loop: bool) -> Optional[int]:
    """Iterations per epoch, from a checkpoint's counters and its position
    in the epoch (None where no epoch has ended).

    Raises:
        ValueError: The position does not agree with the counters.
    """
    epoch, iters = meta['epoch'], meta['iter']
    if not epoch_loop or epoch == 0:
        if batch != iters:
            raise ValueError(f'resume_state.batch is {batch}, not meta.iter '
                             f'{iters}')
        return None
    done = iters - batch
    if batch < 0 or done <= 0 or done % epoch or batch > done // epoch:
        raise ValueError(f'resume_state.batch {batch} does not agree with '
                         f'meta.iter {iters} and meta.epoch {epoch}')
    return done // epoch


def replay_schedule(cfg: Config, run: RunObjects,
                    ckpt: dict) -> Optional[dict]:
    """The config's schedule at the file's step: each group's lr and each
    scheduler's state, from the config's start, stepped as MMEngine's
    ``ParamSchedulerHook`` steps them (iteration schedulers after every
    iteration, epoch ones after every epoch). None where it cannot be
    replayed (a file without ``resume_state``, several optimizers, an
    epoch schedule converted to iterations before any epoch ended).

    Raises:
        ValueError: The file's position does not agree with its counters.
    """
    configs = cfg.get('param_scheduler')
    groups = ((run.config_state or {}).get('optimizer')
              or {}).get('param_groups')
    meta = ckpt['meta']
    if not isinstance(ckpt.get('resume_state'), dict):
        return None  # another tool's file: where it is in an epoch is unknown
    train = cfg.get('train_cfg') or {}
    epoch_loop = 'Epoch' in str(train.get('type', '')) or bool(
        train.get('by_epoch'))
    length = _epoch_length(meta, ckpt['resume_state']['batch'], epoch_loop)
    if configs is None or groups is None or isinstance(
            run.schedulers, dict) or meta['iter'] > MAX_REPLAY:
        return None
    if length is None and any(s._mmdet_gc_converted for s in run.schedulers):
        return None
    params, dummy_groups = [], []
    for group in groups:
        param = torch.zeros(1, requires_grad=True)
        params.append(param)
        one = {k: copy.deepcopy(v) for k, v in group.items()
               if k != 'params' and not k.startswith('initial_')}
        for key, value in group.items():  # the schedule's start values
            if key.startswith('initial_'):
                one[key[len('initial_'):]] = copy.deepcopy(value)
        dummy_groups.append(dict(one, params=[param]))
    dummy = torch.optim.SGD(dummy_groups, lr=0.)
    with warnings.catch_warnings():  # no optimizer steps here, by design
        warnings.simplefilter('ignore')
        schedulers = build_schedulers(cfg, configs, dummy, length or 1)
        by_iter = [s for s in schedulers if not s.by_epoch]
        by_epoch = [s for s in schedulers if s.by_epoch]
        for i in range(meta['iter']):
            for one in by_iter:
                one.step()
            if epoch_loop and length and (i + 1) % length == 0:
                for one in by_epoch:
                    one.step()
    return dict(lrs=[g['lr'] for g in dummy.param_groups],
                states=[one.state_dict() for one in schedulers])


def _schedule_differences(ckpt: dict, replay: dict) -> List[str]:
    """The file's lr and scheduler counters against the config's schedule
    replayed to the file's step."""
    out = []
    at = f'the config\'s schedule at iteration {ckpt["meta"]["iter"]}'
    groups = (ckpt.get('optimizer') or {}).get('param_groups') or []
    for i, (group, lr) in enumerate(zip(groups, replay['lrs'])):
        have = real_number(group.get('lr'))
        if have is None or not math.isclose(have, lr, rel_tol=1e-9,
                                            abs_tol=1e-15):
            out.append(f'optimizer.param_groups[{i}].lr: file '
                       f'{_show(group.get("lr"))}, {at} {lr!r}')
    for i, (saved, want) in enumerate(
            zip(ckpt.get('param_schedulers') or [], replay['states'])):
        for key in ('last_step', '_global_step'):
            if key in saved and saved[key] != want[key]:
                out.append(f'param_schedulers[{i}].{key}: file '
                           f'{_show(saved[key])}, {at} {want[key]}')
    return out


def _check_overrides(meta: dict) -> None:
    """``meta.resumed_with_config``: what an earlier ``--resume-with-config``
    took from its config, logged again on resume."""
    lines = meta.get('resumed_with_config', [])
    if not (isinstance(lines, list) and len(lines) <= 1000 and all(
            isinstance(x, str) and len(x) <= 500 and x.isprintable()
            for x in lines)):
        raise ValueError('meta.resumed_with_config is not a list of short '
                         'printable lines')


def _check_counters(meta: dict, cfg: Config, where: str) -> None:
    if meta['epoch'] > meta['iter']:  # every epoch has an iteration
        raise ValueError(f'{where}.epoch is {meta["epoch"]}, beyond '
                         f'{where}.iter {meta["iter"]}')
    train = cfg.get('train_cfg') or {}
    for key, limit in (('iter', 'max_iters'), ('epoch', 'max_epochs')):
        bound = train.get(limit)
        if isinstance(bound, int) and meta[key] > bound:
            raise ValueError(f'{where}.{key} is {meta[key]}, beyond the '
                             f'configured {limit}={bound}')


def check_resume_against_run(ckpt: dict, path: str, cfg: Config,
                             run: RunObjects) -> List[str]:
    """Check what ``Runner.resume`` will act on against ``run`` (built by
    :func:`build_run` from ``cfg``).

    Returns:
        list[str]: Each setting the file would restore that differs from
        the config's (optimizer hyper-parameters, the schedule's start lr,
        scheduler settings), as ``key: file X, config Y``.

    Raises:
        CheckpointError: One line naming ``path`` and the key path.
    """
    differences: List[str] = []
    try:
        _check_counters(ckpt['meta'], cfg, 'meta')
        _check_overrides(ckpt['meta'])
        _check_weights_against_model(ckpt.get('state_dict'), run.model)
        if 'resume_state' in ckpt:
            _check_resume_state(ckpt['resume_state'])
        saved = ckpt.get('optimizer')
        wrapper = run.optim_wrapper
        if saved is not None and wrapper is not None:
            if hasattr(wrapper, 'optim_wrappers'):  # OptimWrapperDict
                if not isinstance(saved, dict) or set(saved) != set(
                        wrapper.optim_wrappers):
                    raise ValueError('optimizer does not hold the '
                                     f'optimizers {sorted(wrapper.keys())}')
                for name, one in wrapper.optim_wrappers.items():
                    _check_optimizer(saved[name], one, f'optimizer.{name}',
                                     differences)
            else:
                _check_optimizer(saved, wrapper, 'optimizer', differences)
        saved = ckpt.get('param_schedulers')
        if saved is not None and run.schedulers is not None:
            if isinstance(run.schedulers, dict):
                if not isinstance(saved, dict) or set(saved) != set(
                        run.schedulers):
                    raise ValueError('param_schedulers do not match the '
                                     'optimizers of the config')
                for name, built in run.schedulers.items():
                    _check_schedulers(saved[name], built,
                                      f'param_schedulers.{name}',
                                      differences)
            else:
                _check_schedulers(saved, run.schedulers, 'param_schedulers',
                                  differences)
        replay = replay_schedule(cfg, run, ckpt)
        if replay is not None:
            differences += _schedule_differences(ckpt, replay)
        if run.config_state is not None:
            run.config_state['replay'] = replay
    except ValueError as e:
        raise CheckpointError(f'checkpoint {path} cannot be resumed by this '
                              f'config: {e}') from None
    except Exception as e:  # anything else the checks ran into
        raise CheckpointError(
            f'checkpoint {path} cannot be resumed by this config: '
            f'{first_line(e)}') from None
    return differences


def take_config_settings(ckpt: dict, run: RunObjects,
                         differences: List[str]) -> None:
    """Make ``ckpt`` (checked by :func:`check_resume_against_run`) resume
    with the config's settings: the weights, the optimizer's moments and
    step counts and the iteration counters stay the file's; every
    hyper-parameter, scheduler setting and the lr become the config's: its
    schedule replayed to the file's step (:func:`replay_schedule`).

    Raises:
        CheckpointError: The run has several optimizers, or its schedule
            cannot be replayed to the file's step.
    """
    state = run.config_state or {}
    built = (state.get('optimizer') or {}).get('param_groups')
    replay = state.get('replay')
    if built is None or not isinstance(ckpt.get('optimizer'), dict) or \
            'param_groups' not in ckpt['optimizer']:
        raise CheckpointError('--resume-with-config needs a run with one '
                              'optimizer and a file with its state')
    if replay is None and ckpt.get('param_schedulers') is not None:
        raise CheckpointError(
            '--resume-with-config cannot place the config\'s schedule at '
            'the file\'s step (several optimizers, or an epoch schedule '
            'converted to iterations before an epoch ended)')
    for i, (group, want) in enumerate(
            zip(ckpt['optimizer']['param_groups'], built)):
        for key, value in want.items():
            if key not in IMPLEMENTATION_KEYS:
                group[key] = copy.deepcopy(value)
        if replay is not None:
            lr = replay['lrs'][i]
            group['lr'] = torch.tensor(lr, dtype=want['lr'].dtype) \
                if isinstance(want['lr'], torch.Tensor) else lr
    if replay is not None:
        ckpt['param_schedulers'] = [
            {k: copy.deepcopy(v) for k, v in one.items()
             if k != '_mmdet_gc_converted' and not callable(v)}
            for one in replay['states']
        ]
    meta = ckpt.setdefault('meta', {})
    meta['resumed_with_config'] = list(differences)


__all__ = [
    'BuildError', 'RunObjects', 'build_run', 'same_kind',
    'check_resume_against_run', 'take_config_settings'
]
