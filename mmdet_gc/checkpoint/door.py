"""One door for every checkpoint source.

MMEngine dispatches every checkpoint it loads on the source's scheme
(``CheckpointLoader``: a local path, ``http(s)://``, ``torchvision://``,
``open-mmlab://``, ``mmcls://``, ``s3://``, ``pavi://``...), from the test
checkpoint, ``load_from``, ``--resume`` (and the path a work dir's
``last_checkpoint`` names) and every ``init_cfg`` of type ``Pretrained``.
Its loaders unpickle with ``weights_only=False`` for downloads
(``torch.hub.load_state_dict_from_url``). :class:`CheckpointDoor` stands in
for every one of them while it is installed (:meth:`CheckpointDoor.
installed`, around the tools' runner): a source is resolved to a local
file (a path that exists is always that file; a URL is taken from
torch's hub cache or downloaded, without being unpickled, under a
temporary name that becomes its cache name only once every check passed;
a model-zoo name goes through MMEngine's own URL tables, which are data
files), and the file is read by
:func:`~mmdet_gc.checkpoint.reader.read_checkpoint` as data. A file name
that carries a sha256 prefix (``resnet50-0676ba61.pth``) is checked
against the file's bytes on download and on every cache hit.
``weights_only=False`` is used only for a source the user trusted by name
(``--trust-checkpoint``). Nothing is changed on ``import mmdet_gc``.

The tools read their checkpoints through :meth:`CheckpointDoor.read` before
the runner is built, so a refusal is one line and the work dir is
untouched; the runner then gets the checked object, not a second read.
"""
import contextlib
import copy
import functools
import hashlib
import os
import os.path as osp
import re
import tempfile
from typing import Any, Callable, Dict, Iterator, Optional, Tuple
from urllib.parse import urlparse

import torch
from torch.hub import HASH_REGEX

from ..utils.messages import first_line
from .errors import CheckpointError
from .plain import from_plain, to_plain
from .reader import check_contents, read_checkpoint

HTTP = ('http://', 'https://')
TORCHVISION = ('modelzoo://', 'torchvision://')
OPENMMLAB = ('open-mmlab://', 'openmmlab://')
MMCLS = 'mmcls://'
PAVI = 'pavi://'
CEPH = (r'(\S+\:)?s3://', r'(\S+\:)?petrel://')


def _schemes() -> Dict[str, Callable]:
    from mmengine.runner.checkpoint import CheckpointLoader
    return CheckpointLoader._schemes


def scheme_of(source: str,
              schemes: Optional[Dict[str, Callable]] = None) -> str:
    """The ``CheckpointLoader`` prefix MMEngine dispatches ``source`` on
    (``''`` for a local path), matched exactly as MMEngine matches it."""
    return next((p for p in (schemes or _schemes()) if re.match(p, source)),
                '')


def hub_cache_file(url: str) -> str:
    """Where torch's hub keeps the download of ``url``:
    ``<hub_dir>/checkpoints/<the URL's file name>``, as
    ``torch.hub.load_state_dict_from_url`` does."""
    name = osp.basename(urlparse(url).path)
    if name in ('', '.', '..'):
        raise CheckpointError(f'checkpoint {url}: the URL names no file')
    return osp.join(torch.hub.get_dir(), 'checkpoints', name)


def download(url: str,
             verify: Callable[[str], dict],
             fresh: Optional[str] = None) -> Tuple[dict, Optional[str]]:
    """``url`` read through ``verify`` (the door's read and checks), from
    torch's hub cache or downloaded into it (in a distributed run, rank 0
    first); with ``fresh`` (a folder), downloaded into it whatever the
    cache holds, so that a file trusted by its URL is that URL's file.

    A download is written to a temporary name and moved to its cache name
    only once it passed every check (:func:`check_hash`, then ``verify``):
    nothing a check refused is ever in the cache under that name, for this
    process or another. A cache hit is checked the same way before use.

    Returns:
        tuple: What ``verify`` returned, and the cache file this call
        added (None for a cache hit or a fresh download).
    """
    from mmengine.dist import barrier, get_dist_info
    dst = hub_cache_file(url)
    if fresh is not None:
        dst = osp.join(fresh, osp.basename(dst))
    rank, world_size = get_dist_info()
    found: Tuple[Any, Optional[str]] = (None, None)
    for turn in (0, 1) if fresh is None and world_size > 1 else (0, ):
        if (rank == 0) == (turn == 0):
            found = _checked_download(url, dst, verify, fresh is None)
        if world_size > 1 and turn == 0:
            barrier()
    return found


