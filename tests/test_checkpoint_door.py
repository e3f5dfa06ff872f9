"""One door for every checkpoint source: URLs (a local HTTP server), torch's
hub cache behind model-zoo names, ``last_checkpoint``, ``load_from``,
``init_cfg``; stock MMEngine files read as data; what ``--resume`` acts on
checked against the run before the work dir is touched (Gradient
Centralization, Yong et al., ECCV 2020: the runs of this package must be
safe to resume and test)."""
import copy
import functools
import http.server
import json
import os
import os.path as osp
import random
import threading

import pytest
import torch
from test_checkpoint_security import _one_line_error, attack, craft

from mmdet_gc.checkpoint import (CheckpointDoor, CheckpointError, from_plain,
                                 hub_cache_file, torchvision_urls)

from tool_helpers import ENV, load, run_resume_cases, run_tool, tiny_config


@pytest.fixture(scope='module')
def server(tmp_path_factory):
    """An HTTP server on 127.0.0.1 serving a folder: ``(folder, url)``."""
    folder = tmp_path_factory.mktemp('served')

    class Quiet(http.server.SimpleHTTPRequestHandler):

        def log_message(self, *args):
            pass  # not into the output of a tool run in this process

    handler = functools.partial(Quiet, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield folder, f'http://127.0.0.1:{httpd.server_address[1]}'
    httpd.shutdown()


@pytest.fixture(scope='module')
def ckpts(tmp_path_factory, trained_run):
    """Our run's 1- and 2-iteration checkpoints and its config (the shared
    ``trained_run``), and the same run written by stock MMEngine (a Runner
    with no PlainCheckpointHook)."""
    cfg = trained_run['cfg']
    stock = str(tmp_path_factory.mktemp('door') / 'stock')
    run_tool('-c', STOCK_RUN, cfg, stock)
    return dict(
        cfg=cfg,
        ours=trained_run['iter_1'],
        ours2=trained_run['iter_2'],
        stock=osp.join(stock, 'iter_1.pth'),
        stock2=osp.join(stock, 'iter_2.pth'))


STOCK_RUN = r'''
import sys
from mmengine.config import Config
from mmengine.runner import Runner
cfg = Config.fromfile(sys.argv[1])
cfg.custom_hooks = [h for h in cfg.get('custom_hooks', [])
                    if h['type'] != 'PlainCheckpointHook']
cfg.work_dir = sys.argv[2]
Runner.from_cfg(cfg).train()
'''


def _env(tmp_path):
    return dict(ENV, TORCH_HOME=str(tmp_path / 'torch_home'))


def _serve(server, name, src=None, payload=None, canary=None):
    folder, url = server
    path = folder / name
    if src is not None:
        path.write_bytes(open(src, 'rb').read())
    else:
        craft(path, attack('exec', canary))
    return f'{url}/{name}'


def test_stock_mmengine_checkpoints_hold_what_the_stand_ins_read(ckpts):
    names = torch.serialization.get_unsafe_globals_in_checkpoint(
        ckpts['stock'])
    assert 'mmengine.logging.history_buffer.HistoryBuffer' in names
    with pytest.raises(Exception, match='weights_only'):
        torch.load(ckpts['stock'])  # stock torch refuses it


def test_url_test_checkpoint(server, ckpts, tmp_path):
    canary = tmp_path / 'canary.txt'
    evil = _serve(server, 'evil-test.pth', canary=canary)
    work = tmp_path / 'work'
    proc = run_tool('tools/test.py', ckpts['cfg'], evil, '--work-dir',
                    str(work), ok=False, env=_env(tmp_path))
    _one_line_error(proc, evil, 'is refused')
    assert not canary.exists() and not work.exists()
    # A refused download does not stay in torch's hub cache.
    cached = tmp_path / 'torch_home' / 'hub' / 'checkpoints' / \
        'evil-test.pth'
    assert not cached.exists()
    proc = run_tool('tools/test.py', ckpts['cfg'], evil, '--work-dir',
                    str(work), ok=False, env=_env(tmp_path))
    _one_line_error(proc, evil, 'is refused')
    assert not canary.exists() and not work.exists()
    plain = _serve(server, 'plain-test.pth', src=ckpts['ours2'])
    proc = run_tool('tools/test.py', ckpts['cfg'], plain, '--work-dir',
                    str(work), env=_env(tmp_path))
    assert 'coco/bbox_mAP' in proc.stdout + proc.stderr


def test_url_in_last_checkpoint_and_load_from(server, ckpts, tmp_path):
    canary = tmp_path / 'canary.txt'
    evil = _serve(server, 'evil-resume.pth', canary=canary)
    work = tmp_path / 'work'
    work.mkdir()
    (work / 'last_checkpoint').write_text(evil)
    proc = run_tool('tools/train.py', ckpts['cfg'], '--resume', '--work-dir',
                    str(work), ok=False, env=_env(tmp_path))
    _one_line_error(proc, evil, 'is refused')
    assert os.listdir(work) == ['last_checkpoint'] and not canary.exists()
    proc = run_tool('tools/train.py', ckpts['cfg'], '--work-dir', str(work),
                    '--cfg-options', f'load_from={evil}', ok=False,
                    env=_env(tmp_path))
    _one_line_error(proc, evil, 'is refused')
    assert os.listdir(work) == ['last_checkpoint'] and not canary.exists()
    # The plain one resumes from the URL in last_checkpoint.
    plain = _serve(server, 'plain-resume.pth', src=ckpts['ours'])
    (work / 'last_checkpoint').write_text(plain)
    run_tool('tools/train.py', ckpts['cfg'], '--resume', '--work-dir',
             str(work), env=_env(tmp_path))
    a, b = load(ckpts['ours2']), load(str(work / 'iter_2.pth'))
    for k in a['state_dict']:
        assert torch.equal(a['state_dict'][k], b['state_dict'][k]), k


def _backbone_file(src, out):
    weights = load(src)['state_dict']
    torch.save({k[len('backbone.'):]: v
                for k, v in weights.items() if k.startswith('backbone.')},
               out)
    return out


def test_url_in_init_cfg(server, ckpts, tmp_path, data_root):
    canary = tmp_path / 'canary.txt'
    evil = _serve(server, 'evil-init.pth', canary=canary)
    plain = _serve(
        server,
        'plain-init.pth',
        src=_backbone_file(ckpts['ours2'], str(tmp_path / 'bb.pth')))
    for url, ok in ((evil, False), (plain, True)):
        cfg = tiny_config(
            tmp_path,
            data_root,
            max_iters=1,
            extra=f'''
            model = dict(backbone=dict(init_cfg=dict(
                _delete_=True, type='Pretrained', checkpoint={url!r})))
            ''')
        work = tmp_path / f'work-{ok}'
        proc = run_tool('tools/train.py', cfg, '--work-dir', str(work),
                        ok=ok, env=_env(tmp_path))
        if not ok:
            _one_line_error(proc, evil, 'init_cfg', 'is refused')
            assert not work.exists() and not canary.exists()
        else:
            assert 'mmdet_gc_door' in proc.stdout + proc.stderr


def test_model_zoo_names_resolve_to_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    from mmengine.runner.checkpoint import get_external_models
    url = get_external_models()['resnext101_32x4d']
    assert hub_cache_file(url) == str(tmp_path / 'hub' / 'checkpoints' /
                                      osp.basename(url))
    # torchvision:// without torchvision: MMEngine's own table.
    assert torchvision_urls()['resnet50'].endswith('resnet50-0676ba61.pth')


def _x101_backbone_from(source):
    """The ResNeXt-101 backbone of our X101 configs, initialised from
    ``source`` through the door."""
    from mmdet.registry import MODELS
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmdet'):
        backbone = MODELS.build(
            dict(
                type='ResNeXt',
                depth=101,
                groups=32,
                base_width=4,
                init_cfg=dict(type='Pretrained', checkpoint=source)))
    with CheckpointDoor().installed():
        backbone.init_weights()
    return backbone.state_dict()


def test_x101_pretrained_from_the_hub_cache(tmp_path, monkeypatch):
    """``open-mmlab://resnext101_32x4d``, as our X101 configs name it: a
    crafted file in the hub cache runs no code and the tool stops with one
    line; a plain file under its hashed name is not that file (removed);
    under a name without a hash, it is what the backbone starts from."""
    from mmengine.runner.checkpoint import get_external_models
    url = get_external_models()['resnext101_32x4d']
    cache = tmp_path / 'torch_home' / 'hub' / 'checkpoints'
    cache.mkdir(parents=True)
    canary = tmp_path / 'canary.txt'
    hashed = cache / osp.basename(url)  # resnext101_32x4d-a5af3160.pth
    craft(hashed, attack('exec', canary))
    cfg = 'configs/mask_rcnn/mask-rcnn_x101-32x4d_fpn_sgd-gc_1x_coco.py'
    work = tmp_path / 'work'
    proc = run_tool('tools/train.py', cfg, '--work-dir', str(work),
                    ok=False, env=_env(tmp_path))
    _one_line_error(proc, 'open-mmlab://resnext101_32x4d', str(hashed))
    assert not canary.exists() and not work.exists()
    # A plain file (the stem and first stage of a ResNeXt-101).
    from mmdet.models.backbones import ResNeXt
    torch.manual_seed(0)
    net = ResNeXt(depth=101, groups=32, base_width=4)
    plain = {
        k: v
        for k, v in net.state_dict().items()
        if k.startswith(('conv1', 'bn1', 'layer1'))
    }
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    torch.save(plain, str(hashed))
    with pytest.raises(CheckpointError, match='a5af3160'):
        _x101_backbone_from('open-mmlab://resnext101_32x4d')
    assert not hashed.exists()
    # MMEngine's table, extended by the user, names a file without a hash.
    home = tmp_path / 'mmengine_home'
    home.mkdir()
    (home / 'open_mmlab.json').write_text(
        json.dumps({'resnext101_32x4d': 'https://example.invalid/x101.pth'}))
    monkeypatch.setenv('MMENGINE_HOME', str(home))
    torch.save(plain, str(cache / 'x101.pth'))
    got = _x101_backbone_from('open-mmlab://resnext101_32x4d')
    assert all(torch.equal(got[k], v) for k, v in plain.items())


def test_stock_mmengine_checkpoints_need_no_trust(ckpts, tmp_path):
    cfg = ckpts['cfg']
    proc = run_tool('tools/test.py', cfg, ckpts['stock2'], '--work-dir',
                    str(tmp_path / 'test'))
    assert 'coco/bbox_mAP' in proc.stdout + proc.stderr
    run_tool('tools/train.py', cfg, '--work-dir', str(tmp_path / 'ft'),
             '--cfg-options', f'load_from={ckpts["stock2"]}')
    # Resumed from stock iteration 1: bit for bit stock iteration 2.
    work = tmp_path / 'resumed'
    run_tool('tools/train.py', cfg, '--resume', ckpts['stock'], '--work-dir',
             str(work))
    a = torch.load(ckpts['stock2'], weights_only=False)
    b = from_plain(load(str(work / 'iter_2.pth')))
    for k in a['state_dict']:
        assert torch.equal(a['state_dict'][k], b['state_dict'][k]), k
    for pid, state in a['optimizer']['state'].items():
        for key, value in state.items():
            assert torch.equal(value, b['optimizer']['state'][pid][key])
    la = a['message_hub']['log_scalars']['train/loss']
    lb = b['message_hub']['log_scalars']['train/loss']
    assert la._log_history.tobytes() == lb._log_history.tobytes()


def test_door_is_scoped_to_its_block():
    from mmengine.runner.checkpoint import CheckpointLoader
    before = dict(CheckpointLoader._schemes)
    with CheckpointDoor().installed():
        assert all(f.__name__ == 'load_from_mmdet_gc_door'
                   for f in CheckpointLoader._schemes.values())
        assert set(CheckpointLoader._schemes) == set(before)
    assert dict(CheckpointLoader._schemes) == before


def test_a_local_file_is_read_even_if_it_looks_like_a_url(tmp_path, ckpts):
    folder = tmp_path / 'http:' / '127.0.0.1:9'
    folder.mkdir(parents=True)
    path = folder / 'x.pth'
    path.write_bytes(open(ckpts['ours'], 'rb').read())
    os.chdir(tmp_path)
    try:
        ckpt = CheckpointDoor().read('http://127.0.0.1:9/x.pth')
    finally:
        os.chdir(osp.dirname(osp.dirname(osp.abspath(__file__))))
    assert 'state_dict' in ckpt


# --------------------------------------------------------------------------
# What --resume acts on, checked against the run (findings 2 and 3).
# --------------------------------------------------------------------------


def mutate(ckpt, case):
    c = copy.deepcopy(ckpt)
    group = c['optimizer']['param_groups'][0]
    sched = c['param_schedulers'][0]
    info = c['message_hub']['runtime_info']
    state = c['optimizer']['state'][next(iter(c['optimizer']['state']))]
    buf = state['momentum_buffer']
    if case == 'lr tensor nan':
        group['lr'] = torch.tensor(float('nan'))
    elif case == 'gamma nan':
        sched['gamma'] = float('nan')
    elif case == 'iter -1000000':
        c['meta']['iter'] = -1000000
    elif case == 'iter beyond max_iters':
        c['meta']['iter'] = 1000000
    elif case == 'params list too short':
        group['params'] = group['params'][:-1]
    elif case == 'momentum_buffer of the wrong shape':
        state['momentum_buffer'] = buf.reshape(-1)
    elif case == 'momentum_buffer with a zero stride':
        state['momentum_buffer'] = buf.reshape(-1)[:1].expand(
            buf.numel()).reshape(buf.shape)
    elif case == 'momentum_buffer of another dtype':
        state['momentum_buffer'] = buf.double()
    elif case == 'momentum_buffer with nan':
        state['momentum_buffer'] = buf.clone().fill_(float('nan'))
    elif case == 'best_ckpt with a NUL byte':
        info['best_ckpt'] = 'work/best\x00.pth'
    elif case == 'scheduler key replacing its optimizer':
        sched['optimizer'] = 1
    elif case == 'lr complex nan':
        group['lr'] = complex(float('nan'))
    elif case == 'lr 10**400':
        group['lr'] = 10**400
    elif case == 'momentum a string':
        group['momentum'] = '0.9'
    elif case == 'momentum negative':
        group['momentum'] = -1.0
    elif case == 'an extra group':
        c['optimizer']['param_groups'].append(dict(group, params=[10**6]))
    elif case == 'state of no parameter':
        c['optimizer']['state'][10**6] = {'momentum_buffer': buf}
    elif case == 'one scheduler too many':
        c['param_schedulers'].append(dict(sched))
    elif case == 'scheduler base_values of another length':
        sched['base_values'] = [0.1, 0.2, 0.3]
    elif case == 'momentum_buffer 0-dim':
        state['momentum_buffer'] = buf.reshape(-1)[0].clone()
    elif case == 'momentum_buffer a float':
        state['momentum_buffer'] = 0.5
    elif case == 'scheduler factors dividing by zero':
        sched['start_factor'] = sched['end_factor'] = 0.0
    elif case == 'an int gamma with a huge milestone count':
        c['param_schedulers'][1]['gamma'] = 10
        c['param_schedulers'][1]['milestones'] = {2: 10**9}
    elif case == 'lr and weight decay of 1e30':
        group['lr'] = group['weight_decay'] = 1e30
    elif case == 'a key with a newline':
        group['evil\nFAKE: checkpoint OK'] = [1]
    elif case == 'epoch beyond iter':
        c['meta']['epoch'] = c['meta']['iter'] + 1
    return c


RESUME_CASES = [
    'lr tensor nan', 'gamma nan', 'iter -1000000', 'iter beyond max_iters',
    'params list too short', 'momentum_buffer of the wrong shape',
    'momentum_buffer with a zero stride', 'momentum_buffer of another dtype',
    'momentum_buffer with nan', 'best_ckpt with a NUL byte',
    'scheduler key replacing its optimizer', 'lr complex nan', 'lr 10**400',
    'momentum a string', 'momentum negative', 'an extra group',
    'state of no parameter', 'one scheduler too many',
    'scheduler base_values of another length', 'momentum_buffer 0-dim',
    'momentum_buffer a float', 'scheduler factors dividing by zero',
    'an int gamma with a huge milestone count', 'lr and weight decay of 1e30',
    'a key with a newline', 'epoch beyond iter'
]

# Each crafted file through tools/train.py --resume: one line naming the
# file, exit status 1, the work dir untouched (tool_helpers.run_resume_cases).


def _run_cases(ckpts, tmp_path, files):
    out = run_resume_cases(ckpts['cfg'], tmp_path, files)
    for case, (message, _) in out.items():
        assert ': error: --resume ' in message, (case, message)
        assert files[case] in message and '\n' not in message, (case,
                                                                 message)
    return out


def test_what_resume_acts_on_is_checked_against_the_run(ckpts, tmp_path):
    base = load(ckpts['ours'])
    files = {}
    for case in RESUME_CASES:
        path = str(tmp_path / f'{len(files)}.pth')
        torch.save(mutate(base, case), path)
        files[case] = path
    out = _run_cases(ckpts, tmp_path, files)
    for case in RESUME_CASES:
        print(case, '->', out[case][0])


BAD_VALUES = [
    float('nan'),
    float('inf'), -1.0, 10**400, 'x',
    complex(1, 1),
    torch.tensor(float('nan')),
    torch.ones(3), [1.0], {
        'a': 1
    }, None, -10**6
]
KEYS = [
    ('group', 'lr'), ('group', 'momentum'), ('group', 'weight_decay'),
    ('group', 'dampening'), ('group', 'nesterov'), ('sched', 'gamma'),
    ('sched', 'base_values'), ('sched', 'last_step'), ('sched', 'by_epoch'),
    ('sched', 'begin'), ('meta', 'iter'), ('meta', 'epoch'),
    ('buf', 'momentum_buffer')
]


def test_fuzzed_resume_values_get_one_line(ckpts, tmp_path):
    base = load(ckpts['ours'])
    rng = random.Random(0)
    files = {}
    for i in range(24):
        c = copy.deepcopy(base)
        for where, key in rng.sample(KEYS, rng.randint(1, 3)):
            value = rng.choice(BAD_VALUES)
            if where == 'group':
                c['optimizer']['param_groups'][0][key] = value
            elif where == 'sched':
                c['param_schedulers'][0][key] = value
            elif where == 'meta':
                c['meta'][key] = value
            else:
                pid = next(iter(c['optimizer']['state']))
                c['optimizer']['state'][pid][key] = value
        path = str(tmp_path / f'fuzz{i}.pth')
        torch.save(c, path)
        files[f'fuzz{i}'] = path
    out = _run_cases(ckpts, tmp_path, files)
    assert all(message != 'ran' for message, _ in out.values()), out


def test_neg_bit_state_resumes_as_its_values(ckpts, tmp_path):
    """A momentum buffer stored with the negative bit (torch.load keeps it)
    resumes the fused kernel exactly as the plain buffer of the same
    values."""
    base = load(ckpts['ours'])
    for group in base['optimizer']['param_groups']:
        group['fused'] = True  # the saved switch is the one resumed
    neg = copy.deepcopy(base)
    for state in neg['optimizer']['state'].values():
        buf = state['momentum_buffer']
        state['momentum_buffer'] = torch._neg_view(buf.neg())
    plain_path, neg_path = str(tmp_path / 'plain.pth'), str(tmp_path /
                                                            'neg.pth')
    torch.save(base, plain_path)
    torch.save(neg, neg_path)
    assert next(iter(load(neg_path)['optimizer']['state'].values()))[
        'momentum_buffer'].is_neg()
    finals = []
    for path in (plain_path, neg_path):
        work = str(tmp_path / osp.basename(path)[:-4])
        run_tool('tools/train.py', ckpts['cfg'], '--resume', path,
                 '--work-dir', work)
        finals.append(load(osp.join(work, 'iter_2.pth'))['state_dict'])
    for k in finals[0]:
        assert torch.equal(finals[0][k], finals[1][k]), k


def test_bad_cfg_options_value_is_one_line(ckpts, tmp_path):
    work = tmp_path / 'work'
    proc = run_tool('tools/train.py', ckpts['cfg'], '--work-dir', str(work),
                    '--cfg-options', 'optim_wrapper.optimizer.lr=abc',
                    ok=False)
    _one_line_error(proc, 'cannot build', 'SGD_GC')
    assert not work.exists()


def test_unknown_scheme_is_refused_unless_trusted(tmp_path):
    from mmengine.runner.checkpoint import CheckpointLoader
    calls = []

    def load_from_mine(filename, map_location=None):
        calls.append(filename)
        return {'state_dict': {'w': torch.ones(1)}}

    CheckpointLoader.register_scheme('mine://', load_from_mine)
    try:
        with pytest.raises(CheckpointError, match="scheme 'mine://'"):
            CheckpointDoor().read('mine://x')
        assert calls == []
        ckpt = CheckpointDoor(trusted=('mine://x', )).read('mine://x')
        assert calls == ['mine://x'] and 'state_dict' in ckpt
    finally:
        CheckpointLoader._schemes.pop('mine://')


def test_url_without_a_file_name_is_refused():
    with pytest.raises(CheckpointError, match='names no file'):
        hub_cache_file('http://127.0.0.1:1/..')


IMPORT_ALONE = r'''
import json, torch
user = sorted(map(repr, torch.serialization.get_safe_globals()))
from mmengine.runner.checkpoint import CheckpointLoader
def state():
    return dict(
        user=sorted(map(repr, torch.serialization.get_safe_globals())),
        schemes={p: f.__name__ for p, f in CheckpointLoader._schemes.items()})
before = dict(state(), user=user)
import mmdet_gc, mmdet_gc.checkpoint, mmdet_gc.cli.train, mmdet_gc.cli.test
print(json.dumps([before, state()]))
'''


def test_importing_adds_only_torchs_own_dtensor_classes():
    """``import mmdet_gc`` leaves MMEngine's loaders as they are, and the
    only allow-list entries that appear are torch's own (DTensor, which
    ``torch.distributed.tensor`` registers when ``mmengine.optim`` imports
    it)."""
    proc = run_tool('-c', IMPORT_ALONE)
    before, after = json.loads(proc.stdout.strip().splitlines()[-1])
    assert before['schemes'] == after['schemes']
    assert 'load_from_http' in after['schemes'].values()
    for entry in set(after['user']) - set(before['user']):
        assert entry.startswith("<class 'torch.distributed."), entry


# --------------------------------------------------------------------------
# Found by an attack review of the door (see issue 15's closing note).
# --------------------------------------------------------------------------


def test_refused_download_leaves_the_cache_and_trust_downloads_fresh(
        server, ckpts, tmp_path, monkeypatch):
    """A refused download does not stay in the hub cache, and a URL trusted
    by name is that URL's file, never what the cache holds under its
    file name."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'home'))
    canary = tmp_path / 'canary.txt'
    folder, url = server
    (folder / 'evil').mkdir()
    (folder / 'good').mkdir()
    craft(folder / 'evil' / 'model.pth', attack('exec', canary))
    (folder / 'good' / 'model.pth').write_bytes(
        open(ckpts['ours'], 'rb').read())
    evil, good = f'{url}/evil/model.pth', f'{url}/good/model.pth'
    with pytest.raises(CheckpointError, match='is refused'):
        CheckpointDoor().read(evil)
    assert not osp.exists(hub_cache_file(evil))
    # Planted in the cache under the good URL's file name: trust for the
    # good URL still reads the good URL.
    craft(hub_cache_file(good), attack('exec', canary))
    ckpt = CheckpointDoor(trusted=(good, )).read(good)
    assert not canary.exists() and 'state_dict' in ckpt


def test_every_load_of_a_source_gets_what_was_checked(ckpts, tmp_path,
                                                      monkeypatch):
    import mmdet_gc.checkpoint.door as door_mod
    path = str(tmp_path / 'c.pth')
    with open(path, 'wb') as f:
        f.write(open(ckpts['ours'], 'rb').read())
    reads = []
    real = door_mod.read_checkpoint
    monkeypatch.setattr(door_mod, 'read_checkpoint',
                        lambda *a, **k: reads.append(a) or real(*a, **k))
    door = CheckpointDoor()
    door.read(path, resume=True)
    os.remove(path)  # swapped or gone after the check: never read again
    first, second = door.load(path), door.load(path)
    assert len(reads) == 1 and first is not second
    for k, v in first['state_dict'].items():
        assert torch.equal(v, second['state_dict'][k])


def test_trust_does_not_follow_last_checkpoint(ckpts, tmp_path):
    work = tmp_path / 'work'
    work.mkdir()
    (work / 'last_checkpoint').write_text(ckpts['ours'])
    proc = run_tool('tools/train.py', ckpts['cfg'], '--resume',
                    '--trust-checkpoint', '--work-dir', str(work), ok=False)
    _one_line_error(proc, '--trust-checkpoint', 'last_checkpoint')
    assert os.listdir(work) == ['last_checkpoint']


def test_an_escaped_marked_dict_is_decoded_once(ckpts, tmp_path):
    """A checkpoint wrapped in an escaped marked dict shows the checks one
    checkpoint; decoding again would give the runner another."""
    from mmdet_gc.checkpoint import TAG
    good = load(ckpts['ours'])
    bad = copy.deepcopy(good)
    bad['optimizer']['param_groups'][0]['lr'] = float('nan')
    path = str(tmp_path / 'double.pth')
    torch.save({TAG: 'dict', 'items': dict(good, **{TAG: 'dict',
                                                     'items': bad})}, path)
    work = tmp_path / 'work'
    proc = run_tool('tools/train.py', ckpts['cfg'], '--resume', path,
                    '--work-dir', str(work))
    assert 'lr: nan' not in proc.stdout + proc.stderr
    a, b = load(ckpts['ours2']), load(str(work / 'iter_2.pth'))
    for k in a['state_dict']:
        assert torch.equal(a['state_dict'][k], b['state_dict'][k]), k


LAUGHS = r'''
import sys, torch
x = [0]
for _ in range(60):
    x = [x, x]
torch.save({'state_dict': {'w': torch.zeros(1)}, 'meta': {'x': x}},
           sys.argv[1])
'''


def _bombs(tmp_path):
    out = {}
    path = str(tmp_path / 'laughs.pth')
    run_tool('-c', LAUGHS, path)
    out['laughs'] = path
    for name, value in (('expanded weight', torch.zeros(1).expand(2**33)),
                        ('neg expanded', torch._neg_view(
                            torch.zeros(1).expand(2**33)))):
        path = str(tmp_path / f'{len(out)}.pth')
        torch.save({'state_dict': {'w': value}}, path)
        out[name] = path
    import zipfile
    plain = str(tmp_path / 'plain.pth')
    torch.save({'state_dict': {'w': torch.zeros(2**20)}}, plain)
    path = str(tmp_path / 'deflated.pth')
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(
            path, 'w', zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    out['compressed'] = path
    return out


def test_small_files_cannot_ask_for_unbounded_work(ckpts, tmp_path):
    import time
    for name, path in _bombs(tmp_path).items():
        start = time.monotonic()
        proc = run_tool('tools/test.py', ckpts['cfg'], path, '--work-dir',
                        str(tmp_path / 'w'), ok=False)
        _one_line_error(proc, path)
        assert time.monotonic() - start < 60, name
        assert not (tmp_path / 'w').exists(), name


def test_resume_through_the_config_is_checked(ckpts, tmp_path):
    bad = mutate(load(ckpts['ours']), 'lr tensor nan')
    path = str(tmp_path / 'bad.pth')
    torch.save(bad, path)
    work = tmp_path / 'work'
    proc = run_tool('tools/train.py', ckpts['cfg'], '--work-dir', str(work),
                    '--cfg-options', 'resume=True', f'load_from={path}',
                    ok=False)
    _one_line_error(proc, path, '--resume')
    work.mkdir()
    (work / 'last_checkpoint').write_text(path)
    proc = run_tool('tools/train.py', ckpts['cfg'], '--work-dir', str(work),
                    '--cfg-options', 'resume=True', ok=False)
    _one_line_error(proc, path, '--resume')
    assert os.listdir(work) == ['last_checkpoint']


def test_pretrained_named_any_way_is_read_before_the_run(tmp_path,
                                                        data_root):
    canary = tmp_path / 'canary.txt'
    evil = craft(tmp_path / 'evil.pth', attack('exec', canary))
    for how in (f'pretrained={evil!r}',
                f"init_cfg=dict(_delete_=True, type='mmengine.Pretrained', "
                f'checkpoint={evil!r})'):
        cfg = tiny_config(
            tmp_path, data_root, extra=f'model = dict(backbone=dict({how}))')
        work = tmp_path / 'work'
        proc = run_tool('tools/train.py', cfg, '--work-dir', str(work),
                        ok=False)
        _one_line_error(proc, evil, 'is refused')
        assert not work.exists() and not canary.exists(), how


def test_cfg_options_that_do_not_merge_are_one_line(ckpts, tmp_path):
    work = tmp_path / 'work'
    proc = run_tool('tools/train.py', ckpts['cfg'], '--work-dir', str(work),
                    '--cfg-options', 'model.backbone.init_cfg.type=x',
                    ok=False)
    _one_line_error(proc, '--cfg-options')
    assert not work.exists()


def test_one_cycle_runs_save_and_resume(tmp_path, data_root):
    extra = '''
    param_scheduler = [dict(type='OneCycleLR', eta_max=0.01, total_steps=2,
                            by_epoch=False)]
    '''
    cfg = tiny_config(tmp_path, data_root, max_iters=2, interval=1,
                      extra=extra)
    run_tool('tools/train.py', cfg, '--work-dir', str(tmp_path / 'a'))
    run_tool('tools/train.py', cfg, '--resume',
             str(tmp_path / 'a' / 'iter_1.pth'), '--work-dir',
             str(tmp_path / 'b'))
    a = load(str(tmp_path / 'a' / 'iter_2.pth'))['state_dict']
    b = load(str(tmp_path / 'b' / 'iter_2.pth'))['state_dict']
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_paper_config_without_its_weights_is_one_line(tmp_path):
    """Offline, with nothing in the hub cache, a paper config stops before
    the runner with one line naming the source, where the file goes and
    the way out; torchvision is not needed to resolve torchvision://."""
    cfg = 'configs/faster_rcnn/faster-rcnn_r50_fpn_sgd-gc_1x_coco.py'
    work = tmp_path / 'work'
    env = dict(_env(tmp_path), http_proxy='http://127.0.0.1:9',
               https_proxy='http://127.0.0.1:9')
    proc = run_tool('tools/train.py', cfg, '--work-dir', str(work),
                    ok=False, env=env)
    _one_line_error(proc, 'init_cfg', 'resnet50-0676ba61.pth',
                    'cannot be downloaded', 'init_cfg=None')
    assert not work.exists()


# --------------------------------------------------------------------------
# Found by the second attack review.
# --------------------------------------------------------------------------


def test_a_trusted_url_is_never_a_local_file_of_that_spelling(
        server, ckpts, tmp_path, monkeypatch):
    canary = tmp_path / 'canary.txt'
    folder, url = server
    (folder / 'official.pth').write_bytes(open(ckpts['ours'], 'rb').read())
    source = f'{url}/official.pth'
    shadow = tmp_path / source.replace('//', '/')  # what the OS would open
    shadow.parent.mkdir(parents=True)
    craft(shadow, attack('exec', canary))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'home'))
    ckpt = CheckpointDoor(trusted=(source, )).read(source)
    assert not canary.exists() and 'state_dict' in ckpt


