"""Rewrite a trusted MMEngine checkpoint into mmdet-gc's plain form, once.

Checkpoints written by stock MMEngine 0.10 hold ``HistoryBuffer`` objects
and numpy arrays, which ``torch.load(weights_only=True)`` refuses. If you
trust such a file (you made it), this loads it once with
``weights_only=False`` and writes OUT, which holds only tensors, numbers,
strings and containers: stock ``torch.load`` loads it, and ``tools/test.py``
and ``--resume`` take it with no opt-in. Nothing else changes (weights,
optimizer state, iteration, logged history).

    mmdet-gc convert IN OUT --trust
    python tools/convert_checkpoint.py IN OUT --trust   (from a checkout)
"""
import argparse
import sys
from typing import Optional, Sequence

from mmdet_gc.checkpoint import (CheckpointError, ForeignCheckpointError,
                                 convert_checkpoint)


def parse_args(argv: Optional[Sequence[str]] = None,
               prog: Optional[str] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog,
        description='Rewrite a trusted checkpoint into plain data that '
        'torch.load(weights_only=True) accepts')
    parser.add_argument('src', help='the checkpoint to convert (IN)')
    parser.add_argument('dst', help='where to write the plain copy (OUT)')
    parser.add_argument(
        '--trust',
        action='store_true',
        help='load IN with weights_only=False. A file loaded this way can '
        'run any code: only for a checkpoint you made or trust')
    args = parser.parse_args(argv)
    args.prog = parser.prog
    return args


def main(argv: Optional[Sequence[str]] = None,
         prog: Optional[str] = None) -> None:
    """Run the command (``argv``: its arguments, default ``sys.argv[1:]``;
    ``prog``: its name in usage and error lines)."""
    args = parse_args(argv, prog)
    tool = args.prog
    if args.trust:
        print(
            f'warning: --trust: loading {args.src} with weights_only=False; '
            'a file loaded this way can run any code',
            file=sys.stderr)
    try:
        # Loaded once: with weights_only=True unless --trust.
        needed = convert_checkpoint(args.src, args.dst, trust=args.trust)
    except ForeignCheckpointError as e:
        sys.exit(f'{tool}: error: {args.src} holds objects that '
                 'torch.load(weights_only=True) refuses '
                 f'({", ".join(e.names)}); converting loads it with '
                 'weights_only=False, which can run code in it: add --trust '
                 'only if you made or trust this file')
    except CheckpointError as e:
        sys.exit(f'{tool}: error: {e}')
    except OSError as e:
        sys.exit(f'{tool}: error: cannot write {args.dst}: {e.strerror}')
    named = ', '.join(needed) or 'none: it was plain already'
    print(f'wrote {args.dst}; globals named in {args.src}, not needed any '
          f'more: {named}')


if __name__ == '__main__':
    main()
