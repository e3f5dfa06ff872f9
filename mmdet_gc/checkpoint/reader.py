"""Reading one checkpoint file as data.

:func:`read_checkpoint` is the one place where the package unpickles a
checkpoint: ``torch.load(weights_only=True)`` with no allow-list but the
stand-ins of :mod:`mmdet_gc.checkpoint.stock`, scoped to that one load, so
that a stock MMEngine file (``HistoryBuffer``, numpy arrays, scalars and
dtypes) loads as inert data and anything else is refused with one line.
Only the user's consent for that exact file (``--trust-checkpoint``)
loads it with ``weights_only=False``. :func:`check_contents` then checks
what MMEngine will read, by type and range; what must agree with the run
(shapes, groups, schedulers) is checked by
:mod:`mmdet_gc.checkpoint.run_checks`.
"""
import math
import os
import os.path as osp
import pickle
import re
import tempfile
import zipfile
from typing import Any, List, Optional

import numpy as np
import torch

from ..utils.messages import first_line
from .errors import CheckpointError, ForeignCheckpointError
from .nesting import check_nesting
from .plain import (EXECUTED_META, CopyBudgetError, DecodedCheckpoint,
                    charge_copy, copy_budget, from_plain, key_label, to_plain)
from .stock import StockCheckpointError, resolve, stand_ins


