"""Files written whole or not at all.

A checkpoint is written to a temporary name in its own directory, flushed
to disk and renamed over its final name (an atomic step on POSIX file
systems), so that a kill or a full disk at any moment leaves the previous
file intact and never a truncated file under a final name.
"""
import os
import os.path as osp
import tempfile
from typing import Union

from mmengine.fileio.backends import LocalBackend


def write_atomically(path: Union[str, os.PathLike], data: bytes) -> None:
    """Write ``data`` to ``path``: a temporary file beside it, flushed and
    renamed. On any error the temporary file is removed and ``path`` is as
    it was."""
    path = os.fspath(path)
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f'.{osp.basename(path)}.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise
    try:  # the rename itself, on disk
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


class AtomicLocalBackend(LocalBackend):
    """MMEngine's local file backend whose writes are
    :func:`write_atomically`'s (``backend_args=dict(backend=
    'mmdet_gc_atomic')``)."""

    def put(self, obj: bytes, filepath: Union[str, os.PathLike]) -> None:
        write_atomically(filepath, obj)

    def put_text(self,
                 obj: str,
                 filepath: Union[str, os.PathLike],
                 encoding: str = 'utf-8') -> None:
        write_atomically(filepath, obj.encode(encoding))
