"""The wheel is the whole product: built from the sources, installed into a
fresh venv, it carries the configs and the ``mmdet-gc`` command, and trains
and tests without a checkout (Gradient Centralization: Yong et al., ECCV
2020).

The venv reuses this interpreter's installed dependencies through a ``.pth``
file (nothing is downloaded), and pip still checks the wheel's requirements
against them. Also here: the ``mmdet-gc`` dispatcher from the checkout.
"""
import os
import os.path as osp
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile

import pytest
import torch

import mmdet_gc
from mmdet_gc.cli import COMMANDS
from mmdet_gc.utils import InputError, config_path

from tool_helpers import (CONFIGS, DEMO, INSTALLED_ENV, ROOT, mim_configs,
                          run_tool, tiny_config)

DEMO_NAME = 'demo/mask-rcnn_r18-tiny_fpn_sgd-gc_synthetic.py'


def _run(cmd, cwd, ok=True):
    # The venv must find mmdet_gc in its own site-packages.
    proc = subprocess.run(cmd,
                          cwd=cwd,
                          env=INSTALLED_ENV,
                          capture_output=True,
                          text=True,
                          timeout=600)
    if ok and proc.returncode != 0:
        raise AssertionError(f'{cmd} failed:\n{proc.stdout[-2000:]}\n'
                             f'{proc.stderr[-3000:]}')
    return proc


@pytest.fixture(scope='module')
def venv(tmp_path_factory):
    """A fresh venv with the wheel built from a copy of the sources."""
    tmp = tmp_path_factory.mktemp('wheel')
    src = tmp / 'src'
    ignore = shutil.ignore_patterns('__pycache__', '*.egg-info', '*.so')
    # The sources a wheel is built from (what a source distribution holds):
    # configs/ is reached through the package's .mim/configs link.
    shutil.copytree(
        osp.join(ROOT, 'mmdet_gc'), src / 'mmdet_gc', symlinks=True,
        ignore=ignore)
    shutil.copytree(osp.join(ROOT, 'configs'), src / 'configs', ignore=ignore)
    for name in ('pyproject.toml', 'README.md', 'LICENSE'):
        shutil.copy(osp.join(ROOT, name), src / name)
    dist = tmp / 'dist'
    _run([
        sys.executable, '-m', 'pip', 'wheel', '--no-deps',
        '--no-build-isolation', '-q', '-w',
        str(dist),
        str(src)
    ], cwd=tmp)
    wheel, = dist.glob('mmdet_gc-*.whl')

    env = tmp / 'venv'
    _run([sys.executable, '-m', 'venv', '--without-pip', str(env)], cwd=tmp)
    python = str(env / 'bin' / 'python')
    purelib = _run([
        python, '-c', 'import sysconfig; print(sysconfig.get_paths()'
        '["purelib"])'
    ], cwd=tmp).stdout.strip()
    # Plain directories on sys.path: their own .pth files (the editable
    # mmdet_gc of the checkout) are not processed.
    with open(osp.join(purelib, 'deps.pth'), 'w') as f:
        f.write('\n'.join(site.getsitepackages()) + '\n')
    # pip of this interpreter installs into the venv and checks the wheel's
    # requirements against what it sees there.
    _run([
        sys.executable, '-m', 'pip', '--python', python, 'install',
        '--no-index', '-q',
        str(wheel)
    ], cwd=tmp)
    return dict(tmp=tmp, wheel=wheel, python=python,
                bin=str(env / 'bin'), purelib=purelib)


def test_wheel_carries_configs_and_entry_point(venv):
    names = zipfile.ZipFile(venv['wheel']).namelist()
    shipped = sorted(
        n.split('.mim/configs/')[1] for n in names
        if '.mim/configs/' in n and n.endswith('.py'))
    ours = sorted(
        osp.relpath(osp.join(d, f), osp.join(ROOT, 'configs'))
        for d, _, files in os.walk(osp.join(ROOT, 'configs')) for f in files
        if f.endswith('.py'))
    assert shipped == ours and len(ours) >= 17
    assert 'mmdet_gc/.mim/model-index.yml' in names
    assert 'mmdet_gc/.mim/configs/mask_rcnn/metafile.yml' in names
    assert 'mmdet_gc/.mim/configs/mask_rcnn/README.md' in names
    # The fused kernel's source, compiled on first use from the install.
    assert 'mmdet_gc/optim/csrc/sgd_gc_fused.cpp' in names
    assert 'mmdet_gc/optim/csrc/gc_fused_common.h' in names
    # The licence pyproject.toml declares.
    assert any(n.endswith('.dist-info/licenses/LICENSE')
               or n.endswith('.dist-info/LICENSE') for n in names), names
    entry = [n for n in names if n.endswith('entry_points.txt')]
    text = zipfile.ZipFile(venv['wheel']).read(entry[0]).decode()
    assert 'mmdet-gc = mmdet_gc.cli:main' in text

    out = _run([
        venv['python'], '-c', 'import mmdet_gc; print(mmdet_gc.__file__); '
        f'print(mmdet_gc.config_path({DEMO_NAME!r}))'
    ], cwd=venv['tmp']).stdout.split()
    # The installed copy, not the checkout's.
    assert all(p.startswith(venv['purelib']) for p in out), out
    assert osp.isfile(out[1])


def test_mim_finds_every_config_from_the_wheel(venv):
    assert mim_configs(venv['python'], str(venv['tmp'])) == CONFIGS