def _checked_download(url: str, dst: str, verify: Callable[[str], dict],
                      cache: bool) -> Tuple[dict, Optional[str]]:
    """:func:`download` on one process."""
    # A cache hit: the same checks as a download. A name ending in .part is
    # never one: it could be what a process that died left half written.
    if osp.exists(dst) and not dst.endswith(PART):
        check_hash(dst, dst, "removed from torch's hub cache")
        return verify(dst), None
    folder = osp.dirname(dst)
    with cache_errors(url, folder):
        os.makedirs(folder, exist_ok=True)
        # A short name of its own: the URL's can be as long as a name may.
        fd, tmp = tempfile.mkstemp(dir=folder, prefix='.', suffix=PART)
        os.close(fd)
    try:
        try:
            fetch(url, tmp)
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(
                f'checkpoint {url} cannot be downloaded ({first_line(e)}); '
                f'place the file at {hub_cache_file(url)}, or do without '
                'it (for a pretrained backbone: --cfg-options '
                'model.backbone.init_cfg=None)') from None
        check_hash(tmp, dst, f'downloaded from {url}, not kept')
        try:
            ckpt = verify(tmp)
        except CheckpointError as e:  # name the file, not its temporary
            raise CheckpointError(str(e).replace(tmp, dst)) from None
        with cache_errors(url, dst):
            os.replace(tmp, dst)  # atomic: whole and checked, or not there
    finally:
        with contextlib.suppress(OSError):  # never hide why it failed
            os.remove(tmp)
    return ckpt, dst if cache else None


#: The suffix of a download on its way into the cache.
PART = '.part'


@contextlib.contextmanager
def cache_errors(source: str, path: str) -> Iterator[None]:
    """An ``OSError`` on ``path`` in torch's hub cache (a folder that is a
    file or is read-only, an unreadable file, a name too long...) as the
    door's one line."""
    try:
        yield
    except OSError as e:
        raise CheckpointError(
            f"checkpoint {source}: torch's hub cache cannot be used at {path} "
            f'({e.strerror or first_line(e)})') from None


#: The fewest hex digits of a hash prefix: torch hub's and OpenMMLab's
#: file names carry 8 (``resnet50-0676ba61.pth``).
MIN_HASH = 8


def hash_prefix(name: str) -> Optional[str]:
    """The sha256 prefix torch's hub reads from the file name ``name``
    (``resnet50-0676ba61.pth``): what its ``HASH_REGEX``,
    ``-([a-f0-9]*)\\.``, first finds in the base name, as
    ``load_state_dict_from_url(check_hash=True)`` does, where it has the
    :data:`MIN_HASH` hex digits of torch hub's and OpenMMLab's names (so
    that ``resnet-18.pth`` names no hash); or None. Uppercase hex is not a
    prefix (to torch neither)."""
    found = HASH_REGEX.search(osp.basename(name))
    return found.group(1) if found and len(found.group(1)) >= MIN_HASH \
        else None


