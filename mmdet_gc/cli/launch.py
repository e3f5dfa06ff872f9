"""Running a tool: its checks before any work (bad input ends it with one
line), then MMEngine's runner, with the run's checkpoint door as the loader
of every checkpoint and gloo for ``--launcher pytorch`` without CUDA.
"""
import argparse
import sys
from typing import Any, Callable, Tuple

from mmengine.config import Config, ConfigDict

from ..utils import InputError
from ..utils.messages import one_line


def prepare_or_exit(build_cfg: Callable[[argparse.Namespace, Any],
                                        Tuple[Config,
                                              Any]], args: argparse.Namespace,
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