def _unsupported_globals(path: str, error: BaseException) -> List[str]:
    """The globals that made torch's weights_only loader refuse ``path``."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # an unreadable pickle: use torch's message
        found = []
    return found or re.findall(r'GLOBAL ([\w.]+)', str(error))[:1]


def check_structure(path: str) -> None:
    """The cheap check: a file that is a torch zip archive with a non-empty
    ``data.pkl``, or a legacy (torch < 1.6) pickle.

    Raises:
        CheckpointError: Naming ``path`` and what is wrong with it.
    """
    if osp.isdir(path):
        raise CheckpointError(f'checkpoint {path} is a directory, not a '
                              'checkpoint file')
    if not osp.isfile(path):
        raise CheckpointError(f'checkpoint not found: {path}')
    try:
        with open(path, 'rb') as f:
            head = f.read(4)
    except OSError as e:  # unreadable: permissions, a vanished file...
        raise CheckpointError(f'checkpoint {path} cannot be read '
                              f'({e.strerror or first_line(e)})') from None
    if not head:
        raise CheckpointError(f'checkpoint {path} is an empty file')
    if head.startswith(b'PK'):
        try:
            with zipfile.ZipFile(path) as z:
                infos = z.infolist()
            pkl = [i for i in infos if i.filename.endswith('data.pkl')]
        except Exception as e:  # BadZipFile, NotImplementedError, EOFError
            raise CheckpointError(
                f'checkpoint {path} is a truncated or corrupt zip archive '
                f'({first_line(e)})') from None
        if any(i.compress_type != zipfile.ZIP_STORED for i in infos):
            # torch.save stores; a compressed entry could unpack into far
            # more memory than the file takes.
            raise CheckpointError(f'checkpoint {path} has compressed '
                                  'entries, which torch.save never writes')
        if len(pkl) != 1:
            raise CheckpointError(f'checkpoint {path} is a zip archive but '
                                  'not a PyTorch checkpoint (no data.pkl)')
        if pkl[0].file_size == 0:
            raise CheckpointError(f'checkpoint {path} has an empty data.pkl')
    elif head[:1] != b'\x80':  # pickle protocol >= 2: torch's legacy format
        raise CheckpointError(
            f'checkpoint {path} is not a PyTorch checkpoint (neither a zip '
            'archive nor a pickle)')


def convert_command() -> str:
    """How the user runs the converter: ``mmdet-gc convert`` (the command
    an install gives, from a wheel or a checkout alike)."""
    return 'mmdet-gc convert'


def _refuse_foreign(path: str, error: BaseException) -> ForeignCheckpointError:
    read_as_data = {name for _, name in stand_ins()}
    names = [n for n in _unsupported_globals(path, error)
             if n not in read_as_data] or \
        re.findall(r'GLOBAL ([\w.]+)', str(error))[:1]
    return ForeignCheckpointError(
        f'checkpoint {path} is refused: it holds objects that are not '
        f'data ({", ".join(names) or "unknown"}). Only if you trust this '
        'file: pass --trust-checkpoint to load it with weights_only=False, '
        f'or convert it once: {convert_command()} {path} OUT.pth --trust',
        names)


def _resolve_bits(obj: Any, memo: Optional[dict] = None) -> Any:
    """Tensors as values: a negative or conjugate bit (which torch.load
    keeps) resolved into a plain tensor, so no later reader of raw memory
    sees negated values. Each tensor is resolved once (``memo``, by id)
    and its copy charged to the :func:`~.plain.copy_budget`: a file can
    reference one tensor many times over."""
    memo = {} if memo is None else memo
    if isinstance(obj, torch.Tensor):
        if not (obj.is_neg() or obj.is_conj()):
            return obj
        if id(obj) not in memo:
            charge_copy(obj.numel() * obj.element_size())
            memo[id(obj)] = obj.resolve_conj().resolve_neg()
        return memo[id(obj)]
    if isinstance(obj, dict):
        for k, v in obj.items():
            obj[k] = _resolve_bits(v, memo)
        return obj
    if type(obj) is list:
        obj[:] = [_resolve_bits(v, memo) for v in obj]
        return obj
    if type(obj) is tuple:
        return tuple(_resolve_bits(v, memo) for v in obj)
    return obj


def _load(path: str, trust: bool) -> Any:
    if trust:  # the user's consent for this one file
        return torch.load(path, map_location='cpu', weights_only=False)
    # The stand-ins are allow-listed for this load only: torch's own
    # allow-list is what it was before and after.
    with torch.serialization.safe_globals(stand_ins()):
        return torch.load(path, map_location='cpu', weights_only=True)


def read_checkpoint(path: str, trust: bool = False) -> dict:
    """Load the local file ``path`` on the CPU, as data.

    Without ``trust`` this is ``torch.load(weights_only=True)`` with the
    stand-ins of :mod:`~mmdet_gc.checkpoint.stock` (stock MMEngine files)
    and nothing else allow-listed, then :func:`~.stock.resolve` and
    :func:`~.plain.from_plain`. With ``trust`` the file is loaded with
    ``weights_only=False``: it can run any code, so the caller must have
    the user's consent for this one file. Tensors with a negative or
    conjugate bit come back resolved.

    Returns:
        DecodedCheckpoint: The checkpoint as MMEngine would see it
        (``HistoryBuffer`` and numpy values as real objects), marked as
        decoded.

    Raises:
        CheckpointError: One line naming the file and the problem.
    """
    check_structure(path)
    check_nesting(path)  # before the load: too deep a key crashes it
    limit = osp.getsize(path) + COPY_SLACK_MB * 2**20
    try:
        with copy_budget(limit):
            return _decode(_load_dict(path, trust), path, trust)
    except CopyBudgetError:
        raise CheckpointError(
            f'checkpoint {path} is refused: reading it would copy more than '
            f'{limit >> 20} MB (its size and {COPY_SLACK_MB} MB), one array '
            'or tensor referenced many times over') from None


#: What reading a file may copy beyond its own size, in MB: the arrays and
#: resolved tensors of a genuine file are copies of bytes it holds, once
#: each.
COPY_SLACK_MB = 16


def _load_dict(path: str, trust: bool) -> dict:
    """:func:`_load`, every failure one line."""
    try:
        ckpt = _load(path, trust)
    except CopyBudgetError:
        raise
    except StockCheckpointError as e:
        raise CheckpointError(
            f'checkpoint {path} is refused: it holds {e}') from None
    except pickle.UnpicklingError as e:
        if not trust and 'weights_only' in str(e) and 'GLOBAL' in str(e):
            raise _refuse_foreign(path, e) from None
        raise CheckpointError(f'checkpoint {path} is corrupt: '
                              f'{first_line(e)}') from None
    except MemoryError:
        raise CheckpointError(f'checkpoint {path} is corrupt: it asks for '
                              'more memory than there is') from None
    except Exception as e:  # torch's zip reader, truncated pickles...
        raise CheckpointError(f'checkpoint {path} is truncated or corrupt: '
                              f'{first_line(e)}') from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f'checkpoint {path} holds a '
                              f'{type(ckpt).__name__}, not a dict')
    return ckpt


def _decode(ckpt: dict, path: str, trust: bool) -> DecodedCheckpoint:
    """The loaded ``ckpt`` as MMEngine sees it, every failure one line."""
    _check_module_versions(ckpt, path)
    try:
        ckpt = to_plain(ckpt) if trust else resolve(ckpt)
        return DecodedCheckpoint(_resolve_bits(from_plain(ckpt)))
    except CopyBudgetError:
        raise
    except RecursionError:
        raise CheckpointError(f'checkpoint {path} is malformed: nested too '
                              'deeply') from None
    except StockCheckpointError as e:
        raise CheckpointError(
            f'checkpoint {path} is refused: it holds {e}') from None
    except (TypeError, ValueError) as e:  # ours, naming the key path
        raise CheckpointError(f'checkpoint {path} is malformed: '
                              f'{first_line(e, typed=False)}') from None
    except (RuntimeError, MemoryError) as e:  # torch / numpy on odd data
        raise CheckpointError(f'checkpoint {path} is malformed: '
                              f'{first_line(e)}') from None


def _check_weights(weights: Any, path: str) -> None:
    if not (isinstance(weights, dict) and weights and all(
            isinstance(k, str) and isinstance(v, torch.Tensor)
            for k, v in weights.items())):
        raise CheckpointError(
            f'checkpoint {path} has no model weights (a "state_dict" of '
            'tensors by name)')


def _check_module_versions(ckpt: dict, path: str) -> None:
    """torch keeps module versions in a ``_metadata`` attribute of a state
    dict, which a pickle can set to anything and ``load_state_dict``
    reads. Checked on the file as loaded, before anything is rebuilt."""
    weights = ckpt.get('state_dict', ckpt)
    meta = getattr(weights, '_metadata', None)
    if meta is not None and not (isinstance(meta, dict) and all(
            isinstance(k, str) and isinstance(v, dict) and all(
                isinstance(vk, str) and (vk != 'version' or type(vv) is int)
                for vk, vv in v.items()) for k, v in meta.items())):
        raise CheckpointError(f'checkpoint {path} has malformed module '
                              'version metadata in its weights')


def _scheduler_methods() -> set:
    """Names MMEngine's parameter schedulers must keep as methods: their
    ``load_state_dict`` is ``__dict__.update(state)``."""
    from mmengine.registry import PARAM_SCHEDULERS
    names = set()
    for cls in PARAM_SCHEDULERS.module_dict.values():
        names.update(n for n in dir(cls) if callable(getattr(cls, n, None)))
    return names


def real_number(value: Any) -> Optional[float]:
    """``value`` as a float if it is a real number: a Python or numpy int
    or float (not a bool), or a one-element real tensor; else None. An int
    too large for a float is not one."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex() or \
                value.dtype == torch.bool:
            return None
        return float(value.detach().reshape(()).double())
    if isinstance(value, (bool, np.bool_)) or \
            not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def non_finite(value: Any) -> bool:
    """Whether ``value`` holds a number that is not a finite real one: a
    nan, an infinity, a complex, an int beyond floats, a tensor with one,
    at any depth of lists, tuples and dicts."""
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            return True
        return value.is_floating_point() and not bool(
            torch.isfinite(value).all())
    if isinstance(value, (list, tuple)):
        return any(non_finite(v) for v in value)
    if isinstance(value, dict):
        return any(non_finite(v) for v in value.values())
    if isinstance(value, (complex, np.complexfloating)):
        return True
    if isinstance(value, (int, float, np.integer, np.floating)) and \
            not isinstance(value, (bool, np.bool_)):
        number = real_number(value)
        return number is None or not math.isfinite(number)
    return False