def check_hash(path: str, name: str, fate: str) -> None:
    """Refuse ``path`` (the file ``name``, in the hub cache or on its
    way there) and remove it where the name carries a sha256 prefix
    (:func:`hash_prefix`) that its bytes do not have: a tampered or
    truncated download, or another file cached under that name.
    ``torch.hub`` checks this on download only, and only with
    ``check_hash``; MMEngine not at all.

    Raises:
        CheckpointError: One line naming the file, both hashes and
            ``fate`` (what became of the file).
    """
    prefix = hash_prefix(name)
    if not prefix or not osp.isfile(path):
        return  # none (or empty); or no file, which the read refuses
    digest = hashlib.sha256()
    with cache_errors(name, path), open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(2**20), b''):
            digest.update(chunk)
    actual = digest.hexdigest()
    if not actual.startswith(prefix):
        with cache_errors(name, path):
            os.remove(path)
        raise CheckpointError(
            f'checkpoint {name} is refused: its sha256 is {actual}, not '
            f'one that starts with {prefix} as its name says ({fate})')


#: Seconds a download may wait for data, and the largest it may be (MB);
#: ``MMDET_GC_MAX_DOWNLOAD_MB`` changes the latter.
DOWNLOAD_TIMEOUT = 60
MAX_DOWNLOAD_MB = 4096


def fetch(url: str, dst: str) -> None:
    """Download ``url`` into ``dst`` (a temporary file the caller moves
    into place once it is checked): with a timeout on every read and a cap
    on the size, so that a server that stalls or never ends cannot hang
    the tool or fill the disk."""
    from urllib.request import urlopen
    limit = int(os.environ.get('MMDET_GC_MAX_DOWNLOAD_MB',
                               MAX_DOWNLOAD_MB)) * 2**20
    with open(dst, 'wb') as out, urlopen(
            url, timeout=DOWNLOAD_TIMEOUT) as response:
        size = 0
        while True:
            chunk = response.read(2**20)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise CheckpointError(
                    f'checkpoint {url} is larger than {limit >> 20} MB '
                    '(MMDET_GC_MAX_DOWNLOAD_MB raises the limit)')
            out.write(chunk)


def _zoo_url(source: str, prefix: str, table: Callable[[], dict],
             what: str) -> str:
    name = source[len(prefix):]
    try:
        urls = table()
    except Exception as e:  # a broken table or package
        raise CheckpointError(f'checkpoint {source}: the {what} table cannot '
                              f'be read ({first_line(e)})') from None
    url = urls.get(name) if isinstance(urls, dict) else None
    if not isinstance(url, str):
        raise CheckpointError(f'checkpoint {source}: {what} has no model '
                              f'named {name!r}')
    return url


def torchvision_urls() -> dict:
    """``torchvision://`` names: the table MMEngine ships for torchvision
    0.12 (a data file; no torchvision needed), then torchvision's own
    names where torchvision imports."""
    import mmengine
    from mmengine.fileio import load
    urls = load(osp.join(mmengine.__path__[0], 'hub', 'torchvision_0.12.json'))
    try:
        from mmengine.runner.checkpoint import get_torchvision_models
        urls = {**get_torchvision_models(), **urls}
    except Exception:  # no (or a broken) torchvision: the shipped table
        pass
    return urls


def _openmmlab_file(source: str, verify: Callable[[str], dict],
                    fresh: Optional[str]) -> Tuple[dict, Optional[str]]:
    from mmengine.runner.checkpoint import (_get_mmengine_home,
                                            get_deprecated_model_names,
                                            get_external_models)
    prefix = next(p for p in OPENMMLAB if source.startswith(p))
    name = source[len(prefix):]
    deprecated = get_deprecated_model_names()
    if name in deprecated:
        source = prefix + deprecated[name]
    url = _zoo_url(source, prefix, get_external_models, 'open-mmlab')
    if url.startswith(HTTP):
        return download(url, verify, fresh)
    return verify(osp.join(_get_mmengine_home(), url)), None


def _ceph_file(source: str, folder: str) -> str:
    from mmengine.fileio import get_file_backend
    backend = get_file_backend(source, backend_args={'backend': 'petrel'})
    path = osp.join(folder, 'checkpoint.pth')
    with open(path, 'wb') as f:
        f.write(backend.get(source))
    return path


def _pavi_file(source: str, folder: str) -> str:
    from pavi import modelcloud
    model = modelcloud.get(source[len(PAVI):])
    path = osp.join(folder, 'checkpoint.pth')
    model.download(path)
    return path


