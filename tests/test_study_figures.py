"""The study's figures: one colour per arm in every panel, and logged
values too large to draw left out with one warning line."""
import json

import pytest
from matplotlib.colors import to_hex
from test_study import _fake_study, _fake_sweep, _scalars

from mmdet_gc.study import (plot_study, plot_sweep, read_study, summarize,
                            write_report)

from tool_helpers import DEMO


def _colours(fig):
    """Per label, the colours it is drawn in, over every panel (lines and
    dots)."""
    out = {}
    for ax in fig.axes:
        for artist in ax.lines + ax.collections:
            name = artist.get_label()
            if name.startswith('_'):  # unlabelled: the seeds' grey lines
                continue
            colour = artist.get_color() if artist in ax.lines else \
                artist.get_facecolor()[0]
            out.setdefault(name, set()).add(to_hex(colour))
    return out


def test_study_figure_gives_an_arm_one_colour_in_every_panel(tmp_path):
    results = read_study(str(_fake_study(tmp_path / 'study')))
    fig = plot_study(results, summarize(results))
    colours = _colours(fig)
    assert set(colours) == {'base', 'SGD_GC'}
    assert all(len(c) == 1 for c in colours.values()), colours
    assert colours['base'] != colours['SGD_GC']
    # Loss, offsets, box and mask AP: every panel draws both arms.
    for ax in fig.axes:
        labels = {a.get_label() for a in ax.lines + ax.collections}
        assert {'base', 'SGD_GC'} <= labels


def test_sweep_figure_gives_an_arm_one_colour_in_every_panel(tmp_path):
    results = read_study(str(_fake_sweep(tmp_path / 'sweep')), 0.05)
    summary = summarize(results, config_lr=0.04)
    fig = plot_sweep(results, summary['sweep'])
    colours = _colours(fig)
    assert set(colours) == {'base', 'SGD_GC'}
    assert all(len(c) == 1 for c in colours.values()), colours
    # Every seed's dot in its arm's colour.
    dots = {
        to_hex(c)
        for ax in fig.axes[1:]
        for d in ax.collections
        for c in d.get_facecolor()
    }
    assert dots == set.union(*colours.values())


@pytest.mark.parametrize(
    'losses', [[1e308, 1.5], [2.0, -1e308], [1e308, -1e308]],
    ids=['1e308', '-1e308', 'mix'])
def test_study_report_leaves_out_what_it_cannot_draw(tmp_path, capsys, losses):
    """``mmdet-gc study --report-only`` with a logged loss matplotlib cannot
    draw: status 0, report.md and .json as without it, the figure of the
    rest, one warning line."""
    from mmdet_gc.cli.study import main
    want, _ = write_report(str(_fake_study(tmp_path / 'clean')))
    work = _fake_study(tmp_path / 'study')
    # The figure's band: the iterations every run of the arm logged.
    _scalars(work, 'base', 1).write_text(''.join(
        json.dumps(dict(iter=i, loss=loss)) + '\n'
        for i, loss in enumerate(losses, 1)))
    main([DEMO, '--report-only', '--work-dir', str(work)])  # status 0
    out = capsys.readouterr()
    assert want in out.out
    assert (work / 'report.md').read_text() == want + '\n'
    assert json.load(open(work / 'report.json'))['arms']['base']['ok'] == 3
    steps = [i for i, v in enumerate(losses, 1) if abs(v) > 1e100]
    png = work / 'report.png'
    assert out.err.splitlines() == [
        f'warning: skipped {len(steps)} undrawable value'
        f'{"s" if len(steps) > 1 else ""} in {png}: loss beyond ±1e+100 (' +
        ', '.join(f'base seed 1 step {i}' for i in steps) + ')'
    ]
    assert png.read_bytes()[:4] == b'\x89PNG'