def _clean_path(value: Any) -> bool:
    """A path MMEngine may remove or follow: a non-empty str without NUL or
    other control characters."""
    return isinstance(value, str) and value != '' and not any(
        ord(c) < 32 or ord(c) == 127 for c in value)


#: The largest int a resumed history may hold: beyond any count a run
#: reaches, and small enough that numpy's int64 sums over a history cannot
#: wrap around.
MAX_LOGGED_INT = 10**12

#: Logged keys whose values MMEngine logs as floats only: losses (a
#: tensor's ``item()``), times and the grad norm (``float(norm)``).
FLOAT_LOGS = re.compile(r'loss|time|grad_norm')


def _history_problem(key: str, logs: Any, counts: Any) -> Optional[str]:
    """Why a resumed ``HistoryBuffer``'s histories are not what MMEngine
    logs under ``key``, or None: values that are real numbers (floats;
    ints where only ints were logged, never for :data:`FLOAT_LOGS`; no
    bools, which no logger of MMEngine or mmdet writes as a scalar),
    counts that are whole numbers >= 0, both 1-D, of one length, not empty
    (``current()`` raises on an empty one, and the logger reads every
    resumed key, given again or not).

    A value may be inf or nan: MMEngine logs them itself (the grad norm of
    a step AMP skips, the loss of a run that diverged), and only the
    logger reads them, as text.
    """
    if not (isinstance(logs, np.ndarray) and isinstance(counts, np.ndarray)
            and logs.ndim == 1 and logs.shape == counts.shape):
        return 'has histories of different shapes'
    if logs.size == 0:
        return 'has an empty history'
    if logs.dtype.kind not in 'iuf':  # a bool is no number MMEngine logs
        return f'holds {logs.dtype} values, not real numbers'
    if logs.dtype.kind != 'f' and FLOAT_LOGS.search(key):
        return f'holds {logs.dtype} values where MMEngine logs floats'
    if logs.dtype.kind in 'iu' and np.abs(logs.astype(
            np.float64)).max() > MAX_LOGGED_INT:
        return f'holds ints beyond {MAX_LOGGED_INT:.0e}'
    tally = counts.astype(np.float64) if counts.dtype.kind in 'iuf' \
        else np.array([np.nan])
    if not (np.isfinite(tally).all() and (tally == np.floor(tally)).all()
            and tally.min() >= 0 and tally.max() <= MAX_LOGGED_INT):
        return 'holds counts that are not whole numbers >= 0'
    return None


