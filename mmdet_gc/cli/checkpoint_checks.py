"""Every checkpoint a run will load (``load_from``, ``--resume``, the work
dir's ``last_checkpoint``, each ``Pretrained`` ``init_cfg``), read through
the run's :class:`~mmdet_gc.checkpoint.CheckpointDoor` and checked before
the runner is built.
"""
import contextlib
import os.path as osp
import sys
from typing import Any, Iterator, List, Optional, Tuple

from ..utils import InputError


def check_checkpoint(door: Any,
                     path: Optional[str],
                     what: str,
                     resume: bool = False,
                     trust: bool = False) -> Optional[dict]:
    """Read a checkpoint through the run's door and check it, before the
    runner is built, so that a refusal is one line and nothing is written.

    Every source goes through :class:`~mmdet_gc.checkpoint.CheckpointDoor`:
    a local path (always, when it exists, even if it looks like a URL),
    ``http(s)://`` (downloaded into torch's hub cache, or taken from it),
    ``torchvision://``, ``open-mmlab://``, ``mmcls://``... It is read with
    ``weights_only=True`` (stock MMEngine files as data); with ``trust``
    (the user's ``--trust-checkpoint``) this one source is loaded with
    ``weights_only=False``, after a warning.

    Args:
        door (CheckpointDoor): The run's door; the runner's load of
            ``path`` gets the checked object.
        path (str, optional): The checkpoint source.
        what (str): What the file is for, e.g. ``'--resume'``.
        resume (bool): Also check what resuming needs.
        trust (bool): The user trusts this source.

    Returns:
        dict, optional: The checkpoint, or None without ``path``.

    Raises:
        InputError: Naming the source and the problem.
    """
    from ..checkpoint import CheckpointError
    from ..checkpoint.door import scheme_of
    if not path:
        return None
    if not isinstance(path, str) or any(ord(c) < 32 for c in path):
        raise InputError(f'{what} checkpoint {path!r:.200} is not a path or '
                         'URL')
    if scheme_of(path) == '' and not osp.exists(osp.expanduser(path)):
        raise InputError(f'{what} checkpoint not found: {path}')
    if trust:
        door.trust(path)
        print(
            f'warning: --trust-checkpoint: loading {path} with '
            'weights_only=False; a file loaded this way can run any code, '
            'so do this only for a checkpoint you made or trust',
            file=sys.stderr)
    try:
        return door.read(path, resume=resume)
    except CheckpointError as e:
        raise InputError(f'{what} {e}') from None


@contextlib.contextmanager
def discarded_if_refused(door: Any, source: str) -> Iterator[None]:
    """Checks of ``source`` made after the door read it: a refusal in the
    block also makes the door discard it
    (:meth:`~mmdet_gc.checkpoint.CheckpointDoor.discard`), so that a
    download refused here does not stay in torch's hub cache for a later
    source of that file name."""
    from ..checkpoint import CheckpointError
    try:
        yield
    except (InputError, CheckpointError):
        door.discard(source)
        raise


def latest_checkpoint(work_dir: str) -> Optional[str]:
    """What MMEngine's auto-resume takes: the path the work dir's
    ``last_checkpoint`` names, or None.

    Raises:
        InputError: ``last_checkpoint`` cannot be read as a path.
    """
    pointer = osp.join(work_dir, 'last_checkpoint')
    if not osp.isdir(work_dir) or not osp.lexists(pointer):
        return None
    if not osp.isfile(pointer):  # a FIFO would block the read forever
        raise InputError(f'{pointer} is not a file')
    try:
        with open(pointer, 'rb') as f:  # a path, not gigabytes
            data = f.read(4097)
        found = data.decode('utf-8').strip()
    except (OSError, UnicodeError, ValueError) as e:
        raise InputError(
            f'cannot read {pointer}: {type(e).__name__}') from None
    if len(data) > 4096 or not found or not found.isprintable():
        raise InputError(f'{pointer} names no checkpoint')
    return found


def _is_pretrained(kind: Any) -> bool:
    from mmengine.model.weight_init import PretrainedInit
    from mmengine.registry import WEIGHT_INITIALIZERS
    if isinstance(kind, str):
        try:
            kind = WEIGHT_INITIALIZERS.get(kind)
        except Exception:  # an unknown scope or name: not ours to judge
            return False
    return isinstance(kind, type) and issubclass(kind, PretrainedInit)


def pretrained_sources(model_cfg: Any,
                       model: Any = None) -> List[Tuple[str, Optional[str]]]:
    """The ``checkpoint`` of every ``init_cfg`` of type ``Pretrained``, any
    spelling (``'Pretrained'``, ``'mmengine.Pretrained'``, the class): in
    the model config at any depth and, given the built ``model``, in its
    modules (e.g. a backbone's ``pretrained=`` turned into an
    ``init_cfg``): what the runner loads when it initialises the model.

    Returns:
        list[tuple]: ``(checkpoint, prefix)``; ``prefix`` is the
        ``init_cfg``'s, or None.
    """
    out: List[Tuple[str, Optional[str]]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if _is_pretrained(node.get('type')) and isinstance(
                    node.get('checkpoint'), str):
                out.append((node['checkpoint'], node.get('prefix')))
            for value in node.values():
                walk(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value)

    walk(model_cfg)
    for module in model.modules() if model is not None else ():
        walk(getattr(module, 'init_cfg', None))
    return list(dict.fromkeys(out))


def check_prefix(ckpt: dict, source: str, prefix: str) -> None:
    """A ``Pretrained`` ``init_cfg`` with ``prefix`` loads the weights under
    it (MMEngine asserts there are some, inside the runner): checked here.

    Raises:
        InputError: ``ckpt`` holds no weight under ``prefix``.
    """
    prefix = prefix if prefix.endswith('.') else prefix + '.'
    weights = ckpt.get('state_dict', ckpt)
    if not any(isinstance(k, str) and k.startswith(prefix) for k in weights):
        raise InputError(f'init_cfg checkpoint {source} has no weights under '
                         f'its prefix {prefix!r}')
