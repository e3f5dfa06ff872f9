"""A training dataloader that can start at any batch of its stream without
loading the batches before it, and whose data augmentation is a function
of the sample's place in that stream.

MMEngine resumes an iteration-based run by loading (and augmenting) every
batch already trained, and an epoch-based one only at an epoch's end. Here
the batch sampler skips ``k`` batches by drawing their indices alone, and
every sample is loaded with python's, numpy's and torch's generators seeded
from ``(run seed, rank, epoch, position in the epoch's index stream)``:
what a sample's transforms draw (a random flip, a crop) is the same in a
resumed run, in any worker, with any number of workers, and it never moves
the training process's own generators.
"""
import random
import signal
import sys
from typing import Any, Callable, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader

from ...utils.random_state import random_state_kept


class PositionedIndex(int):
    """A dataset index that knows its place in the sampler's stream."""

    def __new__(cls, index: int, key: Tuple[int, ...]) -> 'PositionedIndex':
        obj = super().__new__(cls, index)
        obj.key = key
        return obj

    def __reduce__(self) -> tuple:  # to the dataloader's workers
        return PositionedIndex, (int(self), self.key)


class PositionedSampler:
    """A sampler whose indices carry ``(rank, epoch, position)``.

    Args:
        sampler: The run's sampler (``DefaultSampler``, ``InfiniteSampler``,
            ...); every other attribute is its.
        rank (int): This process's rank.
    """

    def __init__(self, sampler: Any, rank: int) -> None:
        self.sampler = sampler
        self.rank = rank

    def __iter__(self) -> Iterator[PositionedIndex]:
        epoch = int(getattr(self.sampler, 'epoch', 0))
        for position, index in enumerate(self.sampler):
            yield PositionedIndex(index, (self.rank, epoch, position))

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, 'set_epoch'):
            self.sampler.set_epoch(epoch)

    def __getattr__(self, name: str) -> Any:
        if name.startswith('__') or name == 'sampler':
            raise AttributeError(name)
        return getattr(self.sampler, name)


class SkippingBatchSampler:
    """A batch sampler whose next pass starts ``skip`` batches in.

    The skipped batches are drawn from the wrapped batch sampler (indices
    only: no sample is loaded), so its own state (e.g. the aspect-ratio
    buckets of mmdet's ``AspectRatioBatchSampler``) is what it would have
    been.
    """

    def __init__(self, batch_sampler: Any, rank: int) -> None:
        self.batch_sampler = batch_sampler
        if not isinstance(batch_sampler.sampler, PositionedSampler):
            batch_sampler.sampler = PositionedSampler(batch_sampler.sampler,
                                                      rank)
        self.skip = 0

    @property
    def sampler(self) -> PositionedSampler:
        """The positioned sampler (MMEngine's ``DistSamplerSeedHook`` calls
        its ``set_epoch``)."""
        return self.batch_sampler.sampler

    def __iter__(self) -> Iterator[List[int]]:
        # ``skip`` is taken when the first batch is drawn: torch's
        # multi-worker iterator calls ``iter`` twice and draws from the
        # second.
        batches = iter(self.batch_sampler)
        skip, self.skip = self.skip, 0
        for _ in range(skip):
            if next(batches, None) is None:
                return
        yield from batches

    def __len__(self) -> int:
        return len(self.batch_sampler)


def sample_seed(seed: int, key: Tuple[int, ...]) -> int:
    """The seed of one sample's transforms."""
    return int(np.random.SeedSequence([seed, *key]).generate_state(1)[0])


class SeededDataset(torch.utils.data.Dataset):
    """The run's dataset, each sample loaded with generators seeded from
    its place in the stream (:func:`sample_seed`) and the caller's
    generators left as they were.

    Every attribute other than ``dataset`` and ``seed`` is the dataset's
    (``metainfo``, ``get_data_info``...).
    """

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __getitem__(self, index: int) -> Any:
        key = getattr(index, 'key', None)
        if key is None:
            return self.dataset[index]
        seed = sample_seed(self.seed, key)
        # Per sample, on the CPU: the CUDA generators are not seeded here.
        with random_state_kept(cuda=False):
            random.seed(seed)
            np.random.seed(seed)
            torch.default_generator.manual_seed(seed)
            return self.dataset[int(index)]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        if name.startswith('__') or name in ('dataset', 'seed'):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _die_with_parent() -> None:
    """Linux: end this process when its parent ends. A worker whose main
    process was killed (SIGKILL, out of memory) otherwise waits forever at
    exit to flush prefetched batches nobody reads."""
    try:
        import ctypes
        libc = ctypes.CDLL('libc.so.6', use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _worker_init(init: Optional[Callable[[int], None]],
                 worker_id: int) -> None:
    """A worker leaves preemption signals to the main process, which
    finishes its iteration, saves and stops the workers itself, and it
    does not outlive a killed main process."""
    for name in ('SIGTERM', 'SIGUSR1'):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    if sys.platform.startswith('linux'):
        _die_with_parent()
    if init is not None:
        init(worker_id)


def positioned_dataloader(dataloader: DataLoader, seed: int,
                          rank: int) -> DataLoader:
    """``dataloader`` rebuilt over :class:`SeededDataset` and a
    :class:`SkippingBatchSampler` (same workers, collate function, memory
    pinning...). No worker starts until it is iterated."""
    import functools
    if isinstance(dataloader.batch_sampler, SkippingBatchSampler):
        return dataloader
    workers = dataloader.num_workers
    extra = {}
    if hasattr(dataloader, 'in_order'):
        extra['in_order'] = dataloader.in_order
    return DataLoader(
        SeededDataset(dataloader.dataset, seed),
        batch_sampler=SkippingBatchSampler(dataloader.batch_sampler, rank),
        num_workers=workers,
        collate_fn=dataloader.collate_fn,
        pin_memory=dataloader.pin_memory,
        timeout=dataloader.timeout,
        worker_init_fn=functools.partial(_worker_init,
                                         dataloader.worker_init_fn),
        multiprocessing_context=dataloader.multiprocessing_context,
        generator=dataloader.generator,
        prefetch_factor=dataloader.prefetch_factor if workers else None,
        persistent_workers=dataloader.persistent_workers,
        pin_memory_device=dataloader.pin_memory_device,
        **extra)
