"""The command-line flags ``tools/train.py`` and ``tools/test.py`` share
(MMDetection's), and ``--cfg-options`` that fails as a usage error.
"""
import argparse

from mmengine.config import DictAction


class CfgOptions(DictAction):
    """MMEngine's ``--cfg-options`` action; a value without ``=`` is a
    usage error (one line, exit status 2) instead of a traceback."""

    def __call__(self, parser, namespace, values, option_string=None):
        bad = [v for v in values if '=' not in v]
        if bad:
            parser.error(f'{option_string} takes KEY=VALUE pairs; got '
                         f'{bad[0]!r}')
        super().__call__(parser, namespace, values, option_string)


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
    add_launcher_arg(parser, 'job launcher')
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


def add_launcher_arg(parser: argparse.ArgumentParser, help: str) -> None:
    """MMDetection's ``--launcher`` (``none``, ``pytorch``, ``slurm``,
    ``mpi``), with the tool's own ``help``."""
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help=help)