def _check_log_scalars(hub: dict, bad: str) -> None:
    """What the logger reads from a resumed message hub: each of
    ``log_scalars`` a ``HistoryBuffer`` of numbers MMEngine logs
    (:func:`_history_problem`); ``resumed_keys`` names mapped to bools.
    Otherwise a complex value is a traceback in the logger once the work
    dir is made, and a number MMEngine skips with a warning."""
    from mmengine.logging import HistoryBuffer
    for key, buffer in hub['log_scalars'].items():
        if not isinstance(key, str):
            raise CheckpointError(bad + 'message_hub.log_scalars has a key '
                                  'that is not a str')
        at = f'message_hub.log_scalars.{key_label(key)}'
        if type(buffer) is not HistoryBuffer:
            raise CheckpointError(bad + f'{at} is {buffer!r:.40}, not a '
                                  'HistoryBuffer')
        why = _history_problem(key, buffer._log_history, buffer._count_history)
        if why:
            raise CheckpointError(bad + f'{at} {why}')
    if not all(
            isinstance(k, str) and type(v) is bool
            for k, v in hub['resumed_keys'].items()):
        raise CheckpointError(bad + 'message_hub.resumed_keys is not a '
                              'mapping of names to bools')


def _check_resume_parts(ckpt: dict, path: str) -> None:
    """What Runner.resume and its hooks act on, by type and range (what
    must agree with the run is in :mod:`.run_checks`)."""
    bad = f'checkpoint {path} cannot be resumed: its '
    seed = ckpt['meta'].get('seed')
    if seed is not None and not (type(seed) is int and 0 <= seed < 2**32):
        raise CheckpointError(bad + f'meta.seed {seed!r:.40} is not a seed')
    optimizer = ckpt.get('optimizer')
    if optimizer is not None:
        groups = optimizer.get('param_groups') \
            if isinstance(optimizer, dict) else None
        if not (isinstance(groups, list) and groups and all(
                isinstance(g, dict) and isinstance(g.get('params'), list)
                for g in groups) and isinstance(optimizer.get('state'), dict)):
            raise CheckpointError(bad + 'optimizer state is malformed')
        for i, group in enumerate(groups):
            for key, value in group.items():
                if non_finite(value):
                    raise CheckpointError(
                        bad + f'optimizer.param_groups[{i}].{key} is '
                        f'{value!r:.40}, not a finite real number')
    schedulers = ckpt.get('param_schedulers')
    if schedulers is not None:
        lists = schedulers.values() if isinstance(schedulers, dict) \
            else [schedulers]
        methods = _scheduler_methods()
        for states in lists:
            if not (isinstance(states, list)
                    and all(isinstance(st, dict) for st in states)):
                raise CheckpointError(bad + 'param_schedulers are malformed')
            for i, st in enumerate(states):
                clash = sorted(
                    k for k in st if not isinstance(k, str) or k in methods)
                if clash:
                    raise CheckpointError(bad +
                                          'param_schedulers would replace the '
                                          f'scheduler methods {clash}')
                for key, value in st.items():
                    if non_finite(value):
                        raise CheckpointError(
                            bad + f'param_schedulers[{i}].{key} is '
                            f'{value!r:.40}, not a finite real number')
    _check_log_scalars(ckpt['message_hub'], bad)
    info = ckpt['message_hub']['runtime_info']
    for key, value in info.items():
        if not isinstance(key, str):
            raise CheckpointError(bad + 'runtime_info has a key that is not '
                                  'a str')
        # A number; +-inf is CheckpointHook's own start value, nan is not.
        score = real_number(value)
        if key.startswith('best_score') and (score is None
                                             or math.isnan(score)):
            raise CheckpointError(bad + f'runtime_info.{key} is not a number')
        if key.startswith(('best_ckpt', 'last_ckpt')) and \
                not _clean_path(value):
            raise CheckpointError(bad + f'runtime_info.{key} is not a clean '
                                  'path')
    ids = info.get('keep_ckpt_ids')
    if ids is not None and not (isinstance(ids, list)
                                and all(type(i) is int for i in ids)):
        raise CheckpointError(bad + 'runtime_info.keep_ckpt_ids is not a '
                              'list of ints')


