"""A checkpoint is untrusted input: crafted files run no code, reach no
numpy state and get one line from the tools; our own checkpoints are plain
data that stock ``torch.load(weights_only=True)`` loads; foreign ones need
the user's per-file consent (Gradient Centralization, Yong et al., ECCV
2020: the runs of this package must be safe to resume and test)."""
import builtins
import collections
import json
import os
import os.path as osp
import pickle
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer

import mmdet_gc  # noqa: F401  (must not change what torch.load accepts)
from mmdet_gc.checkpoint import (TAG, CheckpointError, ForeignCheckpointError,
                                 from_plain, inspect_checkpoint,
                                 read_checkpoint, to_plain)

from tool_helpers import load, run_tool, tiny_config

try:  # numpy >= 2
    from numpy._core import multiarray
except ImportError:  # numpy 1.x
    from numpy.core import multiarray


class Reduce:
    """Pickles as ``func(*args)``, then ``__setstate__(state)``: how an
    attacker writes a pickle by hand."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        if self.state is None:
            return self.func, self.args
        return self.func, self.args, self.state


def craft(path, payload):
    """A checkpoint-shaped file (weights, meta) that carries ``payload``."""
    torch.save(
        {
            'state_dict': {
                'w': torch.zeros(2)
            },
            'meta': {
                'epoch': 0,
                'iter': 1
            },
            'message_hub': {
                'log_scalars': {
                    'x': payload
                },
                'runtime_info': {},
                'resumed_keys': {}
            }
        }, str(path))
    return str(path)


def attack(name, canary):
    """One crafted payload of each attack class; ``canary`` is the file the
    code-running ones would write."""
    code = f'open({str(canary)!r}, "w").write("pwned")'
    rebuild = torch._tensor._rebuild_from_type_v2  # allowed by torch
    return {
        # An allow-listed class whose __setstate__ writes class-level state.
        'setstate on shared state':
        Reduce(HistoryBuffer, (), {
            'statistics_methods': {
                '__getattribute__': 'x',
                '__subclasses__': 'y'
            }
        }),
        # getattr reaching dunder attributes.
        'getattr gadget':
        Reduce(builtins.getattr, (torch.Tensor, '__subclasses__')),
        # A numpy dtype whose fields contradict its itemsize.
        'numpy dtype with contradictory fields':
        Reduce(np.dtype, ('V8', False, True), (3, '|', None, ('a', ), {
            'a': (np.dtype('f8'), 1000)
        }, 8, 1, 16)),
        'numpy array (_reconstruct)':
        Reduce(multiarray._reconstruct, (np.ndarray, (0, ), b'b')),
        # A callable torch allows by default, used to reach others.
        'allowed callable reaching exec':
        Reduce(rebuild, (builtins.exec, torch.Tensor, (code, ), {})),
        'allowed callable reaching getattr':
        Reduce(rebuild, (builtins.getattr, torch.Tensor,
                         (torch.Tensor, '__subclasses__'), {})),
        'exec':
        Reduce(builtins.exec, (code, )),
    }[name]


ATTACKS = [
    'setstate on shared state', 'getattr gadget',
    'numpy dtype with contradictory fields', 'numpy array (_reconstruct)',
    'allowed callable reaching exec', 'allowed callable reaching getattr',
    'exec'
]


def test_the_exec_payloads_are_live(tmp_path):
    """Loaded without protection, the crafted file runs its code, so the
    refusals below are of real attacks."""
    for name in ('exec', 'allowed callable reaching exec'):
        canary = tmp_path / f'{name}.txt'
        path = craft(tmp_path / 'evil.pth', attack(name, canary))
        run_tool(
            '-c', 'import sys, torch; '
            'torch.load(sys.argv[1], weights_only=False)',
            path,
            ok=False)
        assert canary.read_text() == 'pwned', name


@pytest.mark.parametrize('name', ATTACKS)
def test_attack_is_refused_in_process(name, tmp_path):
    canary = tmp_path / 'canary.txt'
    path = craft(tmp_path / 'evil.pth', attack(name, canary))
    methods = dict(HistoryBuffer._statistics_methods)
    with pytest.raises(pickle.UnpicklingError, match='weights_only'):
        torch.load(path)  # stock torch, after import mmdet_gc
    with pytest.raises(CheckpointError) as e:
        inspect_checkpoint(path, resume=True)
    assert path in str(e.value) and '\n' not in str(e.value)
    assert 'is refused' in str(e.value)
    if isinstance(e.value, ForeignCheckpointError):  # not stock MMEngine's
        assert '--trust-checkpoint' in str(e.value)
    assert not canary.exists()
    assert HistoryBuffer._statistics_methods == methods


def _one_line_error(proc, path, *words):
    assert proc.returncode == 1  # the README's promise: exit status 1
    err = proc.stderr.strip()
    assert 'Traceback' not in proc.stderr, err[-2000:]
    assert len(err.splitlines()) == 1, err[-2000:]
    assert path in err
    for word in words:
        assert word in err, (word, err)


@pytest.mark.parametrize('name,tool', [(n, 'test') for n in ATTACKS] +
                         [(n, 'resume')
                          for n in ('setstate on shared state',
                                    'numpy dtype with contradictory fields',
                                    'allowed callable reaching exec')])
def test_attack_is_refused_by_the_tools(name, tool, tmp_path, data_root):
    canary = tmp_path / 'canary.txt'
    path = craft(tmp_path / 'evil.pth', attack(name, canary))
    cfg = tiny_config(tmp_path, data_root)
    work = tmp_path / 'work'
    if tool == 'test':
        args = ('tools/test.py', cfg, path)
    else:
        args = ('tools/train.py', cfg, '--resume', path)
    proc = run_tool(*args, '--work-dir', str(work), ok=False)
    _one_line_error(proc, path, 'is refused')
    assert not canary.exists()
    assert not work.exists()


IMPORTS_THEN_ALLOW_LIST = r'''
import json, sys, builtins
import torch
import torch._weights_only_unpickler as w
# What the stack registers by itself (torch.distributed.tensor adds DTensor
# and friends when mmengine imports it) comes before the baseline.
import mmcv.ops, mmdet.apis, mmengine.runner  # noqa
GETATTR = builtins.getattr
def state():
    return dict(
        user=sorted(map(repr, torch.serialization.get_safe_globals())),
        default=sorted(w._get_allowed_globals()),
        getattr=builtins.getattr is GETATTR)
before = state()
import mmdet_gc, mmdet_gc.cli.launch, mmdet_gc.checkpoint
sys.path.insert(0, 'tools')
import train, test, convert_checkpoint
print(json.dumps([before, state()]))
'''


def test_import_changes_nothing_in_torch_serialization():
    proc = run_tool('-c', IMPORTS_THEN_ALLOW_LIST)
    before, after = json.loads(proc.stdout.strip().splitlines()[-1])
    assert before == after
    assert after['getattr']
    # Only torch's own entries (DTensor...): nothing of numpy, mmengine or
    # builtins.
    for entry in after['user']:
        assert entry.startswith(("<class 'torch.", '<function _rebuild')), \
            entry


@pytest.fixture(scope='module')
def real_checkpoint(trained_run):
    """A checkpoint of our own run (1 iteration) and its config."""
    return trained_run['cfg'], trained_run['iter_1']


def test_our_checkpoints_are_plain_data(real_checkpoint):
    _, ckpt = real_checkpoint
    # A fresh process without mmdet_gc: stock torch, no allow-list.
    proc = run_tool(
        '-c', 'import sys, torch; from torch.serialization import '
        'get_unsafe_globals_in_checkpoint as g; print(g(sys.argv[1])); '
        'c = torch.load(sys.argv[1]); print(sorted(c))', ckpt)
    unsafe, keys = proc.stdout.strip().splitlines()[-2:]
    assert unsafe == '[]'
    assert 'message_hub' in keys and 'optimizer' in keys
    hub = load(ckpt)['message_hub']
    assert hub['log_scalars']['train/loss'][TAG] == 'HistoryBuffer'
    restored = from_plain(hub)['log_scalars']['train/loss']
    assert isinstance(restored, HistoryBuffer)
    assert restored.current() == restored._log_history[-1]


def stock_mmengine_copy(ckpt, out):
    """What stock MMEngine 0.10 writes: the same checkpoint, with its
    HistoryBuffers and numpy values pickled as objects."""
    torch.save(from_plain(load(ckpt)), out)
    return out


def test_foreign_checkpoint_needs_per_file_consent(real_checkpoint, tmp_path):
    cfg, ckpt = real_checkpoint
    state = load(ckpt)
    state['meta']['extra'] = collections.defaultdict(int)
    foreign = str(tmp_path / 'foreign.pth')
    torch.save(state, foreign)
    work = str(tmp_path / 'work')
    proc = run_tool(
        'tools/test.py', cfg, foreign, '--work-dir', work, ok=False)
    _one_line_error(proc, foreign, 'collections.defaultdict',
                    '--trust-checkpoint', 'mmdet-gc convert')
    assert not osp.exists(work)
    # Consent for this one file: it loads (after a warning) and reports AP.
    proc = run_tool('tools/test.py', cfg, foreign, '--work-dir', work,
                    '--trust-checkpoint')
    assert 'weights_only=False' in proc.stderr
    assert 'coco/bbox_mAP' in proc.stdout + proc.stderr
    # ...or a one-off conversion, which needs --trust as well.
    plain = str(tmp_path / 'plain.pth')
    proc = run_tool('tools/convert_checkpoint.py', foreign, plain, ok=False)
    _one_line_error(proc, foreign, '--trust')
    assert not osp.exists(plain)
    proc = run_tool('tools/convert_checkpoint.py', foreign, plain, '--trust')
    assert 'defaultdict' in proc.stdout
    assert torch.serialization.get_unsafe_globals_in_checkpoint(plain) == []
    a, b = load(ckpt), load(plain)
    for k in a['state_dict']:
        assert torch.equal(a['state_dict'][k], b['state_dict'][k])
    run_tool('tools/test.py', cfg, plain, '--work-dir', work)


def test_trusted_resume_of_a_stock_checkpoint(real_checkpoint, tmp_path,
                                              data_root):
    _, ckpt = real_checkpoint
    foreign = stock_mmengine_copy(ckpt, str(tmp_path / 'stock.pth'))
    cfg = tiny_config(tmp_path, data_root, max_iters=2)
    work = str(tmp_path / 'work')
    run_tool('tools/train.py', cfg, '--resume', foreign, '--work-dir', work,
             '--trust-checkpoint')
    state = load(osp.join(work, 'iter_2.pth'))  # plain again
    assert state['meta']['iter'] == 2
    assert len(
        from_plain(state['message_hub'])['log_scalars']
        ['train/loss']._log_history) == 2


def test_model_zoo_style_file_loads_without_consent(real_checkpoint, tmp_path):
    cfg, ckpt = real_checkpoint
    zoo = str(tmp_path / 'zoo.pth')
    torch.save(
        {
            'state_dict': load(ckpt)['state_dict'],
            'meta': {
                'dataset_meta': {
                    'classes': ('a', 'b', 'c')
                },
                'mmdet_version': '3.3.0'
            }
        }, zoo)
    proc = run_tool('tools/test.py', cfg, zoo, '--work-dir',
                    str(tmp_path / 'w'))
    assert 'coco/segm_mAP' in proc.stdout + proc.stderr
    # ...and as load_from for training, with no opt-in either.
    run_tool('tools/train.py', cfg, '--work-dir', str(tmp_path / 'ft'),
             '--cfg-options', f'load_from={zoo}')


def _bad_files(tmp_path, ckpt):
    data = open(ckpt, 'rb').read()
    out = {}

    def put(name, content):
        path = tmp_path / name
        path.write_bytes(content)
        out[name] = str(path)

    put('truncated.pth', data[:len(data) // 2])
    put('random.pth', os.urandom(4096))
    put('text.pth', b'this is not a checkpoint\n')
    put('empty.pth', b'')
    with zipfile.ZipFile(tmp_path / 'empty_pkl.pth', 'w') as z:
        z.writestr('archive/data.pkl', b'')
        z.writestr('archive/version', b'3\n')
    out['empty_pkl.pth'] = str(tmp_path / 'empty_pkl.pth')
    (tmp_path / 'folder.pth').mkdir()
    out['folder.pth'] = str(tmp_path / 'folder.pth')
    return out


BAD_FILES = {
    'truncated.pth': 'truncated or corrupt',
    'random.pth': 'not a PyTorch checkpoint',
    'text.pth': 'not a PyTorch checkpoint',
    'empty.pth': 'empty file',
    'empty_pkl.pth': 'empty data.pkl',
    'folder.pth': 'is a directory',
}


@pytest.mark.parametrize('tool', ['test', 'resume'])
def test_bad_files_get_one_line_and_keep_the_work_dir(tool, real_checkpoint,
                                                      tmp_path, data_root):
    _, ckpt = real_checkpoint
    cfg = tiny_config(tmp_path, data_root)
    work = tmp_path / 'work'
    work.mkdir()
    (work / 'iter_3.pth').write_bytes(b'precious')
    for name, path in _bad_files(tmp_path, ckpt).items():
        # In process (what the tools call), then through one tool.
        with pytest.raises(CheckpointError, match=BAD_FILES[name]):
            inspect_checkpoint(path, resume=tool == 'resume')
        if tool == 'test':
            args = ('tools/test.py', cfg, path)
        else:
            args = ('tools/train.py', cfg, '--resume', path)
        proc = run_tool(*args, '--work-dir', str(work), ok=False)
        _one_line_error(proc, path, BAD_FILES[name])
        assert sorted(os.listdir(work)) == ['iter_3.pth'], name
        assert (work / 'iter_3.pth').read_bytes() == b'precious'


def test_auto_resume_checks_the_latest_checkpoint(tmp_path, data_root):
    cfg = tiny_config(tmp_path, data_root)
    work = tmp_path / 'work'
    work.mkdir()
    bad = work / 'iter_3.pth'
    bad.write_bytes(b'not a checkpoint')
    (work / 'last_checkpoint').write_text(str(bad))
    proc = run_tool(
        'tools/train.py', cfg, '--resume', '--work-dir', str(work), ok=False)
    _one_line_error(proc, str(bad), 'not a PyTorch checkpoint')
    assert sorted(os.listdir(work)) == ['iter_3.pth', 'last_checkpoint']


def test_model_only_file_cannot_be_resumed(real_checkpoint, tmp_path):
    _, ckpt = real_checkpoint
    path = str(tmp_path / 'weights.pth')
    torch.save({'state_dict': load(ckpt)['state_dict']}, path)
    inspect_checkpoint(path)  # fine for testing / load_from
    with pytest.raises(CheckpointError, match='meta.epoch.*load_from'):
        inspect_checkpoint(path, resume=True)


def test_plain_form_round_trips_bit_for_bit(tmp_path):
    hub = HistoryBuffer([0.1, 2.5, float('nan')], [1, 2, 1], max_length=7)
    ints = HistoryBuffer(np.array([1, 2], dtype=np.int32), [1, 1])
    obj = OrderedDict(
        hub=hub,
        ints=ints,
        arr=np.arange(6, dtype=np.float32).reshape(2, 3),
        scalars=[
            np.float64(0.1),
            np.float16(3.5),
            np.int64(-2),
            np.bool_(True),
            np.uint8(7)
        ],
        text=np.str_('name'),
        tagged={
            TAG: 'not ours',
            'x': 1
        },
        param=torch.nn.Parameter(torch.ones(2)),
        plain=(1, 2.5, 'a', None, {3}, torch.float16))
    path = str(tmp_path / 'plain.pth')
    torch.save(to_plain(obj), path)
    back = from_plain(torch.load(path))  # stock torch, no allow-list
    for name, buffer in (('hub', hub), ('ints', ints)):
        got = back[name]
        assert isinstance(got, HistoryBuffer) and got.max_length == \
            buffer.max_length
        for a, b in ((got._log_history, buffer._log_history),
                     (got._count_history, buffer._count_history)):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    assert back['arr'].dtype == np.float32
    assert np.array_equal(back['arr'], obj['arr'])
    for a, b in zip(back['scalars'], obj['scalars']):
        assert type(a) is type(b) and a == b
    assert type(back['text']) is str and back['text'] == 'name'
    assert back['tagged'] == {TAG: 'not ours', 'x': 1}
    assert type(back['param']) is torch.Tensor
    assert back['plain'] == obj['plain']
    with pytest.raises(TypeError, match=r'checkpoint\.meta\.cfg is a '):
        to_plain({'meta': {'cfg': object()}})


MALFORMED = {
    'unknown kind': {
        TAG: 'os.system',
        'data': 'ls'
    },
    'array without tensor': {
        TAG: 'ndarray',
        'data': [1, 2]
    },
    'scalar of shape (2,)': {
        TAG: 'numpy_scalar',
        'data': torch.ones(2)
    },
    'histories that do not match': {
        TAG: 'HistoryBuffer',
        'log_history': {
            TAG: 'ndarray',
            'data': torch.ones(3)
        },
        'count_history': {
            TAG: 'ndarray',
            'data': torch.ones(2)
        },
        'max_length': 10
    },
    'negative max_length': {
        TAG: 'HistoryBuffer',
        'log_history': {
            TAG: 'ndarray',
            'data': torch.ones(1)
        },
        'count_history': {
            TAG: 'ndarray',
            'data': torch.ones(1)
        },
        'max_length': -1
    },
}


@pytest.mark.parametrize('case', list(MALFORMED))
def test_malformed_plain_form_is_refused(case, tmp_path):
    path = str(tmp_path / 'bad.pth')
    torch.save({
        'state_dict': {
            'w': torch.ones(1)
        },
        'x': MALFORMED[case]
    }, path)
    with pytest.raises(CheckpointError, match=r'malformed: checkpoint\.x'):
        read_checkpoint(path)


FUZZ = r'''
import json, os, random, sys, zipfile
sys.path.insert(0, os.getcwd())
from mmdet_gc.checkpoint import CheckpointDoor
from mmdet_gc.cli.checkpoint_checks import InputError, check_checkpoint
src, folder, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = open(src, 'rb').read()
with zipfile.ZipFile(src) as z:
    info = next(i for i in z.infolist() if i.filename.endswith('data.pkl'))
pkl = (info.header_offset + 30 + len(info.filename), info.compress_size)
tail = len(data) - 4096  # zip central directory and record headers
rng = random.Random(0)
counts = {'loaded': 0, 'refused': 0}
bad = []
for i in range(n):
    buf = bytearray(data)
    how = i % 4
    if how == 0:    # flip bytes anywhere
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    elif how == 1:  # rewrite bytes of the pickle
        for _ in range(rng.randint(1, 4)):
            buf[pkl[0] + rng.randrange(pkl[1])] = rng.randrange(256)
    elif how == 2:  # corrupt the zip's directory
        for _ in range(rng.randint(1, 4)):
            buf[tail + rng.randrange(4096)] = rng.randrange(256)
    else:           # truncate
        del buf[rng.randrange(len(buf)):]
    path = os.path.join(folder, 'mutant.pth')
    with open(path, 'wb') as f:
        f.write(buf)
    print(i, how, flush=True, file=sys.stderr)
    try:
        check_checkpoint(CheckpointDoor(), path, '--resume', resume=True)
        counts['loaded'] += 1
    except InputError as e:
        msg = str(e)
        if '\n' in msg or path not in msg:
            bad.append((i, how, msg[:300]))
        counts['refused'] += 1
    except BaseException as e:
        bad.append((i, how, repr(e)[:300]))
print(json.dumps(dict(counts, bad=bad)))
'''


def test_fuzzed_checkpoints_load_or_get_one_line(real_checkpoint, tmp_path):
    _, ckpt = real_checkpoint
    n = 300
    proc = run_tool('-c', FUZZ, ckpt, str(tmp_path), str(n), ok=False)
    # A crash (segfault, abort) would end the process: its last line says
    # which mutant did it.
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"fuzz: {n} mutants, {result['loaded']} loaded, "
          f"{result['refused']} refused with one line")
    assert result['bad'] == []
    assert result['loaded'] + result['refused'] == n
    assert result['refused'] > n // 2


def test_meta_config_code_is_refused_and_dropped(real_checkpoint, tmp_path,
                                                 data_root):
    """Plain data can carry code too: MMEngine's Runner.resume executes
    ``meta['config']`` as a Python config file."""
    from types import SimpleNamespace

    from mmengine.config import Config

    from mmdet_gc.engine.hooks import PlainCheckpointHook
    canary = tmp_path / 'canary.txt'
    code = f'x = open({str(canary)!r}, "w").write("pwned")\n'
    Config.fromstring(code, file_format='.py')  # the payload is live
    assert canary.read_text() == 'pwned'
    canary.unlink()

    _, ckpt = real_checkpoint
    state = load(ckpt)
    state['meta']['config'] = code
    path = str(tmp_path / 'evil.pth')
    torch.save(state, path)  # plain data: weights_only=True loads it
    cfg = tiny_config(tmp_path, data_root, max_iters=2)
    work = tmp_path / 'work'
    proc = run_tool(
        'tools/train.py',
        cfg,
        '--resume',
        path,
        '--work-dir',
        str(work),
        ok=False)
    _one_line_error(proc, path, 'meta.config', 'execute')
    assert not canary.exists() and not work.exists()
    # Behind the check, the hook drops the key before resume reads it.
    warnings = []
    runner = SimpleNamespace(logger=SimpleNamespace(warning=warnings.append))
    loaded = torch.load(path)
    PlainCheckpointHook().after_load_checkpoint(runner, loaded)
    assert 'config' not in loaded['meta'] and len(warnings) == 1
    assert isinstance(loaded['message_hub']['log_scalars']['train/loss'],
                      HistoryBuffer)


# --------------------------------------------------------------------------
# Plain data the runner acts on (found by attacking the tools, see the
# closing note of issue 7): each is refused before the runner is built.
# --------------------------------------------------------------------------


def _tensor_cases():
    conj = torch.randn(2, dtype=torch.cfloat).conj()
    return {
        'conjugate bit':
        conj,
        'negative bit':
        conj.imag,
        '4 TiB over one element':
        torch.zeros(1).as_strided((2**20, 2**20), (0, 0)),
    }


def _mutate(ckpt, case):
    """One malformed part per case, in a copy of a real checkpoint."""
    import copy
    c = copy.deepcopy(ckpt)
    info = c['message_hub']['runtime_info']
    if case == 'seed not an int':
        c['meta']['seed'] = 'abc'
    elif case == 'seed out of range':
        c['meta']['seed'] = 2**64
    elif case == 'optimizer without param_groups':
        c['optimizer'] = {}
    elif case == 'no param groups':
        c['optimizer']['param_groups'] = []
    elif case == 'nan lr':
        c['optimizer']['param_groups'][0]['lr'] = float('nan')
    elif case == 'scheduler state replacing a method':
        c['param_schedulers'][0]['step'] = 1
    elif case == 'schedulers not dicts':
        c['param_schedulers'] = ['xx', 'yy']
    elif case == 'best_score not a number':
        info['best_score'] = 'zzz'
    elif case == 'best_ckpt not a path':
        info['best_ckpt'] = 5
    elif case == 'keep_ckpt_ids not ints':
        info['keep_ckpt_ids'] = ['a']
    elif case == 'weights with a non-string key':
        c['state_dict'][0] = torch.zeros(1)
    elif case == 'nested 200 levels':
        x = {}
        for _ in range(200):
            x = {'a': x}
        c['meta']['deep'] = x
    else:
        c['meta']['x'] = {TAG: 'ndarray', 'data': _tensor_cases()[case]}
    return c


RUNNER_PARTS = [
    'seed not an int', 'seed out of range', 'optimizer without param_groups',
    'no param groups', 'nan lr', 'scheduler state replacing a method',
    'schedulers not dicts', 'best_score not a number', 'best_ckpt not a path',
    'keep_ckpt_ids not ints', 'weights with a non-string key',
    'nested 200 levels', 'conjugate bit', 'negative bit',
    '4 TiB over one element'
]


@pytest.mark.parametrize('case', RUNNER_PARTS)
def test_parts_the_runner_acts_on_are_checked(case, real_checkpoint, tmp_path):
    _, ckpt = real_checkpoint
    path = str(tmp_path / 'bad.pth')
    torch.save(_mutate(load(ckpt), case), path)
    with pytest.raises(CheckpointError) as e:
        inspect_checkpoint(path, resume=True)
    assert path in str(e.value) and '\n' not in str(e.value)


def test_weights_metadata_is_checked(real_checkpoint, tmp_path):
    _, ckpt = real_checkpoint
    weights = OrderedDict(load(ckpt)['state_dict'])
    weights._metadata = OrderedDict(backbone=dict(version='x'))
    path = str(tmp_path / 'zoo.pth')
    torch.save(weights, path)
    with pytest.raises(CheckpointError, match='version metadata'):
        inspect_checkpoint(path)
    weights._metadata = OrderedDict(backbone=dict(version=2))
    torch.save(weights, path)
    inspect_checkpoint(path)


def test_a_local_path_with_a_scheme_like_part_is_checked(tmp_path, data_root):
    folder = tmp_path / 'x:'
    folder.mkdir()
    (folder / 'bad.pth').write_bytes(b'not a checkpoint')
    path = str(tmp_path) + '/x://bad.pth'
    cfg = tiny_config(tmp_path, data_root)
    proc = run_tool(
        'tools/test.py',
        cfg,
        path,
        '--work-dir',
        str(tmp_path / 'w'),
        ok=False)
    _one_line_error(proc, path, 'not a PyTorch checkpoint')


def test_convert_without_trust_never_unpickles_freely(real_checkpoint,
                                                      tmp_path, monkeypatch):
    from mmdet_gc.checkpoint import convert_checkpoint
    _, ckpt = real_checkpoint
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get('weights_only'))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, 'load', spy)
    convert_checkpoint(ckpt, str(tmp_path / 'out.pth'))
    assert calls and all(w is True for w in calls), calls


def test_resume_keeps_checkpoint_removal_inside_the_run(
        real_checkpoint, tmp_path, data_root):
    """best_ckpt and keep_ckpt_ids name files that MMEngine's CheckpointHook
    removes: from a checkpoint they cannot reach outside the run's own
    files."""
    _, ckpt = real_checkpoint
    victim = tmp_path / 'victim'
    victim.mkdir()
    (victim / 'keep.txt').write_text('precious')
    work = tmp_path / 'work'
    work.mkdir()
    later = work / 'iter_30.pth'
    later.write_bytes(b'another run')
    c = load(ckpt)
    hub = c['message_hub']
    hub['runtime_info'].update(
        best_ckpt=str(victim),
        best_score=float('-inf'),
        keep_ckpt_ids=list(range(1, 60)))
    hub['resumed_keys'].update(
        best_ckpt=True, best_score=True, keep_ckpt_ids=True)
    path = str(tmp_path / 'crafted.pth')
    torch.save(c, path)
    extra = """
    train_cfg = dict(val_interval=1)
    default_hooks = dict(checkpoint=dict(save_best='coco/bbox_mAP',
                                         max_keep_ckpts=1))
    model = dict(test_cfg=dict(rcnn=dict(max_per_img=5)))
    """
    cfg = tiny_config(
        tmp_path, data_root, max_iters=2, interval=1, extra=extra)
    out = run_tool('tools/train.py', cfg, '--resume', path, '--work-dir',
                   str(work))
    assert (victim / 'keep.txt').read_text() == 'precious'
    assert later.read_bytes() == b'another run'
    log = out.stdout + out.stderr
    assert 'forgot runtime_info.best_ckpt' in log
    assert 'keep_ckpt_ids from the checkpoint trimmed' in log