#: The door's read and checks of one local file: ``verify(path, after)``.
Verify = Callable[[str, Optional[Callable[[dict], dict]]], dict]


def read_source(source: str,
                folder: str,
                verify: Verify,
                schemes: Optional[Dict[str, Callable]] = None,
                fresh: bool = False) -> Tuple[dict, Optional[str]]:
    """``source`` read from its local file by ``verify(path, after)``
    (``after``: what MMEngine does to the loaded checkpoint, e.g. keep the
    backbone of an ``mmcls://`` one), and the file this call put in
    torch's hub cache, if any (only once ``verify`` passed it).

    A path that exists is that file, whatever it looks like. Remote
    storage without a cache (``s3://``, ``pavi://``) is fetched into
    ``folder``, and so is a download with ``fresh`` (a trusted source:
    never a file the cache already held).

    Raises:
        CheckpointError: A source the door does not read (a scheme another
            package registered), a model-zoo name that is not in its table,
            a failed download, or what ``verify`` refused.
    """
    scheme = scheme_of(source, schemes)
    # A path that exists is that file; but a source trusted by its URL is
    # that URL's file, never a local one that happens to spell the same.
    if osp.exists(osp.expanduser(source)) and not (fresh and scheme):
        return verify(osp.expanduser(source), None), None
    into = folder if fresh else None
    if scheme == '':
        return verify(osp.expanduser(source), None), None
    plain = functools.partial(verify, after=None)
    if scheme in HTTP:
        return download(source, plain, into)
    if scheme in TORCHVISION:
        url = _zoo_url(source, scheme, torchvision_urls, 'torchvision')
        return download(url, plain, into)
    if scheme in OPENMMLAB:
        return _openmmlab_file(source, plain, into)
    if scheme == MMCLS:
        from mmengine.runner.checkpoint import (_process_mmcls_checkpoint,
                                                get_mmcls_models)
        url = _zoo_url(source, scheme, get_mmcls_models, 'mmcls')
        return download(
            url, functools.partial(verify, after=_process_mmcls_checkpoint),
            into)
    try:
        if scheme in CEPH:
            path = _ceph_file(source, folder)
        elif scheme == PAVI:
            path = _pavi_file(source, folder)
        else:
            path = None
    except CheckpointError:
        raise
    except Exception as e:  # no petrel / pavi client, no such object...
        raise CheckpointError(f'checkpoint {source} cannot be fetched: '
                              f'{first_line(e)}') from None
    if path is not None:
        return verify(path, None), None
    raise CheckpointError(
        f'checkpoint {source}: its scheme {scheme!r} is not one mmdet-gc '
        'reads as data; fetch the file and give its local path (or pass '
        '--trust-checkpoint to let the loader that package registered '
        'read this one source)')