def test_wheel_trains_and_tests_from_an_inherited_config(venv, data_root):
    """``mmdet-gc train`` / ``test`` of a config that inherits ours by
    ``mmdet_gc::``, in a directory that is not the checkout."""
    work = venv['tmp'] / 'run'
    work.mkdir()
    cfg = tiny_config(
        work, data_root, max_iters=2, base=f'mmdet_gc::{DEMO_NAME}')
    mmdet_gc_cmd = osp.join(venv['bin'], 'mmdet-gc')
    _run([mmdet_gc_cmd, 'train', cfg, '--work-dir', 'w'], cwd=work)
    ckpt = work / 'w' / 'iter_2.pth'
    state = torch.load(ckpt, map_location='cpu')  # weights_only: plain
    assert state['meta']['iter'] == 2
    assert state['meta']['optimizer_type'] == 'SGD_GC'
    out = _run([mmdet_gc_cmd, 'test', cfg,
                str(ckpt), '--work-dir', 'wt'],
               cwd=work)
    assert 'coco/bbox_mAP' in out.stdout + out.stderr
    report = _run([mmdet_gc_cmd, 'report', 'wt'], cwd=work)
    assert '| wt |' in report.stdout


def test_wheel_runs_the_demo_outside_the_checkout(venv):
    """``mmdet-gc demo`` from the installed wheel: it makes the data, trains,
    tests and prints AP (2 iterations here)."""
    work = venv['tmp'] / 'demo'
    work.mkdir()
    out = _run([
        osp.join(venv['bin'], 'mmdet-gc'), 'demo', '--work-dir', 'w',
        '--data-root', 'data', '--max-iters', '2', '--num-train', '4',
        '--num-val', '2'
    ],
               cwd=work).stdout
    assert 'bbox mAP' in out and 'segm mAP' in out
    assert (work / 'data' / 'annotations' / 'instances_val.json').is_file()
    assert (work / 'w' / 'iter_2.pth').is_file()


def test_wheel_help_and_version(venv):
    out = _run([osp.join(venv['bin'], 'mmdet-gc'), '--help'],
               cwd=venv['tmp']).stdout
    assert all(name in out for name in COMMANDS)
    out = _run([osp.join(venv['bin'], 'mmdet-gc'), '--version'],
               cwd=venv['tmp']).stdout
    assert out.strip() == f'mmdet-gc {mmdet_gc.__version__}'


TOOLS = {
    'train': 'train.py',
    'test': 'test.py',
    'report': 'gc_report.py',
    'study': 'gc_study.py',
    'convert': 'convert_checkpoint.py',
    'demo': 'demo.py'
}


@pytest.mark.parametrize('command,tool', TOOLS.items())
def test_commands_have_the_flags_of_their_tools(command, tool):
    by_module = run_tool('-m', 'mmdet_gc', command, '--help').stdout
    by_tool = run_tool(f'tools/{tool}', '--help').stdout
    assert by_module.startswith(f'usage: mmdet-gc {command} ')
    # The same text but for the name (and where argparse wraps lines).
    assert by_module.replace(f'mmdet-gc {command}',
                             f'tools/{tool}').split() == by_tool.split()


def test_no_command_prints_the_usage_and_fails():
    proc = run_tool('-m', 'mmdet_gc', ok=False)
    assert proc.returncode == 2
    assert proc.stdout == '' and 'train' in proc.stderr


def test_unknown_command_is_one_line():
    proc = run_tool('-m', 'mmdet_gc', 'trian', ok=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "mmdet-gc: error: unknown command 'trian' (one of: train, test, "
        'report, study, convert, demo)'
    ]


def test_errors_name_the_command():
    proc = run_tool('-m', 'mmdet_gc', 'train', 'nope.py', ok=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == \
        'mmdet-gc train: error: config file not found: nope.py'
    proc = run_tool('tools/train.py', 'nope.py', ok=False)
    assert proc.stderr.strip() == \
        'tools/train.py: error: config file not found: nope.py'


@pytest.mark.parametrize('command', ['train', 'study'])
def test_unreadable_configs_and_options_are_one_line(command, tmp_path):
    """A config with a syntax error, a file MMEngine does not read as a
    config, and a ``--cfg-options`` value without ``=``: one line each,
    nothing written."""
    broken = tmp_path / 'broken.py'
    broken.write_text('x = (\n')
    not_config = tmp_path / 'weights.pth'
    not_config.write_bytes(b'PK')
    cases = [([str(broken)], 1, 'SyntaxError'),
             ([str(not_config)], 1, 'cannot read config'),
             ([DEMO, '--cfg-options', 'foo'], 2,
              "--cfg-options takes KEY=VALUE pairs; got 'foo'")]
    for args, status, words in cases:
        proc = run_tool('-m', 'mmdet_gc', command, *args, '--work-dir',
                        str(tmp_path / 'w'), ok=False)
        assert proc.returncode == status, proc.stderr
        assert 'Traceback' not in proc.stderr
        assert words in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / 'w').exists()


def test_config_path():
    path = config_path('mask_rcnn/mask-rcnn_r50_fpn_sgd-gc_1x_coco.py')
    assert osp.samefile(
        path,
        osp.join(ROOT, 'configs', 'mask_rcnn',
                 'mask-rcnn_r50_fpn_sgd-gc_1x_coco.py'))
    with pytest.raises(InputError, match="no config 'mask_rcnn/nope.py'"):
        config_path('mask_rcnn/nope.py')
    # Only files under configs/: no absolute paths, no way out, no modules.
    for name in ('/etc/passwd', '../mmdet_gc/__init__.py',
                 '../../mmdet_gc/__init__.py', 'demo'):
        with pytest.raises(InputError, match='has no config'):
            config_path(name)
    with pytest.raises(InputError, match='is a str'):
        config_path(None)


def test_checkout_install_has_the_command():
    """The checkout's own install (make setup) has the command too."""
    scripts = sysconfig.get_paths()['scripts']
    assert osp.isfile(osp.join(scripts, 'mmdet-gc'))
