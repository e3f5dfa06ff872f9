"""Test (and evaluate) a detector checkpoint with MMDetection 3.x.

``mmdet-gc test`` and ``tools/test.py``: MMDetection's own ``tools/test.py``
flags; COCO box / mask AP come from
the config's ``test_evaluator`` (pycocotools). The checkpoint is checked
before the runner is built and loads under torch's ``weights_only=True``
with no allow-list; a foreign one needs ``--trust-checkpoint`` (see
:mod:`mmdet_gc.checkpoint`).
"""
import argparse
from typing import Any, Optional, Sequence, Tuple

from mmengine.config import Config, ConfigDict

import mmdet_gc  # noqa: F401  (GC optimizers, PlainCheckpointHook)
from mmdet_gc.checkpoint import CheckpointDoor
from mmdet_gc.cli.args import add_runner_args
from mmdet_gc.cli.build_checks import build_run_or_fail, check_run_parts
from mmdet_gc.cli.checkpoint_checks import check_checkpoint
from mmdet_gc.cli.config import load_config
from mmdet_gc.cli.data_checks import check_dataset_paths
from mmdet_gc.cli.launch import prepare_or_exit, run_through_door
from mmdet_gc.utils import InputError


def parse_args(argv: Optional[Sequence[str]] = None,
               prog: Optional[str] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog, description='MMDet test (and eval) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--out',
        type=str,
        help='dump predictions to a pickle file for offline evaluation')
    parser.add_argument(
        '--show', action='store_true', help='show prediction results')
    parser.add_argument(
        '--show-dir',
        help='directory where painted images will be saved. '
        'If specified, it will be automatically saved '
        'to the work_dir/timestamp/show_dir')
    parser.add_argument(
        '--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument(
        '--tta',
        action='store_true',
        help='test-time augmentation: the config\'s tta_model and '
        'tta_pipeline')
    parser.add_argument(
        '--intensity-shift',
        type=float,
        metavar='OFFSET',
        help='add OFFSET to every pixel value of the test images (clipped '
        'to 0..255), e.g. -40: the brightness-shift test of the GC study')
    add_runner_args(parser)
    args = parser.parse_args(argv)
    args.prog = parser.prog
    return args


def trigger_visualization_hook(cfg: Config,
                               args: argparse.Namespace) -> Config:
    default_hooks = cfg.default_hooks
    if 'visualization' not in default_hooks:
        raise InputError(
            'VisualizationHook must be included in default_hooks. '
            'refer to usage "visualization=dict(type=\'VisualizationHook\')"')
    visualizer_hook = default_hooks['visualization']
    visualizer_hook['draw'] = True
    if args.show:
        visualizer_hook['show'] = True
        visualizer_hook['wait_time'] = args.wait_time
    if args.show_dir:
        visualizer_hook['test_out_dir'] = args.show_dir
    return cfg


def build_cfg(args: argparse.Namespace,
              door: CheckpointDoor) -> Tuple[Config, None]:
    """The run's config from the flags, with the checkpoint read through
    ``door``; raises InputError on bad input."""
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        raise InputError(f'--out must be a .pkl or .pickle file: {args.out}')
    cfg = load_config(args)
    check_run_parts(cfg)
    build_run_or_fail(cfg, optimizer=False)
    check_checkpoint(
        door, args.checkpoint, 'test', trust=args.trust_checkpoint)
    cfg.load_from = args.checkpoint

    if args.show or args.show_dir:
        cfg = trigger_visualization_hook(cfg, args)

    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise InputError('--tta needs tta_model and tta_pipeline in the '
                             'config')
        cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
        _test_dataset(cfg).pipeline = cfg.tta_pipeline

    if args.intensity_shift:
        add_intensity_shift(cfg, args.intensity_shift)
    check_dataset_paths(cfg, ('test_dataloader', ))
    return cfg, None  # the runner builds its own model for testing


def _test_dataset(cfg: Config) -> ConfigDict:
    """The test dataset inside mmdet's dataset wrappers."""
    dataset = cfg.test_dataloader.dataset
    while 'dataset' in dataset:
        dataset = dataset['dataset']
    return dataset


def add_intensity_shift(cfg: Config, offset: float) -> None:
    """Insert ``IntensityShift(offset)`` after the image is loaded in the
    test pipeline."""
    pipeline = _test_dataset(cfg).pipeline
    loads = [
        i for i, t in enumerate(pipeline) if 'LoadImage' in str(t['type'])
    ]
    if not loads:
        raise InputError('--intensity-shift needs a test pipeline that loads '
                         'images (no LoadImage* transform found)')
    pipeline.insert(loads[0] + 1,
                    ConfigDict(type='IntensityShift', offset=offset))


def main(argv: Optional[Sequence[str]] = None,
         prog: Optional[str] = None) -> None:
    """Run the command (``argv``: its arguments, default ``sys.argv[1:]``;
    ``prog``: its name in usage and error lines)."""
    args = parse_args(argv, prog)
    cfg, door, _ = prepare_or_exit(build_cfg, args, args.prog)

    def test(runner: Any) -> None:
        if args.out is not None:
            from mmdet.evaluation import DumpDetResults
            runner.test_evaluator.metrics.append(
                DumpDetResults(out_file_path=args.out))
        runner.test()

    run_through_door(cfg, door, args.prog, test)


if __name__ == '__main__':
    main()
