"""Checkpoints a run resumes from exactly, written whole, also within an
epoch and when the job is preempted.

:class:`ResumableCheckpointHook` is MMEngine's ``CheckpointHook`` (same
arguments; the tools use it in place of ``default_hooks.checkpoint``) with:

- **atomic files**: every checkpoint and ``last_checkpoint`` is written to
  a temporary name in its directory, flushed and renamed
  (:mod:`mmdet_gc.utils.atomic_file`);
- **the run's position and random states** in each checkpoint
  (``resume_state``: the batch of the epoch reached, and python's, numpy's,
  torch's and CUDA's generators of every rank, as tensors and ints), which
  :mod:`mmdet_gc.engine.runner.loops` restores on ``--resume``;
- **resume points within an epoch**: ``resume_interval`` (iterations) and
  ``resume_minutes`` save ``resume_iter_<n>.pth`` (the previous one is
  removed when a newer checkpoint is written);
- **preemption**: ``SIGTERM`` and ``SIGUSR1`` (what Slurm sends before it
  stops a job) let the current iteration finish, save a resume point and
  end the process with status :data:`PREEMPTED_EXIT` (75), so that a
  requeued job's ``--resume`` continues from that iteration.
"""
import glob
import os
import os.path as osp
import shutil
import signal
import time
from typing import Any, Dict, Optional, Sequence

from mmengine.dist import all_gather_object, get_world_size, is_main_process
from mmengine.hooks import CheckpointHook

from ...utils.atomic_file import write_atomically
from ...utils.random_state import capture_random_state

#: The exit status of a run stopped by a preemption signal, after saving
#: (EX_TEMPFAIL of sysexits.h: "try again later").
PREEMPTED_EXIT = 75

#: The file backend whose writes are atomic (registered by mmdet_gc).
ATOMIC_BACKEND = 'mmdet_gc_atomic'

#: In a run's log folder: what ``--resume-with-config`` took from the
#: config, one line each (``mmdet-gc report`` lists them).
OVERRIDES_FILE = 'resumed_with_config.txt'


class _WorkDirView:
    """The runner with ``work_dir`` elsewhere: MMEngine's ``CheckpointHook``
    writes ``last_checkpoint`` in place there, and it is then renamed over
    the work dir's own."""

    def __init__(self, runner: Any, work_dir: str) -> None:
        self._runner = runner
        self.work_dir = work_dir

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runner, name)


def _remove_partial_writes(*folders: str) -> None:
    """What a kill in the middle of a save left: the temporary files of
    :func:`~mmdet_gc.utils.atomic_file.write_atomically` (never under a
    final name) and the staging folder of ``last_checkpoint``."""
    for folder in dict.fromkeys(f for f in folders if f and '://' not in f):
        for path in glob.glob(osp.join(glob.escape(folder), '.*.tmp')):
            if osp.isfile(path) and not osp.islink(path):
                os.remove(path)
        staging = osp.join(folder, '.last_checkpoint.staging')
        if osp.isdir(staging) and not osp.islink(staging):
            shutil.rmtree(staging)


