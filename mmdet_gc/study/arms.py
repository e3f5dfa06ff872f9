"""The arms of a study and the folders they train into.

Layout of a study's work dir: ``WORK/<arm>/seed<N>/`` is one
``mmdet-gc train`` run; its ``shift<OFFSET>/`` subfolders hold the
``mmdet-gc test`` evaluations of the final checkpoint under brightness
offsets (``shift0`` is the plain test); ``row_mean_drift.json`` (from
:class:`~mmdet_gc.engine.hooks.RowMeanDriftHook`) the drift of the weight
row means; ``train.done`` / ``train.failed`` mark how training ended.
"""
import math
import os.path as osp
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence

#: A run's folder, as :func:`run_dir` names it.
SEED_DIR = re.compile(r'seed(0|[1-9][0-9]*)')
#: An arm at a learning rate of its own, as :attr:`Arm.name` spells it.
ARM_LR = re.compile(r'(.+)_lr([^_]+)')


@dataclass(frozen=True)
class Arm:
    """One arm of a study: the config's optimizer or a GC one, at the
    config's lr or another."""
    gc: Optional[str] = None
    lr: Optional[float] = None

    @property
    def family(self) -> str:
        """``base`` or the GC optimizer's name: the arm at any lr."""
        return self.gc or 'base'

    @property
    def name(self) -> str:
        return self.family if self.lr is None else \
            f'{self.family}_lr{self.lr:g}'

    @classmethod
    def from_name(cls, name: str) -> 'Arm':
        """The arm that :attr:`name` names: ``base``, ``SGD_GC``,
        ``SGD_GC_lr0.08``; any other folder name is an arm at the config's
        lr."""
        match = ARM_LR.fullmatch(name)
        family, lr = name, None
        if match:
            try:
                value = float(match.group(2))
            except ValueError:
                value = math.nan
            if 0 < value < math.inf and f'{value:g}' == match.group(2):
                family, lr = match.group(1), value
        return cls(None if family == 'base' else family, lr)


def make_arms(gc: Sequence[str], lrs: Sequence[float] = ()) -> List[Arm]:
    """The base arm and one arm per ``--gc`` name, at the config's lr and at
    each of ``lrs``."""
    out = []
    for lr in [None, *lrs]:
        out += [Arm(None, lr)] + [Arm(g, lr) for g in gc]
    return out


def run_name(arm: Arm, seed: int) -> str:
    """``ARM:SEED``, how ``--only`` names one run."""
    return f'{arm.name}:{seed}'


def run_dir(work: str, arm: Arm, seed: int) -> str:
    return osp.join(work, arm.name, f'seed{seed}')


def shift_dir(run: str, shift: float) -> str:
    return osp.join(run, f'shift{shift:g}')
