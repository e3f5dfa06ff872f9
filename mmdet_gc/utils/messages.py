"""Errors told in one line: what the tools print before any work."""
from typing import Optional


def first_line(exc: BaseException,
               typed: bool = True,
               limit: Optional[int] = None) -> str:
    """The first line of an exception's message.

    Args:
        exc (BaseException): The exception.
        typed (bool): Prefix the exception's type, ``'TypeError: ...'``;
            without it, the type stands for an empty message. Defaults to
            True.
        limit (int, optional): Cut the line to this many characters
            (``...`` marks the cut).

    Returns:
        str: E.g. ``'KeyError: model'``, or ``'KeyError'`` for an empty
        message.
    """
    lines = str(exc).strip().splitlines()
    text = lines[0].strip() if lines else ''
    if limit is not None and len(text) > limit:
        text = text[:limit - 3] + '...'
    if not typed:
        return text or type(exc).__name__
    return f'{type(exc).__name__}: {text}' if text else type(exc).__name__


def one_line(text: object) -> str:
    """A message for the terminal: one line of printable characters (a
    message can quote a file's keys or paths)."""
    return ''.join(c if c.isprintable() else ' '
                   for c in ' '.join(str(text).split()))