def test_downloads_are_capped_and_leave_nothing_behind(server, tmp_path,
                                                       monkeypatch):
    folder, url = server
    (folder / 'big.pth').write_bytes(os.urandom(3 * 2**20))
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'home'))
    monkeypatch.setenv('MMDET_GC_MAX_DOWNLOAD_MB', '1')
    with pytest.raises(CheckpointError, match='larger than 1 MB'):
        CheckpointDoor().read(f'{url}/big.pth')
    cache = osp.dirname(hub_cache_file(f'{url}/big.pth'))
    assert os.listdir(cache) == []


def test_a_download_refused_by_the_checks_leaves_the_cache(
        server, tmp_path, monkeypatch):
    folder, url = server
    torch.save({'meta': {'x': 1}}, str(folder / 'noweights.pth'))
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'home'))
    with pytest.raises(CheckpointError, match='no model weights'):
        CheckpointDoor().read(f'{url}/noweights.pth')
    assert not osp.exists(hub_cache_file(f'{url}/noweights.pth'))


def test_long_keys_cost_no_more_than_their_size(tmp_path):
    import time
    key = 'k' * 2**20
    x = {'leaf': torch.zeros(1)}
    for _ in range(60):
        x = {key: x}
    path = str(tmp_path / 'keys.pth')
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'meta': {'x': x}}, path)
    start = time.monotonic()
    CheckpointDoor().read(path)
    assert time.monotonic() - start < 20


def test_pretrained_prefix_and_empty_pointer_are_one_line(
        ckpts, tmp_path, data_root):
    path = _backbone_file(ckpts['ours2'], str(tmp_path / 'bb.pth'))
    cfg = tiny_config(
        tmp_path, data_root, extra=f"""
        model = dict(backbone=dict(init_cfg=dict(
            _delete_=True, type='Pretrained', checkpoint={path!r},
            prefix='nope.')))
        """)
    work = tmp_path / 'work'
    proc = run_tool('tools/train.py', cfg, '--work-dir', str(work), ok=False)
    _one_line_error(proc, path, "prefix 'nope.'")
    assert not work.exists()
    work.mkdir()
    (work / 'last_checkpoint').write_text('')
    proc = run_tool('tools/train.py', ckpts['cfg'], '--resume', '--work-dir',
                    str(work), ok=False)
    _one_line_error(proc, 'last_checkpoint', 'names no checkpoint')
    assert os.listdir(work) == ['last_checkpoint']
