"""Training loops that resume a run exactly where it stopped.

:class:`ResumableIterBasedTrainLoop` and :class:`ResumableEpochBasedTrainLoop`
are MMEngine's ``IterBasedTrainLoop`` and ``EpochBasedTrainLoop`` (same
arguments, hooks and validation) over a :func:`positioned_dataloader`, with
three differences that make a resumed run bitwise equal to one never
interrupted:

- resuming at iteration ``k`` (also within an epoch) skips ``k`` batches of
  the sampler's index stream without loading them, and an epoch resumed in
  the middle continues at its next batch;
- the random states a checkpoint carries
  (:class:`~mmdet_gc.engine.hooks.ResumableCheckpointHook`) are restored
  right before the first iteration;
- validation and the start of a dataloader pass keep the training's random
  states as they were, so that what a checkpoint saved is what the next
  iteration draws from.
"""
import logging
from typing import Any, Dict, Optional, Sequence

import torch
from mmengine.dataset import InfiniteSampler
from mmengine.dist import get_rank, get_world_size
from mmengine.logging import print_log
from mmengine.runner.loops import EpochBasedTrainLoop, IterBasedTrainLoop
from mmengine.runner.utils import calc_dynamic_intervals

from ...checkpoint.errors import CheckpointError
from ...utils.random_state import (capture_random_state, random_state_kept,
                                   restore_random_state)
from .data_position import positioned_dataloader


class _Resumable:
    """What both loops share: the positioned dataloader, the resume state a
    checkpoint carries and its restoration."""

    def _build_dataloader(self, runner: Any, dataloader: Any) -> Any:
        if isinstance(dataloader, dict):
            diff_rank_seed = runner._randomness_cfg.get(
                'diff_rank_seed', False)
            dataloader = runner.build_dataloader(
                dataloader, seed=runner.seed, diff_rank_seed=diff_rank_seed)
        self._pending: Optional[Dict[str, Any]] = None
        self._epoch_start_iter = 0
        self.training_random_state: Optional[Dict[str, Any]] = None
        return positioned_dataloader(dataloader, runner.seed or 0,
                                     get_rank())

    @property
    def _sampler(self) -> Any:
        return self.dataloader.batch_sampler.sampler.sampler

    def resume_state(self, meta: dict) -> Dict[str, Any]:
        """Where the stream is for a checkpoint with ``meta`` (its epoch
        and iteration counters): the batches of the current epoch already
        trained, and what exactness depends on."""
        batch = 0
        if meta.get('epoch') == self._epoch:  # saved within an epoch
            batch = meta['iter'] - self._epoch_start_iter
        return dict(
            batch=int(batch),
            world_size=get_world_size(),
            num_workers=self.dataloader.num_workers)

    def load_resume_state(self, state: Dict[str, Any],
                          random_states: Optional[list]) -> None:
        """Keep a checkpoint's state for the start of :meth:`run` (the
        runner sets the random seed again after loading)."""
        self._pending = dict(state, random=random_states)

    def _start(self) -> int:
        """Restore what a resumed checkpoint saved; the batches of the
        current pass to skip."""
        pending, self._pending = self._pending, None
        seed = self.runner.seed or 0
        self.dataloader.dataset.seed = seed
        if hasattr(self._sampler, 'seed') and self.runner.seed is not None:
            self._sampler.seed = self.runner.seed
        if pending is None:
            return 0
        rank, world = get_rank(), get_world_size()
        exact = True
        if torch.cuda.is_available() and \
                not torch.are_deterministic_algorithms_enabled():
            print_log(
                'CUDA kernels that are not deterministic may run (set '
                'randomness=dict(deterministic=True)): the resumed run may '
                'differ from an uninterrupted one in the last bits',
                logger='current', level=logging.WARNING)
        if pending.get('world_size') != world:
            exact = False
            print_log(
                f'resumed from a run of {pending.get("world_size")} '
                f'processes with {world}: the data order and random numbers '
                'differ from that run\'s from here (not bitwise exact)',
                logger='current', level=logging.WARNING)
        states = pending.get('random') or []
        if len(states) == world and exact:
            if not restore_random_state(states[rank]):
                print_log(
                    'the checkpoint\'s CUDA random states are for another '
                    'number of devices: not restored (not bitwise exact)',
                    logger='current', level=logging.WARNING)
        elif not states:
            print_log(
                'the checkpoint has no random states (saved by another '
                'tool): the data order continues, the random numbers do '
                'not (not bitwise exact)',
                logger='current', level=logging.WARNING)
        return int(pending.get('batch', 0))

    def _stop_workers(self) -> None:
        """Shut the dataloader's workers down now, as its iterator does
        when it is collected: they ignore the SIGTERM that
        ``multiprocessing`` would send them at exit (a preemption signal
        is the main process's to handle)."""
        passes = getattr(self, 'dataloader_iterator', None)
        if hasattr(passes, 'close'):
            passes.close()
        for iterator in (getattr(self, '_batches', None),
                         getattr(self.dataloader, '_iterator', None)):
            if hasattr(iterator, '_shutdown_workers'):
                iterator._shutdown_workers()
        self._batches = self.dataloader._iterator = None

    def _validate(self) -> None:
        """Validate without moving the training's random states (a
        checkpoint saved during validation, e.g. ``save_best``'s, carries
        them as they were when it started)."""
        with random_state_kept():
            self.training_random_state = capture_random_state()
            try:
                self.runner.val_loop.run()
            finally:
                self.training_random_state = None


