"""Every random state a training process draws from, as plain data.

A checkpoint of a resumable run carries these states (python's
``random``, numpy's global generator, torch's CPU generator and the CUDA
generator of every device) so that a resumed run draws the same numbers
the uninterrupted run would have drawn. They are tensors and ints only, so
the checkpoint door reads them as data, and :func:`check_random_state`
checks a file's values before anything uses them.
"""
import contextlib
import math
import random
from typing import Any, Dict, Iterator

import numpy as np
import torch


def capture_random_state() -> Dict[str, Any]:
    """The process's random states, as tensors and ints."""
    version, words, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        'python': {
            'version': int(version),
            'words': torch.tensor(words, dtype=torch.int64),
            'gauss': gauss,
        },
        'numpy': {
            'keys': torch.from_numpy(keys.astype(np.int64)),
            'pos': int(pos),
            'has_gauss': int(has_gauss),
            'cached_gaussian': float(cached),
        },
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = list(torch.cuda.get_rng_state_all())
    return state


def _python_state(state: Dict[str, Any]) -> tuple:
    words = state['words']
    return (int(state['version']), tuple(int(w) for w in words.tolist()),
            state['gauss'])


def _numpy_state(state: Dict[str, Any]) -> tuple:
    keys = state['keys'].numpy().astype(np.uint32)
    return ('MT19937', keys, int(state['pos']), int(state['has_gauss']),
            float(state['cached_gaussian']))


def check_random_state(state: Any) -> None:
    """Check a file's random states by loading them into throw-away
    generators, as :func:`restore_random_state` will load them.

    Raises:
        ValueError: Naming the part that cannot be a generator's state.
    """
    if not isinstance(state, dict):
        raise ValueError('is not a dict')
    for part in ('python', 'numpy', 'torch'):
        if part not in state:
            raise ValueError(f'lacks the {part} state')
    try:
        py = state['python']
        words = py['words']
        # A Mersenne Twister: 624 words of 32 bits, not all zero (it would
        # draw zeros forever), then its index (1 to 624).
        if not (isinstance(words, torch.Tensor) and words.dtype ==
                torch.int64 and words.shape == (625, )
                and bool(((words >= 0) & (words < 2**32)).all())
                and bool(words[:624].any()) and 1 <= int(words[624]) <= 624):
            raise ValueError('words')
        if type(py['version']) is not int or py['version'] != 3:
            raise ValueError('version')
        if not (py['gauss'] is None or (isinstance(py['gauss'], float)
                                        and math.isfinite(py['gauss']))):
            raise ValueError('gauss')
        random.Random().setstate(_python_state(py))
    except Exception:
        raise ValueError('python state is malformed') from None
    try:
        nps = state['numpy']
        keys = nps['keys']
        if not (isinstance(keys, torch.Tensor) and keys.dtype == torch.int64
                and keys.shape == (624, )
                and bool(((keys >= 0) & (keys < 2**32)).all())
                and bool(keys.any())):
            raise ValueError('keys')
        # numpy reads its keys at pos without a bound check.
        if type(nps['pos']) is not int or not 0 <= nps['pos'] <= 624:
            raise ValueError('pos')
        if nps['has_gauss'] not in (0, 1) or type(nps['has_gauss']) \
                is not int or not (isinstance(nps['cached_gaussian'], float)
                                   and math.isfinite(nps['cached_gaussian'])):
            raise ValueError('gauss')
        np.random.RandomState().set_state(_numpy_state(nps))
    except Exception:
        raise ValueError('numpy state is malformed') from None
    try:
        gen = state['torch']
        if not (isinstance(gen, torch.Tensor) and gen.dtype == torch.uint8
                and gen.shape == torch.get_rng_state().shape):
            raise ValueError('torch')
        torch.Generator().set_state(gen)
    except Exception:
        raise ValueError('torch state is malformed') from None
    cuda = state.get('cuda', [])
    # A CUDA generator's state: its seed and offset, 8 bytes each.
    if not (isinstance(cuda, list) and len(cuda) <= 4096 and all(
            isinstance(t, torch.Tensor) and t.dtype == torch.uint8
            and t.shape == (16, ) for t in cuda)):
        raise ValueError('cuda states are malformed')


def restore_random_state(state: Dict[str, Any]) -> bool:
    """Set the process's generators to ``state`` (from
    :func:`capture_random_state`).

    Returns:
        bool: Whether every state was restored; False where the file has
        CUDA states for another number of devices than this process sees.
    """
    random.setstate(_python_state(state['python']))
    np.random.set_state(_numpy_state(state['numpy']))
    torch.set_rng_state(state['torch'])
    cuda = state.get('cuda', [])
    if not torch.cuda.is_available():
        return not cuda
    if len(cuda) != torch.cuda.device_count():
        return False
    torch.cuda.set_rng_state_all(cuda)
    return True


@contextlib.contextmanager
def random_state_kept(cuda: bool = True) -> Iterator[None]:
    """Run a block without moving the process's generators: what it draws
    (a validation pass, starting a dataloader's workers) leaves the
    training's random numbers as they were.

    Args:
        cuda (bool): Keep the CUDA generators too (reading them waits for
            the devices): False for a block that draws on the CPU only.
    """
    state = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    cuda = torch.cuda.get_rng_state_all() if (
        cuda and torch.cuda.is_available()
        and torch.cuda.is_initialized()) else None
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
