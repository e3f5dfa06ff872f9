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
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from mmengine.logging import MessageHub

import mmdet_gc.checkpoint.door as door_mod
from mmdet_gc.checkpoint import (CheckpointDoor, CheckpointError,
                                 hub_cache_file, inspect_checkpoint, to_plain)

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