class CheckpointDoor:
    """Every checkpoint of a run, read as data through one door.

    Args:
        trusted (iterable of str): Sources (exactly as the config or the
            command line names them) the user consents to load with
            ``weights_only=False`` (``--trust-checkpoint``).

    Example:
        >>> door = CheckpointDoor()
        >>> door.read(cfg.load_from, 'load_from')  # checked up front
        >>> with door.installed():
        ...     runner = Runner.from_cfg(cfg)
        ...     runner.train()  # load_from, resume and init_cfg: the door
    """

    def __init__(self, trusted: Tuple[str, ...] = ()) -> None:
        self.trusted = set(trusted)
        self._checked: Dict[str, dict] = {}
        self._fetched: Dict[str, str] = {}  # downloads made by this door
        # MMEngine's own loaders, as registered before the door is
        # installed: for dispatch, and for a trusted foreign scheme.
        self._schemes = dict(_schemes())

    def trust(self, source: str) -> None:
        """Consent to load ``source`` with ``weights_only=False``."""
        self.trusted.add(source)

    def _read(self, source: str, resume: bool) -> dict:
        """Read ``source`` and check it (:meth:`_check`): a download is in
        the hub cache only once it passed."""
        trust = source in self.trusted
        scheme = scheme_of(source, self._schemes)
        loader = self._schemes.get(scheme)
        if trust and scheme not in _known() and loader is not None and \
                not osp.exists(osp.expanduser(source)):
            # Another package's scheme, trusted by name: its own loader.
            ckpt = from_plain(to_plain(loader(source, 'cpu')))
            self._check(ckpt, source, resume)
            return ckpt

        def verify(path: str, after: Optional[Callable]) -> dict:
            ckpt = read_checkpoint(path, trust=trust)
            if after is not None:
                try:
                    ckpt = after(ckpt)
                except Exception as e:  # MMEngine's step on odd contents
                    raise CheckpointError(
                        f'checkpoint {source} cannot be checked: '
                        f'{first_line(e)}') from None
            self._check(ckpt, source, resume)
            return ckpt

        try:
            with tempfile.TemporaryDirectory() as folder:
                ckpt, cached = read_source(
                    source, folder, verify, self._schemes, fresh=trust)
        except CheckpointError as e:  # naming the file: say what for
            if source in str(e):
                raise
            raise CheckpointError(f'{e} (read for {source})') from None
        if cached is not None:
            self._fetched[source] = cached
        return ckpt

    def _check(self, ckpt: dict, source: str, resume: bool) -> None:
        """:func:`~mmdet_gc.checkpoint.reader.check_contents`, every failure
        one line."""
        try:
            check_contents(ckpt, source, resume)
        except CheckpointError:
            raise
        except Exception as e:  # MemoryError, RuntimeError... on odd data
            raise CheckpointError(f'checkpoint {source} cannot be checked: '
                                  f'{first_line(e)}') from None

    def read(self, source: str, resume: bool = False) -> dict:
        """Read ``source`` and check what MMEngine will read from it
        (:func:`~mmdet_gc.checkpoint.reader.check_contents`). A source is
        read once per door: every later load of it (the runner's) gets a
        copy of the object checked here, never the file again.

        Raises:
            CheckpointError: One line naming the source and the problem.
        """
        ckpt = self._checked.get(source)
        if ckpt is None:
            ckpt = self._read(source, resume)
        else:
            try:
                self._check(ckpt, source, resume)
            except CheckpointError:
                self.discard(source)  # refused now (say, for a resume)
                raise
        self._checked[source] = ckpt
        return ckpt

    def discard(self, source: str) -> None:
        """Forget ``source``, and remove the file its read put in torch's
        hub cache: a check after :meth:`read` refused it (a ``--resume``
        whose counters or settings do not fit the run, an ``init_cfg``
        prefix the file lacks), so a later source of that file name must
        not be served it. Only a download of this door is removed, never a
        file the cache held before."""
        self._checked.pop(source, None)
        fetched = self._fetched.pop(source, None)
        if fetched is not None:
            with contextlib.suppress(OSError):  # the refusal is the news
                os.remove(fetched)

    def load(self, filename: str, map_location: Any = None) -> dict:
        """The loader MMEngine calls for every scheme while the door is
        installed: a copy of what :meth:`read` checked. Tensors stay on the
        CPU: MMEngine copies weights into the model and optimizer state
        onto the parameters' device."""
        return copy.deepcopy(self.read(filename))

    @contextlib.contextmanager
    def installed(self) -> Iterator['CheckpointDoor']:
        """Make this door MMEngine's loader for every scheme, for the
        ``with`` block only."""
        from mmengine.runner.checkpoint import CheckpointLoader
        saved = CheckpointLoader._schemes

        def load_from_mmdet_gc_door(filename: str,
                                    map_location: Any = None) -> dict:
            return self.load(filename, map_location)

        CheckpointLoader._schemes = type(saved)(
            (prefix, load_from_mmdet_gc_door) for prefix in saved)
        try:
            yield self
        finally:
            CheckpointLoader._schemes = saved


def _known() -> Tuple[str, ...]:
    return ('', *HTTP, *TORCHVISION, *OPENMMLAB, MMCLS, PAVI, *CEPH)