class ResumableIterBasedTrainLoop(_Resumable, IterBasedTrainLoop):
    """MMEngine's ``IterBasedTrainLoop`` that resumes exactly and at once
    (see the module)."""

    def __init__(
            self,
            runner: Any,
            dataloader: Any,
            max_iters: int,
            val_begin: int = 1,
            val_interval: int = 1000,
            dynamic_intervals: Optional[Sequence] = None) -> None:
        # Not IterBasedTrainLoop.__init__: it starts iterating the
        # dataloader (and its workers) before the run knows where to start.
        self._runner = runner
        self.dataloader = self._build_dataloader(runner, dataloader)
        self._max_iters = int(max_iters)
        assert self._max_iters == max_iters, \
            f'`max_iters` should be a integer number, but get {max_iters}'
        self._max_epochs = 1
        self._epoch = 0
        self._iter = 0
        self.val_begin = val_begin
        self.val_interval = val_interval
        self.stop_training = False
        if hasattr(self.dataloader.dataset, 'metainfo'):
            runner.visualizer.dataset_meta = self.dataloader.dataset.metainfo
        self.dataloader_iterator = None
        self.dynamic_milestones, self.dynamic_intervals = \
            calc_dynamic_intervals(self.val_interval, dynamic_intervals)

    def resume_state(self, meta: dict) -> Dict[str, Any]:
        return dict(super().resume_state(dict(meta, epoch=None)),
                    batch=int(meta['iter']))

    def _passes(self, done: int) -> Any:
        """Batches from the ``done``-th of the run on, pass after pass (one
        endless pass with ``InfiniteSampler``)."""
        per_pass = None if isinstance(self._sampler, InfiniteSampler) \
            else len(self.dataloader)
        epoch, skip = (0, done) if not per_pass else divmod(done, per_pass)
        while True:
            self.dataloader.batch_sampler.sampler.set_epoch(epoch)
            self.dataloader.batch_sampler.skip = skip
            with random_state_kept():
                self._batches = iter(self.dataloader)
            yield from self._batches
            epoch, skip = epoch + 1, 0

    def run(self) -> Any:
        """Launch training (as MMEngine's, from where the run stopped)."""
        self.runner.call_hook('before_train')
        self.runner.call_hook('before_train_epoch')
        self._start()
        self.dataloader_iterator = self._passes(self._iter)
        try:
            while self._iter < self._max_iters and not self.stop_training:
                self.runner.model.train()
                data_batch = next(self.dataloader_iterator)
                self.run_iter(data_batch)
                self._decide_current_val_interval()
                if (self.runner.val_loop is not None
                        and self._iter >= self.val_begin
                        and (self._iter % self.val_interval == 0
                             or self._iter == self._max_iters)):
                    self._validate()
        finally:
            self._stop_workers()
        self.runner.call_hook('after_train_epoch')
        self.runner.call_hook('after_train')
        return self.runner.model


class ResumableEpochBasedTrainLoop(_Resumable, EpochBasedTrainLoop):
    """MMEngine's ``EpochBasedTrainLoop`` that resumes exactly, also within
    an epoch (see the module)."""

    def __init__(self, runner: Any, dataloader: Any, *args: Any,
                 **kwargs: Any) -> None:
        super().__init__(runner, self._build_dataloader(runner, dataloader),
                         *args, **kwargs)

    def run(self) -> Any:
        """Launch training (as MMEngine's, from where the run stopped)."""
        self.runner.call_hook('before_train')
        self._resume_batch: Optional[int] = None
        try:
            while self._epoch < self._max_epochs and not self.stop_training:
                self.run_epoch()
                self._decide_current_val_interval()
                if (self.runner.val_loop is not None
                        and self._epoch >= self.val_begin
                        and (self._epoch % self.val_interval == 0
                             or self._epoch == self._max_epochs)):
                    self._validate()
        finally:
            self._stop_workers()
        self.runner.call_hook('after_train')
        return self.runner.model

    def run_epoch(self) -> None:
        """Iterate one epoch, from its first batch not yet trained."""
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        first = self._start() if self._resume_batch is None else 0
        self._resume_batch = first
        length = len(self.dataloader)
        if first and (first > length
                      or self._iter - first != self._epoch * length):
            # The checks before the run compare the position with the
            # file's counters; the epoch's length is known only here.
            raise CheckpointError(
                f'the checkpoint\'s position, batch {first} of epoch '
                f'{self._epoch + 1} at iteration {self._iter}, is not one of '
                f'this run, whose epochs have {length} batches')
        self._epoch_start_iter = self._iter - first
        self.dataloader.batch_sampler.sampler.set_epoch(self._epoch)
        self.dataloader.batch_sampler.skip = first
        with random_state_kept():
            self._batches = iter(self.dataloader)
        for idx, data_batch in enumerate(self._batches, start=first):
            self.run_iter(idx, data_batch)
        self._batches = None
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1
        self._epoch_start_iter = self._iter


__all__ = ['ResumableIterBasedTrainLoop', 'ResumableEpochBasedTrainLoop']