def check_contents(ckpt: dict, path: str, resume: bool) -> None:
    """What MMEngine will read: model weights, and for ``resume`` the
    iteration counters, the seed, the optimizer and scheduler states and
    the message hub.

    Raises:
        CheckpointError: Naming the file and the missing or malformed part.
    """
    _check_weights(ckpt.get('state_dict', ckpt), path)
    if not resume:
        return
    meta = ckpt.get('meta')
    for key in ('epoch', 'iter'):
        if not (isinstance(meta, dict) and type(meta.get(key)) is int):
            raise CheckpointError(
                f'checkpoint {path} cannot be resumed: meta.{key} is missing '
                'or not an int (a model-only file? use load_from instead)')
        if meta[key] < 0:
            raise CheckpointError(
                f'checkpoint {path} cannot be resumed: meta.{key} is '
                f'{meta[key]}, a negative count')
    if EXECUTED_META in meta:
        raise CheckpointError(
            f'checkpoint {path} is refused: its meta.{EXECUTED_META} is '
            "Python source that MMEngine's resume would execute")
    hub = ckpt.get('message_hub')
    if not (isinstance(hub, dict) and all(
            isinstance(hub.get(k), dict)
            for k in ('log_scalars', 'runtime_info', 'resumed_keys'))):
        raise CheckpointError(
            f'checkpoint {path} cannot be resumed: its message_hub is '
            'missing or malformed')
    _check_resume_parts(ckpt, path)


def inspect_checkpoint(path: str,
                       resume: bool = False,
                       trust: bool = False) -> dict:
    """Read a local checkpoint and check what MMEngine will read from it.

    Args:
        path (str): The file.
        resume (bool): Also check what ``--resume`` needs.
        trust (bool): Load with ``weights_only=False`` (the user's per-file
            consent).

    Returns:
        dict: The loaded checkpoint.

    Raises:
        CheckpointError: One line naming the file and the problem.
    """
    ckpt = read_checkpoint(path, trust=trust)
    check_contents(ckpt, path, resume)
    return ckpt


def convert_checkpoint(src: str, dst: str, trust: bool = False) -> List[str]:
    """Rewrite checkpoint ``src`` into the plain form at ``dst``.

    ``src`` is loaded once: with ``weights_only=False`` if ``trust`` (the
    user's consent for this file), else with ``weights_only=True`` (a
    foreign file is then refused). ``dst`` is written atomically (never
    half a file) and loaded back with stock ``torch.load(weights_only=True)``
    before it is moved into place.

    Returns:
        list[str]: The globals ``src``'s pickle names (read without
        unpickling it), which ``dst`` does not need.

    Raises:
        CheckpointError: ``src`` is unreadable or refused, or ``dst`` is
            ``src``.
    """
    check_structure(src)
    if osp.exists(dst) and osp.samefile(src, dst):
        raise CheckpointError(f'convert {src} to another file, not onto '
                              'itself')
    plain = to_plain(read_checkpoint(src, trust=trust))
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(src)
    except Exception:  # a legacy file: the scan reads zip archives only
        needed = []
    folder = osp.dirname(osp.abspath(dst))
    fd, tmp = tempfile.mkstemp(suffix='.pth', dir=folder)
    os.close(fd)
    try:
        torch.save(plain, tmp)
        torch.load(tmp, map_location='cpu', weights_only=True)
        os.replace(tmp, dst)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    return needed