class ResumableCheckpointHook(CheckpointHook):
    """MMEngine's ``CheckpointHook``, whose checkpoints resume a run
    bitwise (see the module).

    Args:
        resume_interval (int): Also save a resume point every this many
            iterations (within epochs too); 0 for none.
        resume_minutes (float): Also save a resume point when this many
            minutes passed since the last checkpoint; 0 for none.
        signals (Sequence[str]): The signals that save and stop the run.
        **kwargs: ``CheckpointHook``'s arguments.
    """

    def __init__(self,
                 *args: Any,
                 resume_interval: int = 0,
                 resume_minutes: float = 0,
                 signals: Sequence[str] = ('SIGTERM', 'SIGUSR1'),
                 **kwargs: Any) -> None:
        if kwargs.get('backend_args') is None and kwargs.get(
                'file_client_args') is None and '://' not in str(
                    kwargs.get('out_dir') or ''):
            kwargs['backend_args'] = dict(backend=ATOMIC_BACKEND)
        super().__init__(*args, **kwargs)
        if not (isinstance(resume_interval, int) and resume_interval >= 0):
            raise ValueError('resume_interval must be an int >= 0, not '
                             f'{resume_interval!r}')
        if not (isinstance(resume_minutes, (int, float))
                and resume_minutes >= 0):
            raise ValueError('resume_minutes must be a number >= 0, not '
                             f'{resume_minutes!r}')
        for name in signals:
            if not isinstance(getattr(signal, str(name), None),
                              signal.Signals):
                raise ValueError(f'unknown signal {name!r} in signals')
        self.resume_interval = resume_interval
        self.resume_minutes = resume_minutes
        self.signals = tuple(signals)
        self._signalled: Optional[int] = None
        self._previous_handlers: Dict[int, Any] = {}
        self._saved_at = time.monotonic()
        self._resume_point: Optional[str] = None
        self._random_states: Optional[list] = None
        self._overrides: list = []

    # Signals --------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signalled = signum

    def before_train(self, runner: Any) -> None:
        super().before_train(runner)
        self._saved_at = time.monotonic()
        if is_main_process():
            _remove_partial_writes(runner.work_dir, self.out_dir)
        try:
            for name in self.signals:
                num = getattr(signal, name)
                self._previous_handlers[num] = signal.signal(
                    num, self._on_signal)
        except ValueError:  # not the main thread: signals are not ours
            self._previous_handlers.clear()

    def after_run(self, runner: Any) -> None:
        for num, handler in self._previous_handlers.items():
            signal.signal(num, handler)
        self._previous_handlers.clear()

    # Saving ---------------------------------------------------------------

    def _gather_random_states(self) -> None:
        """Every rank's random states, for the checkpoint about to be
        saved (by rank 0 only)."""
        state = capture_random_state()
        self._random_states = all_gather_object(state) \
            if get_world_size() > 1 else [state]

    def _write_pointer(self, runner: Any, path: str) -> None:
        if is_main_process():
            write_atomically(
                osp.join(runner.work_dir, 'last_checkpoint'), path.encode())

    def _save_checkpoint_with_step(self, runner: Any, step: int,
                                   meta: Any) -> None:
        self._gather_random_states()
        staging = osp.join(runner.work_dir, '.last_checkpoint.staging')
        if is_main_process():
            os.makedirs(staging, exist_ok=True)
        super()._save_checkpoint_with_step(
            _WorkDirView(runner, staging), step, meta)
        if is_main_process():
            os.replace(
                osp.join(staging, 'last_checkpoint'),
                osp.join(runner.work_dir, 'last_checkpoint'))
            os.rmdir(staging)
        self._after_save(self.last_ckpt)

    def _after_save(self, path: str) -> None:
        self._saved_at = time.monotonic()
        self._random_states = None
        old, self._resume_point = self._resume_point, None
        if old and old != path and is_main_process() and osp.isfile(old):
            os.remove(old)

    def save_resume_point(self, runner: Any) -> str:
        """Save ``resume_iter_<n>.pth`` after the current iteration and
        point ``last_checkpoint`` at it.

        Returns:
            str: Its path.
        """
        self._gather_random_states()
        filename = f'resume_iter_{runner.iter + 1}.pth'
        path = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', path)
        runner.save_checkpoint(
            self.out_dir,
            filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            by_epoch=False,
            backend_args=self.backend_args,
            **self.args)
        self._write_pointer(runner, path)
        self._after_save(path)
        self._resume_point = path
        return path

    def after_train_iter(self,
                         runner: Any,
                         batch_idx: int,
                         data_batch: Any = None,
                         outputs: Any = None) -> None:
        before = self._saved_at
        super().after_train_iter(runner, batch_idx, data_batch, outputs)
        saved = self._saved_at != before  # CheckpointHook saved just now
        signalled, due = self._agree(runner)
        if (signalled or due) and not saved:
            path = self.save_resume_point(runner)
            runner.logger.info(f'saved resume point {path}')
        if signalled:
            runner.logger.warning(
                f'stopped by {signal.Signals(signalled).name} after '
                f'iteration {runner.iter + 1}: '
                f'{runner.message_hub.get_info("last_ckpt", "")} holds it; '
                '--resume continues from there (exit status '
                f'{PREEMPTED_EXIT})')
            raise SystemExit(PREEMPTED_EXIT)

    def _agree(self, runner: Any) -> tuple:
        """Whether a signal came (to any rank) and whether a resume point is
        due, the same on every rank."""
        signalled = self._signalled or 0
        due = bool(self.resume_interval) and \
            (runner.iter + 1) % self.resume_interval == 0
        if self.resume_minutes and not due:
            due = time.monotonic() - self._saved_at >= \
                60 * self.resume_minutes
        if get_world_size() > 1:
            votes = all_gather_object((signalled, due))
            signalled = max(v[0] for v in votes)
            due = votes[0][1]
        return signalled, due

    # The state in the checkpoint -----------------------------------------

    def before_save_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        loop = runner.train_loop
        if not hasattr(loop, 'resume_state'):
            return
        states = self._random_states
        if states is None and get_world_size() == 1:
            during_validation = getattr(loop, 'training_random_state', None)
            states = [during_validation or capture_random_state()]
        state = loop.resume_state(checkpoint['meta'])
        state['random'] = states or []
        checkpoint['resume_state'] = state
        if self._overrides:
            checkpoint['meta']['resumed_with_config'] = list(self._overrides)

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        loop = getattr(runner, '_train_loop', None)
        if not (getattr(runner, '_resume', False)
                and hasattr(loop, 'load_resume_state')):
            return
        state = dict(checkpoint.get('resume_state') or {})
        loop.load_resume_state(state, state.pop('random', None))
        meta = checkpoint.get('meta') or {}
        self._overrides = list(meta.get('resumed_with_config') or ())
        for line in self._overrides:  # checked: short printable lines
            runner.logger.warning(f'--resume-with-config: {line}; the '
                                  "config's value is used")
        if self._overrides and is_main_process():  # for mmdet-gc report
            write_atomically(
                osp.join(runner.log_dir, OVERRIDES_FILE),
                ''.join(f'{line}\n' for line in self._overrides).encode())


__all__ = [
    'ResumableCheckpointHook', 'PREEMPTED_EXIT', 'ATOMIC_BACKEND',
    'OVERRIDES_FILE'
]
