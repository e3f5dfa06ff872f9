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
file (a path that exists is always that file; a URL is downloaded into
torch's hub cache, or taken from it, without being unpickled; a model-zoo
name goes through MMEngine's own URL tables, which are data files), and
the file is read by :func:`~mmdet_gc.checkpoint.reader.read_checkpoint`
as data. ``weights_only=False`` is used only for a source the user trusted
by name (``--trust-checkpoint``). Nothing is changed on ``import
mmdet_gc``.

The tools read their checkpoints through :meth:`CheckpointDoor.read` before
the runner is built, so a refusal is one line and the work dir is
untouched; the runner then gets the checked object, not a second read.
"""
import contextlib
import copy
import os
import os.path as osp
import re
import tempfile
from typing import Any, Callable, Dict, Iterator, Optional, Tuple
from urllib.parse import urlparse

import torch

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


def download(url: str, fresh: Optional[str] = None) -> Tuple[str, bool]:
    """``url`` as a local file, not unpickled: in torch's hub cache,
    downloaded if it is not there yet (in a distributed run, rank 0
    first); or, with ``fresh`` (a folder), downloaded into it whatever the
    cache holds, so that a file trusted by its URL is that URL's file.

    Returns:
        tuple: The file, and whether this call put it in the cache.
    """
    from mmengine.dist import barrier, get_dist_info
    dst = hub_cache_file(url)
    if fresh is not None:
        dst = osp.join(fresh, osp.basename(dst))
    rank, world_size = get_dist_info()
    fetched = False
    for turn in (0, 1) if fresh is None and world_size > 1 else (0, ):
        if (rank == 0) == (turn == 0) and not osp.exists(dst):
            os.makedirs(osp.dirname(dst), exist_ok=True)
            try:
                fetch(url, dst)
            except CheckpointError:
                raise
            except Exception as e:
                raise CheckpointError(
                    f'checkpoint {url} cannot be downloaded '
                    f'({first_line(e)}); '
                    f'place the file at {hub_cache_file(url)}, or do without '
                    'it (for a pretrained backbone: --cfg-options '
                    'model.backbone.init_cfg=None)'
                ) from None
            fetched = fresh is None
        if world_size > 1 and turn == 0:
            barrier()
    return dst, fetched


#: Seconds a download may wait for data, and the largest it may be (MB);
#: ``MMDET_GC_MAX_DOWNLOAD_MB`` changes the latter.
DOWNLOAD_TIMEOUT = 60
MAX_DOWNLOAD_MB = 4096


def fetch(url: str, dst: str) -> None:
    """Download ``url`` to ``dst`` (a temporary file, moved into place when
    whole): with a timeout on every read and a cap on the size, so that a
    server that stalls or never ends cannot hang the tool or fill the
    disk; nothing of a failed download stays behind."""
    from urllib.request import urlopen
    limit = int(os.environ.get('MMDET_GC_MAX_DOWNLOAD_MB',
                               MAX_DOWNLOAD_MB)) * 2**20
    fd, tmp = tempfile.mkstemp(
        dir=osp.dirname(dst), prefix=osp.basename(dst) + '.', suffix='.part')
    try:
        with os.fdopen(fd, 'wb') as out, urlopen(
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
        os.replace(tmp, dst)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


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
    urls = load(osp.join(mmengine.__path__[0], 'hub',
                         'torchvision_0.12.json'))
    try:
        from mmengine.runner.checkpoint import get_torchvision_models
        urls = {**get_torchvision_models(), **urls}
    except Exception:  # no (or a broken) torchvision: the shipped table
        pass
    return urls


def _openmmlab_file(source: str,
                    fresh: Optional[str]) -> Tuple[str, bool]:
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
        return download(url, fresh)
    return osp.join(_get_mmengine_home(), url), False


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


def local_file(
    source: str,
    folder: str,
    schemes: Optional[Dict[str, Callable]] = None,
    fresh: bool = False
) -> Tuple[str, Optional[Callable[[dict], dict]], bool]:
    """The local file that holds ``source``, what MMEngine does to the
    loaded checkpoint afterwards (``mmcls://``: keep the backbone), and
    whether the file was put in torch's hub cache now.

    A path that exists is that file, whatever it looks like. Remote
    storage without a cache (``s3://``, ``pavi://``) is fetched into
    ``folder``, and so is a download with ``fresh`` (a trusted source:
    never a file the cache already held).

    Raises:
        CheckpointError: A source the door does not read (a scheme another
            package registered), a model-zoo name that is not in its table,
            or a failed download.
    """
    scheme = scheme_of(source, schemes)
    # A path that exists is that file; but a source trusted by its URL is
    # that URL's file, never a local one that happens to spell the same.
    if osp.exists(osp.expanduser(source)) and not (fresh and scheme):
        return osp.expanduser(source), None, False
    into = folder if fresh else None
    if scheme == '':
        return osp.expanduser(source), None, False
    if scheme in HTTP:
        return _with(download(source, into), None)
    if scheme in TORCHVISION:
        url = _zoo_url(source, scheme, torchvision_urls, 'torchvision')
        return _with(download(url, into), None)
    if scheme in OPENMMLAB:
        return _with(_openmmlab_file(source, into), None)
    if scheme == MMCLS:
        from mmengine.runner.checkpoint import (_process_mmcls_checkpoint,
                                                get_mmcls_models)
        url = _zoo_url(source, scheme, get_mmcls_models, 'mmcls')
        return _with(download(url, into), _process_mmcls_checkpoint)
    try:
        if scheme in CEPH:
            return _ceph_file(source, folder), None, False
        if scheme == PAVI:
            return _pavi_file(source, folder), None, False
    except CheckpointError:
        raise
    except Exception as e:  # no petrel / pavi client, no such object...
        raise CheckpointError(f'checkpoint {source} cannot be fetched: '
                              f'{first_line(e)}') from None
    raise CheckpointError(
        f'checkpoint {source}: its scheme {scheme!r} is not one mmdet-gc '
        'reads as data; fetch the file and give its local path (or pass '
        '--trust-checkpoint to let the loader that package registered '
        'read this one source)')


def _with(found: Tuple[str, bool],
          after: Optional[Callable]) -> Tuple[str, Optional[Callable], bool]:
    return found[0], after, found[1]


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

    def _read(self, source: str) -> dict:
        trust = source in self.trusted
        scheme = scheme_of(source, self._schemes)
        loader = self._schemes.get(scheme)
        if trust and scheme not in _known() and loader is not None and \
                not osp.exists(osp.expanduser(source)):
            # Another package's scheme, trusted by name: its own loader.
            return from_plain(to_plain(loader(source, 'cpu')))
        with tempfile.TemporaryDirectory() as folder:
            path, after, fetched = local_file(
                source, folder, self._schemes, fresh=trust)
            try:
                ckpt = read_checkpoint(path, trust=trust)
            except CheckpointError as e:
                if fetched:  # no refused download stays in the cache
                    os.remove(path)
                if path == source:
                    raise
                raise CheckpointError(f'{e} (read for {source})') from None
        if fetched:
            self._fetched[source] = path
        return after(ckpt) if after else ckpt

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
            ckpt = self._read(source)
        try:
            check_contents(ckpt, source, resume)
        except Exception as e:  # MemoryError, RuntimeError... on odd data
            fetched = self._fetched.pop(source, None)
            if fetched is not None and osp.exists(fetched):
                os.remove(fetched)  # refused: not kept in the cache
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f'checkpoint {source} cannot be checked: '
                                  f'{first_line(e)}') from None
        self._checked[source] = ckpt
        return ckpt

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
