"""The ``mmdet-gc`` command: train, test, report, study and convert.

Installed with the package (a console entry point; ``python -m mmdet_gc``
is the same), so a wheel runs every README command without a checkout::

    mmdet-gc train CONFIG [--gc SGD_GC] [train flags]
    mmdet-gc test CONFIG CHECKPOINT [test flags]
    mmdet-gc report WORK_DIR [WORK_DIR ...]
    mmdet-gc study CONFIG --gc SGD_GC --seeds 0 1 2
    mmdet-gc convert IN OUT --trust
    mmdet-gc demo [--work-dir work_dirs/demo]

Each command takes exactly the flags of its ``tools/*.py`` script, which
are thin wrappers around the same modules.
"""
import importlib
import sys
import warnings
from typing import Optional, Sequence

# MMEngine 0.10 imports setuptools' pkg_resources when it looks packages
# up, which warns on every run of every command; it is MMEngine's, and
# nothing a user of these commands can act on.
warnings.filterwarnings(
    'ignore', message='pkg_resources is deprecated', category=UserWarning)

#: command -> (module of this package, what it does)
COMMANDS = {
    'train': ('train', 'train a detector (mmdet tools/train.py flags, --gc)'),
    'test': ('test', 'test a checkpoint: COCO box / mask AP'),
    'report': ('report', 'paper-style table and curves of work dirs'),
    'study': ('study', 'a paired GC study: arms x seeds, then its report'),
    'convert': ('convert', 'rewrite a trusted checkpoint as plain data'),
    'demo': ('demo', 'synthetic COCO, train Mask R-CNN with SGD_GC, AP'),
}

PROG = 'mmdet-gc'


def usage() -> str:
    lines = [f'usage: {PROG} COMMAND [ARGS ...]', '', 'commands:']
    lines += [f'  {name:<9} {text}' for name, (_, text) in COMMANDS.items()]
    lines += [
        '', f'{PROG} COMMAND --help gives the flags of one command; '
        f'{PROG} --version the version.'
    ]
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Run ``mmdet-gc COMMAND ARGS`` (``argv`` defaults to
    ``sys.argv[1:]``). Only the chosen command's module is imported."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # a command is required, as argparse has it: status 2
        print(usage(), file=sys.stderr)
        sys.exit(2)
    if argv[0] in ('-h', '--help'):
        print(usage())
        return
    if argv[0] == '--version':
        from mmdet_gc import __version__
        print(f'{PROG} {__version__}')
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        sys.exit(f'{PROG}: error: unknown command {command!r} (one of: '
                 f'{", ".join(COMMANDS)})')
    module = importlib.import_module(f'{__name__}.{COMMANDS[command][0]}')
    module.main(rest, prog=f'{PROG} {command}')
