"""The last untrusted inputs, read as data: nothing a check refused takes a
name in torch's hub cache, a file name's sha256 prefix is checked on
download and on every cache hit, and the message hub's logged values of a
resumed file are numbers MMEngine logs (Gradient Centralization, Yong et
al., ECCV 2020: the runs of this package must be safe to resume).

Everything here runs in-process, with no network: ``urllib``'s
``urlopen`` (what the door downloads with) serves bytes from a dict.
"""
import fractions
import hashlib
import io
import itertools
import os
import os.path as osp
import pickle
import pickletools
import tempfile
import urllib.error
import urllib.request
import zipfile

import numpy as np
import pytest
import torch
from mmengine.logging import MessageHub

import mmdet_gc.checkpoint.door as door_mod
import mmdet_gc.checkpoint.reader as reader_mod
from mmdet_gc.checkpoint import (TAG, CheckpointDoor, CheckpointError,
                                 hub_cache_file, inspect_checkpoint, to_plain)
from mmdet_gc.checkpoint.nesting import pickle_depth

URL = 'https://models.example/zoo'


def as_bytes(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def weights():
    return {'state_dict': {'w': torch.arange(4.)}, 'meta': {'epoch': 0}}


@pytest.fixture
def net(tmp_path, monkeypatch):
    """A hub cache of its own and a network that serves ``net.files`` (URL
    to bytes) and nothing else; ``net.calls`` lists the URLs opened."""

    class Net:

        def __init__(self):
            self.files, self.calls = {}, []
            self.cache = tmp_path / 'hub' / 'checkpoints'

        def listing(self):
            return sorted(os.listdir(self.cache)) if osp.isdir(
                self.cache) else []

    net = Net()

    def urlopen(url, timeout=None):
        net.calls.append(url)
        if url not in net.files:
            raise urllib.error.URLError('no route to host')
        return io.BytesIO(net.files[url])

    monkeypatch.setattr(torch.hub, '_hub_dir', str(tmp_path / 'hub'))
    monkeypatch.setattr(urllib.request, 'urlopen', urlopen)
    return net


def refused(source, *words, resume=False):
    """The one line ``source`` is refused with, holding ``words``."""
    with pytest.raises(CheckpointError) as e:
        CheckpointDoor().read(source, resume=resume)
    line = str(e.value)
    assert '\n' not in line, line
    for word in words:
        assert word in line, (word, line)
    return line


# --------------------------------------------------------------------------
# Nothing a check refused stays in torch's hub cache.
# --------------------------------------------------------------------------


def watch(monkeypatch, source, interrupt=False):
    """``(path read, whether the cache name of source existed then)`` for
    each read of the door; with ``interrupt``, the read is killed
    (Ctrl-C) instead."""
    seen = []
    real = door_mod.read_checkpoint

    def read(path, trust=False):
        seen.append((path, osp.exists(hub_cache_file(source))))
        if interrupt:
            raise KeyboardInterrupt
        return real(path, trust=trust)

    monkeypatch.setattr(door_mod, 'read_checkpoint', read)
    return seen


def test_a_download_is_checked_before_it_takes_its_cache_name(
        net, monkeypatch):
    """While a download is read and checked, nothing is at its cache name
    (another run, or a later source with that file name, would take it):
    it gets that name, atomically, once every check passed."""
    source = f'{URL}/a/model.pth'
    net.files[source] = as_bytes(weights())
    seen = watch(monkeypatch, source)
    CheckpointDoor().read(source)
    (path, at_cache_name), = seen
    assert not at_cache_name and path != hub_cache_file(source)
    assert net.listing() == ['model.pth']


@pytest.mark.parametrize('content', ['foreign global', 'interrupted'])
def test_a_refused_download_never_serves_a_later_source(
        net, monkeypatch, content):
    """A download refused by the content checks (a pickle naming a global
    that is not allow-listed), or whose checks never finished, is never
    under its cache name: a later source with the same file name is
    downloaded, never served those bytes."""
    first, later = f'{URL}/a/model.pth', f'{URL}/b/model.pth'
    if content == 'foreign global':
        net.files[first] = as_bytes(
            dict(weights(), x=fractions.Fraction(1, 3)))
        seen = watch(monkeypatch, first)
        refused(first, 'is refused', 'fractions.Fraction', first)
    else:
        net.files[first] = as_bytes(weights())
        seen = watch(monkeypatch, first, interrupt=True)
        with pytest.raises(KeyboardInterrupt):
            CheckpointDoor().read(first)
    assert [at_cache_name for _, at_cache_name in seen] == [False]
    assert net.listing() == []
    refused(later, 'cannot be downloaded', later)  # not served from cache
    assert net.calls == [first, later]


def test_a_refusal_after_the_read_leaves_nothing_in_the_cache(
        net, monkeypatch):
    """What MMEngine does to an ``mmcls://`` checkpoint (keep the
    backbone) failing on odd contents is one line, and the download is not
    kept."""
    import mmengine.runner.checkpoint as mmengine_checkpoint
    source = f'{URL}/cls/backbone.pth'
    monkeypatch.setattr(mmengine_checkpoint, 'get_mmcls_models',
                        lambda: {'tiny': source})
    net.files[source] = as_bytes({'state_dict': {1: torch.zeros(2)}})
    refused('mmcls://tiny', 'mmcls://tiny', 'cannot be checked')
    assert net.listing() == []


# --------------------------------------------------------------------------
# A file name's sha256 prefix, on download and on every cache hit.
# --------------------------------------------------------------------------


def hashed(data, right=True):
    """A URL whose file name carries the sha256 prefix of ``data`` (or of
    something else)."""
    digest = hashlib.sha256(data if right else data + b'!').hexdigest()
    return f'{URL}/faster_rcnn_r50_fpn_1x_coco_20200130-{digest[:8]}.pth'


def test_a_download_whose_hash_prefix_does_not_match_is_refused(
        net, monkeypatch):
    data = as_bytes(weights())
    source = hashed(data, right=False)
    net.files[source] = data
    reads = []
    monkeypatch.setattr(door_mod, 'read_checkpoint',
                        lambda *a, **k: reads.append(a))
    name = osp.basename(source)
    line = refused(source, name, name[-12:-4],
                   hashlib.sha256(data).hexdigest(), 'not kept')
    assert reads == [] and net.listing() == [], line  # never unpickled


def test_a_cache_hit_whose_hash_prefix_does_not_match_is_removed(net):
    """A file in the cache under a hashed name (planted, truncated, or an
    older file of that name) is checked on every hit, and removed."""
    data = as_bytes(weights())
    source = hashed(data, right=False)
    os.makedirs(net.cache)
    with open(hub_cache_file(source), 'wb') as f:
        f.write(data)
    actual = hashlib.sha256(data).hexdigest()
    refused(source, osp.basename(source), actual, 'removed from torch')
    assert net.listing() == [] and net.calls == []


def test_a_matching_hash_prefix_passes_on_download_and_on_a_hit(net):
    data = as_bytes(weights())
    source = hashed(data)
    net.files[source] = data
    first = CheckpointDoor().read(source)
    assert net.listing() == [osp.basename(source)]
    second = CheckpointDoor().read(source)  # a cache hit, checked again
    assert net.calls == [source]
    assert torch.equal(first['state_dict']['w'], second['state_dict']['w'])


# --------------------------------------------------------------------------
# What a resumed file's message hub holds.
# --------------------------------------------------------------------------

_HUBS = itertools.count()


def genuine_hub():
    """A message hub's state, exactly as ``MessageHub.state_dict()`` makes
    it in a run: float losses (one a tensor), the lr, an int metric, the
    inf grad norm of a step AMP skipped, and runtime info."""
    hub = MessageHub.get_instance(f'untrusted_inputs_{next(_HUBS)}')
    for loss in (torch.tensor(1.5), 1.25, 1.0):
        hub.update_scalar('train/loss', loss)
    hub.update_scalar('train/lr', 0.02)
    hub.update_scalar('val/count', 3)
    hub.update_scalar('train/grad_norm', float('inf'))
    hub.update_scalar('train/grad_norm', 2.5)
    hub.update_info('iter', 3)
    hub.update_info('last_ckpt', '/work/iter_3.pth')
    return hub.state_dict()


def resumable(tmp_path, hub, plain=False):
    ckpt = dict(weights(), meta={'epoch': 0, 'iter': 3}, message_hub=hub)
    path = str(tmp_path / ('plain.pth' if plain else 'stock.pth'))
    torch.save(to_plain(ckpt) if plain else ckpt, path)
    return path


@pytest.mark.parametrize('plain', [False, True])
def test_a_genuine_message_hub_is_resumed(tmp_path, plain):
    """Stock MMEngine's pickled ``HistoryBuffer``s, and our plain form."""
    path = resumable(tmp_path, genuine_hub(), plain)
    ckpt = CheckpointDoor().read(path, resume=True)
    loss = ckpt['message_hub']['log_scalars']['train/loss']
    assert loss._log_history.tolist() == [1.5, 1.25, 1.0]
    assert loss._count_history.tolist() == [1, 1, 1]


def _set(key, logs=None, counts=None):

    def change(hub):
        buffer = hub['log_scalars'][key]
        if logs is not None:
            buffer._log_history = np.asarray(logs)
        if counts is not None:
            buffer._count_history = np.asarray(counts)

    return change


def _replace(key, value):
    return lambda hub: hub['log_scalars'].__setitem__(key, value)


#: (case, how the hub is changed, the key named, what the line says).
CRAFTED = [
    # A traceback in MMEngine's logger once the work dir is made.
    ('complex value', _set('train/loss', [1 + 2j, 1, 1]), 'train/loss',
     'complex128 values, not real numbers'),
    # MMEngine skips it with a warning: not what it writes.
    ('an int for a HistoryBuffer', _replace('train/loss', 3), 'train/loss',
     'is 3, not a HistoryBuffer'),
    # Never what MMEngine logs as a loss (a tensor's item()).
    ('ints for a float array', _set('train/loss', [3, 2, 1]), 'train/loss',
     'int64 values where MMEngine logs floats'),
    ('nan count', _set('train/lr', counts=[np.nan]), 'train/lr',
     'counts that are not whole numbers'),
    ('inf count', _set('train/lr', counts=[np.inf]), 'train/lr',
     'counts that are not whole numbers'),
    ('negative count', _set('train/lr', counts=[-1]), 'train/lr',
     'counts that are not whole numbers >= 0'),
    ('fractional count', _set('train/lr', counts=[0.5]), 'train/lr',
     'counts that are not whole numbers'),
    # current() raises on it, in the logger.
    ('empty history (wrong shape)', _set('val/count', logs=[], counts=[]),
     'val/count', 'an empty history'),
    # numpy's int64 sums wrap around.
    ('huge int', _set('val/count', [2**62]), 'val/count', 'ints beyond'),
    # MMEngine logs no bool as a scalar: not a real number.
    ('bool values', _set('val/count', [True]), 'val/count',
     'bool values, not real numbers'),
    ('resumed key that is not a bool',
     lambda hub: hub['resumed_keys'].__setitem__('train/loss', 'yes'),
     'resumed_keys', 'names to bools'),
]


@pytest.mark.parametrize(
    'change,key,words,plain',
    [
        pytest.param(*case[1:], plain, id=f'{case[0]}, {form}')
        for case in CRAFTED
        for plain, form in ((False, 'stock'), (True, 'plain'))
        # A stock pickle writes an empty array's bytes as builtins.bytes(), a
        # global the door refuses already.
        if plain or case[3] != 'an empty history'
    ])
def test_a_crafted_message_hub_is_refused_in_one_line(tmp_path, change, key,
                                                      words, plain):
    hub = genuine_hub()
    change(hub)
    path = resumable(tmp_path, hub, plain)
    says = (path, 'cannot be resumed', 'message_hub.', key, words)
    refused(path, *says, resume=True)
    with pytest.raises(CheckpointError, match='message_hub'):
        inspect_checkpoint(path, resume=True)
    CheckpointDoor().read(path)  # its weights alone: load_from reads them


# --------------------------------------------------------------------------
# A pickle nested too deeply is refused before torch.load runs.
# --------------------------------------------------------------------------


def deep_key_file(path, depth, legacy=False):
    """A checkpoint whose one dict key is a tuple nested ``depth`` deep (at
    150,000 levels, hashing it in ``torch.load`` crashed the process)."""
    pkl = b'\x80\x02}' + b')' + b'\x85' * depth + b'\x88s.'
    if legacy:  # torch's pre-1.6 format: the object is its 4th pickle
        head = io.BytesIO(b'')
        torch.save(weights(), head, _use_new_zipfile_serialization=False)
        head.seek(0)
        for _ in range(3):  # magic number, protocol, system info
            for _ in pickletools.genops(head):
                pass
        with open(path, 'wb') as f:
            f.write(head.getvalue()[:head.tell()] + pkl +
                    pickle.dumps([], protocol=2))
        return str(path)
    torch.save(weights(), str(path))
    with zipfile.ZipFile(str(path)) as z:
        entries = [(i.filename, z.read(i.filename)) for i in z.infolist()]
    with zipfile.ZipFile(str(path), 'w', zipfile.ZIP_STORED) as z:
        for name, data in entries:
            z.writestr(name, pkl if name.endswith('data.pkl') else data)
    return str(path)


@pytest.fixture
def loads(monkeypatch):
    """The files ``torch.load`` was asked to read."""
    seen = []
    real = reader_mod._load

    def load(path, trust):
        seen.append(path)
        return real(path, trust)

    monkeypatch.setattr(reader_mod, '_load', load)
    return seen


def test_the_crashing_key_is_measured_without_being_unpickled():
    """The reproducer's pickle (150,000 levels) is read opcode by opcode,
    in well under a second, and stops at the limit."""
    pkl = b'\x80\x02}' + b')' + b'\x85' * 150_000 + b'\x88s.'
    assert pickle_depth(io.BytesIO(pkl), 10**6) == 150_002  # the dict
    assert pickle_depth(io.BytesIO(pkl), 1000) == 1001


@pytest.mark.parametrize('legacy', [False, True], ids=['zip', 'legacy'])
def test_a_pickle_nested_too_deeply_is_refused_before_the_load(
        tmp_path, loads, legacy):
    path = deep_key_file(tmp_path / 'deep.pth', 2_000, legacy)
    refused(path, path, 'nests more than 1000 levels')
    assert loads == []


def test_a_download_nested_too_deeply_leaves_nothing_behind(
        net, tmp_path, loads):
    source = f'{URL}/deep.pth'
    with open(deep_key_file(tmp_path / 'deep.pth', 2_000), 'rb') as f:
        net.files[source] = f.read()
    refused(source, 'nests more than 1000 levels')
    assert loads == [] and net.listing() == []  # no .part either


def test_genuine_checkpoints_nest_shallowly():
    """What MMEngine and our hook write (the message hub's buffers, numpy
    values, optimizer state) is far from the limit."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    ckpt = dict(
        state_dict=model.state_dict(),
        optimizer=optimizer.state_dict(),
        meta={
            'epoch': 0,
            'iter': 3
        },
        message_hub=genuine_hub())
    for data in (as_bytes(ckpt), as_bytes(to_plain(ckpt))):
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            pkl = next(n for n in z.namelist() if n.endswith('data.pkl'))
            assert pickle_depth(io.BytesIO(z.read(pkl)), 10**6) < 20


def test_a_part_file_in_the_cache_is_never_a_hit(net):
    """A name ending in ``.part`` may be what a process that died left
    half written: downloaded again, never read from the cache."""
    source = f'{URL}/model.part'
    net.files[source] = as_bytes(weights())
    os.makedirs(net.cache)
    with open(hub_cache_file(source), 'wb') as f:
        f.write(as_bytes({'state_dict': {'w': torch.ones(1)}}))
    ckpt = CheckpointDoor().read(source)
    assert net.calls == [source]
    assert torch.equal(ckpt['state_dict']['w'], torch.arange(4.))


# --------------------------------------------------------------------------
# A small file cannot make the reader copy gigabytes.
# --------------------------------------------------------------------------


def with_junk(junk):
    return {'state_dict': {'w': torch.zeros(1)}, 'junk': junk}


def test_a_shared_tensor_with_a_negative_bit_is_resolved_once(tmp_path):
    path = str(tmp_path / 'neg.pth')
    torch.save(with_junk([torch.arange(4.)._neg_view()] * 3), path)
    junk = CheckpointDoor().read(path)['junk']
    assert junk[0] is junk[1] is junk[2] and not junk[0].is_neg()
    assert junk[0].tolist() == [-0., -1., -2., -3.]


def test_a_shared_marked_array_is_decoded_once(tmp_path):
    path = str(tmp_path / 'marked.pth')
    array = {TAG: 'ndarray', 'data': torch.arange(4.)}
    torch.save(with_junk([array] * 3), path)
    junk = CheckpointDoor().read(path)['junk']
    assert junk[0] is junk[1] is junk[2]
    assert junk[0].tolist() == [0., 1., 2., 3.]


class SharedBytesArray:
    """Pickles as a numpy array, as MMEngine's numpy values are, over one
    bytes object that the pickle memoizes: a copy per array on load."""

    raw = bytes(2**20)

    def __reduce__(self):
        reconstruct, args, _ = np.zeros(1).__reduce__()
        state = (1, (len(self.raw) // 8, ), np.dtype('f8'), False, self.raw)
        return reconstruct, args, state


def views(neg):
    base = torch.zeros(2**18)
    return [(base._neg_view() if neg else base)[0:] for _ in range(40)]


@pytest.mark.parametrize(
    'junk', [
        lambda: views(neg=True),
        lambda: [{
            TAG: 'ndarray',
            'data': v
        } for v in views(neg=False)],
        lambda: [SharedBytesArray() for _ in range(40)],
    ],
    ids=['negative views', 'marked views', 'stock arrays'])
def test_one_storage_copied_many_times_over_is_refused(tmp_path, junk):
    """40 distinct tensors (or numpy arrays) over one 1 MB storage (or
    bytes object): 40 MB of copies from a 1 MB file, beyond what it may
    copy (its size and 16 MB)."""
    path = str(tmp_path / 'views.pth')
    torch.save(with_junk(junk()), path)
    refused(path, path, 'would copy more than 17 MB', 'many times over')


# --------------------------------------------------------------------------
# A download a check after the read refused is not kept in the cache.
# --------------------------------------------------------------------------


def test_discard_removes_this_doors_download_only(net):
    mine, theirs = f'{URL}/a/mine.pth', f'{URL}/a/theirs.pth'
    net.files[mine] = net.files[theirs] = as_bytes(weights())
    CheckpointDoor().read(theirs)  # in the cache before this door
    door = CheckpointDoor()
    door.read(mine)
    door.read(theirs)
    door.discard(mine)
    door.discard(theirs)
    assert net.listing() == ['theirs.pth']


def train_refused(tmp_path, data_root, *args, extra=''):
    """The one line ``mmdet-gc train`` of a tiny config exits with."""
    from mmdet_gc.cli import train

    from tool_helpers import tiny_config
    cfg = tiny_config(tmp_path, data_root, extra=extra)
    work = str(tmp_path / 'work')
    with pytest.raises(SystemExit) as e:
        train.main([cfg, '--work-dir', work, *args], prog='train')
    assert not osp.exists(work)
    return str(e.value.code)


def test_a_resume_download_the_run_refuses_is_not_kept(net, tmp_path,
                                                       data_root):
    source = f'{URL}/run/latest.pth'
    hub = {'log_scalars': {}, 'runtime_info': {}, 'resumed_keys': {}}
    net.files[source] = as_bytes(
        dict(weights(), meta={
            'epoch': 0,
            'iter': 10**6
        }, message_hub=hub))
    line = train_refused(tmp_path, data_root, '--resume', source)
    assert 'beyond the configured max_iters' in line, line
    assert net.listing() == []


def test_an_init_cfg_download_without_its_prefix_is_not_kept(
        net, tmp_path, data_root):
    source = f'{URL}/zoo/pretrained.pth'
    net.files[source] = as_bytes({'state_dict': {'other.w': torch.ones(2)}})
    extra = ('model = dict(backbone=dict(init_cfg=dict(_delete_=True, '
             'type="Pretrained", '
             f'checkpoint={source!r}, prefix="backbone")))')
    line = train_refused(tmp_path, data_root, extra=extra)
    assert "no weights under its prefix 'backbone.'" in line, line
    assert net.listing() == []


# --------------------------------------------------------------------------
# The hub cache's OS errors, one line each.
# --------------------------------------------------------------------------


def test_a_long_file_name_is_downloaded(net):
    """250 characters, a valid name: the temporary name is short."""
    source = f'{URL}/{"a" * 246}.pth'
    net.files[source] = as_bytes(weights())
    CheckpointDoor().read(source)
    assert net.listing() == [osp.basename(source)]


def test_a_file_name_too_long_for_the_cache_is_one_line(net):
    source = f'{URL}/{"a" * 300}.pth'
    net.files[source] = as_bytes(weights())
    refused(source, source, 'File name too long')
    assert net.listing() == []


def test_a_cache_folder_that_is_a_file_is_one_line(net):
    os.makedirs(osp.dirname(net.cache))
    open(net.cache, 'w').close()
    source = f'{URL}/model.pth'
    refused(source, source, str(net.cache), 'File exists')


def denied(*args, **kwargs):
    raise PermissionError(13, 'Permission denied')


@pytest.mark.parametrize('where', ['hash check', 'read', 'write'])
def test_an_unreadable_or_unwritable_cache_is_one_line(net, monkeypatch,
                                                       where):
    data = as_bytes(weights())
    source = hashed(data) if where == 'hash check' else f'{URL}/model.pth'
    net.files[source] = data
    if where == 'write':  # a read-only cache folder
        monkeypatch.setattr(tempfile, 'mkstemp', denied)
    else:  # a cached file this user cannot read
        os.makedirs(net.cache)
        with open(hub_cache_file(source), 'wb') as f:
            f.write(data)
        module = door_mod if where == 'hash check' else reader_mod
        monkeypatch.setattr(module, 'open', denied, raising=False)
    refused(source, 'Permission denied')


# --------------------------------------------------------------------------
# The sha256 prefix of a file name: where torch's hub reads one.
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    'name,checked',
    [
        ('y-{}.b-c.pth', True),  # torch's HASH_REGEX: the first -<hex>.
        ('z-{}.pth.tar', True),
        ('x-{}.pth', True),
        ('x-{upper}.pth', False),  # not hex to torch: a name
        ('x-{}', False),  # no dot after it
        ('a-.pth', False),  # empty: every hash starts with it
        ('resnet-18.pth', False),  # two digits: a name, not a hash
        ('r-{short}.pth', False),  # fewer than 8 hex digits
    ])
def test_a_hash_prefix_is_checked_where_torch_reads_one(net, name, checked):
    data = as_bytes(weights())
    wrong = hashlib.sha256(data + b'!').hexdigest()[:8]
    source = f'{URL}/' + name.format(
        wrong, upper=wrong.upper(), short=wrong[:7])
    net.files[source] = data
    if checked:
        refused(source, 'its sha256 is', f'starts with {wrong}')
    else:
        CheckpointDoor().read(source)
        assert net.listing() == [osp.basename(source)]


# --------------------------------------------------------------------------
# The message hub: no bools, and dtypes numpy lacks in the door's words.
# --------------------------------------------------------------------------


def test_a_bfloat16_history_is_refused_in_the_doors_words(tmp_path):
    hub = to_plain(genuine_hub())
    logs = hub['log_scalars']['train/lr']['log_history']
    logs['data'] = logs['data'].to(torch.bfloat16)
    path = str(tmp_path / 'bf16.pth')
    torch.save(
        dict(weights(), meta={
            'epoch': 0,
            'iter': 3
        }, message_hub=hub), path)
    refused(
        path,
        'train/lr.log_history',
        'torch.bfloat16 values',
        'not a numpy dtype',
        resume=True)
