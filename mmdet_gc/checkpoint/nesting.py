"""How deeply a checkpoint's pickle nests, read before it is unpickled.

``torch.load(weights_only=True)`` hashes every dict key it unpickles, and
CPython hashes a tuple by recursing in C without a depth check: a 150 KB
file whose key is a tuple nested 150,000 deep kills the process with a
segmentation fault inside ``torch.load``, before any check of ours could
run (and leaves a download's temporary file behind). :func:`check_nesting`
reads the pickles torch would unpickle with :func:`pickletools.genops`
(which builds nothing) and refuses one that nests deeper than
:data:`MAX_PICKLE_DEPTH`, in one line.
"""
import io
import pickletools
import zipfile
from typing import IO, Dict, List

from ..utils.messages import first_line
from .errors import CheckpointError

#: Far beyond what a checkpoint holds (the walks after the load refuse
#: data nested deeper than ``plain.MAX_DEPTH`` = 64 levels, each a few
#: levels of pickle), and far below the ~10^5 levels at which hashing a
#: nested key overflows C's stack.
MAX_PICKLE_DEPTH = 1000

#: The pickles torch's legacy (pre-1.6) format holds before its raw
#: storage bytes: magic number, protocol, system info, the object, the
#: storage keys.
LEGACY_PICKLES = 5


def _codes(*names: str, **takes: int) -> Dict[str, int]:
    """The one-character codes of the pickle opcodes named, each mapped to
    the number of stack items it ``takes`` (0 for ``names``)."""
    wanted = dict.fromkeys(names, 0)
    wanted.update(takes)
    return {
        op.code: wanted[op.name]
        for op in pickletools.opcodes if op.name in wanted
    }


# Opcodes by what they do to the stack. A leaf (a number, a string, a
# global...) has depth 0, a container one more than its deepest item.
_LEAVES = frozenset(
    op.code for op in pickletools.opcodes
    if not op.stack_before and len(op.stack_after) == 1).difference(
        _codes('MARK', 'EMPTY_TUPLE', 'EMPTY_LIST', 'EMPTY_DICT', 'EMPTY_SET',
               'GET', 'BINGET', 'LONG_BINGET'))
_EMPTY = _codes('EMPTY_TUPLE', 'EMPTY_LIST', 'EMPTY_DICT', 'EMPTY_SET')
# A new container of the top items, or of those above the mark.
_TUPLE_N = _codes(TUPLE1=1, TUPLE2=2, TUPLE3=3)
_FROM_MARK = _codes('TUPLE', 'LIST', 'DICT', 'FROZENSET', 'OBJ', 'INST')
# Items (or an object's state) added to the container below them.
_ADD_N = _codes(APPEND=1, SETITEM=2, BUILD=1)
_ADD_FROM_MARK = _codes('APPENDS', 'SETITEMS', 'ADDITEMS')
# A new object from a callable and its arguments.
_CALL_N = _codes(REDUCE=2, NEWOBJ=2, NEWOBJ_EX=3, STACK_GLOBAL=2)
_PUT = _codes('PUT', 'BINPUT', 'LONG_BINPUT')
_GET = _codes('GET', 'BINGET', 'LONG_BINGET')


def pickle_depth(stream: IO[bytes], limit: int) -> int:
    """How deeply the pickle at ``stream``'s position nests its containers
    (tuples, lists, dicts, sets, an object's arguments and state), read
    opcode by opcode up to its ``STOP``; the stream is left after it.

    Exact for tuples and frozensets (built whole, as hashing sees them); a
    list or dict changed after the memo took it counts as it was then (the
    walks after the load bound those). A malformed pickle is left to
    torch's own error: the scan stops where it stops making sense.

    Args:
        stream (IO[bytes]): The pickle.
        limit (int): Stop as soon as the depth exceeds this.

    Returns:
        int: The deepest nesting seen (above ``limit`` once exceeded).
    """
    stack: List[int] = []
    marks: List[int] = []
    memo: Dict[object, int] = {}
    deepest = 0
    try:
        for op, arg, _ in pickletools.genops(stream):
            code = op.code
            # The commonest first; none of these deepens what was seen.
            if code in _LEAVES:
                stack.append(0)
                continue
            if code in _PUT:
                memo[arg] = stack[-1]
                continue
            if code in _GET:
                stack.append(memo.get(arg, 0))
                continue
            if code == '(':  # MARK
                marks.append(len(stack))
                continue
            if code == '\x94':  # MEMOIZE
                memo[len(memo)] = stack[-1]
                continue
            if code == '.':  # STOP
                break
            if code in _EMPTY:
                stack.append(1)
            elif code in _TUPLE_N:
                n = _TUPLE_N[code]
                items = stack[-n:]
                del stack[-n:]
                stack.append(1 + max(items))
            elif code in _FROM_MARK or code in _ADD_FROM_MARK:
                at = marks.pop()
                depth = 1 + max(stack[at:], default=0)
                del stack[at:]
                if code in _FROM_MARK:
                    stack.append(depth)
                else:
                    stack[-1] = max(stack[-1], depth)
            elif code in _ADD_N:
                n = _ADD_N[code]
                depth = 1 + max(stack[-n:])
                del stack[-n:]
                stack[-1] = max(stack[-1], depth)
            elif code in _CALL_N:
                n = _CALL_N[code]
                depth = max(stack[-n:])
                del stack[-n:]
                stack.append(depth)
            elif code == 'Q':  # BINPERSID: a storage, a leaf
                stack[-1] = 0
            elif code == '0':  # POP
                stack.pop()
            elif code == '1':  # POP_MARK
                del stack[marks.pop():]
            elif code == '2':  # DUP
                stack.append(stack[-1])
            # PROTO, FRAME, READONLY_BUFFER: the stack is unchanged.
            if stack and stack[-1] > deepest:
                deepest = stack[-1]
                if deepest > limit:
                    break
    except (ValueError, IndexError, KeyError):
        pass  # malformed: torch's loader says how
    return deepest


def check_nesting(path: str) -> None:
    """Refuse ``path`` (a file that passed ``check_structure``) if a pickle
    torch would unpickle from it nests deeper than
    :data:`MAX_PICKLE_DEPTH`.

    Raises:
        CheckpointError: One line naming the file.
    """
    limit = MAX_PICKLE_DEPTH
    with open(path, 'rb') as f:
        if f.read(2) == b'PK':
            try:
                with zipfile.ZipFile(f) as z:
                    name = next(n for n in z.namelist()
                                if n.endswith('data.pkl'))
                    # Stored (check_structure): the file's size at most.
                    pickles = [io.BytesIO(z.read(name))]
            except Exception as e:  # BadZipFile (a CRC), EOFError...
                raise CheckpointError(
                    f'checkpoint {path} is a truncated or corrupt zip '
                    f'archive ({first_line(e)})') from None
        else:
            f.seek(0)
            # One after another, as torch's legacy loader reads them.
            pickles = [f] * LEGACY_PICKLES
        for stream in pickles:
            if pickle_depth(stream, limit) > limit:
                raise CheckpointError(
                    f'checkpoint {path} is malformed: its pickle nests more '
                    f'than {limit} levels deep')
