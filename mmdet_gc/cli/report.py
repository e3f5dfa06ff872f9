"""Compare work dirs (e.g. baseline vs GC): COCO table and curves.

    mmdet-gc report WORK_DIR [WORK_DIR ...] [--names a b] [--plot curves.png]
    python tools/gc_report.py ...   (the same, from a checkout)

Prints the paper-style markdown table (box / mask AP, AP50, AP75, APs, APm,
APl, in %) from each run's tools/test.py metrics, or its last validation,
with each run's optimizer and lr (from the config MMEngine dumped into the
work dir), and a row per later run of its difference to the first, in AP
points; draws training-loss and AP curves with matplotlib, one colour per
run. A work dir is untrusted input: what is malformed, or too large to
draw, is skipped with one warning line.
"""
import argparse
import sys
from typing import Optional, Sequence

from mmdet_gc.study import ReportError, markdown_table, plot_curves, read_run


def main(argv: Optional[Sequence[str]] = None,
         prog: Optional[str] = None) -> None:
    """Run the command (``argv``: its arguments, default ``sys.argv[1:]``;
    ``prog``: its name in usage and error lines)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.split('\n')[0])
    parser.add_argument(
        'work_dirs',
        nargs='+',
        help='work dirs of tools/train.py (or test.py) runs to compare, '
        'the baseline first')
    parser.add_argument('--names', nargs='+', help='a label per work dir')
    parser.add_argument('--plot', help='write the curves to this PNG')
    args = parser.parse_args(argv)
    tool = parser.prog
    if args.names and len(args.names) != len(args.work_dirs):
        sys.exit(f'{tool}: error: --names needs one label per '
                 f'work dir ({len(args.work_dirs)})')
    names = args.names or [None] * len(args.work_dirs)
    try:
        runs = [read_run(d, n) for d, n in zip(args.work_dirs, names)]
    except ReportError as e:
        sys.exit(f'{tool}: error: {e}')
    print(markdown_table(runs))
    for run in runs:
        if run.final is None:
            print(
                f'\nnote: {run.name} has no COCO metrics yet (not '
                'evaluated, or its evaluation found nothing to score); its '
                'row is empty',
                file=sys.stderr)
    if args.plot:
        try:
            plot_curves(runs, args.plot)
        except OSError as e:
            sys.exit(f'{tool}: error: {args.plot}: cannot write it '
                     f'({e.strerror or e})')
        print(f'\ncurves: {args.plot}')


if __name__ == '__main__':
    main()
