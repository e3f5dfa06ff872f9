"""The errors of the checkpoint door: one line that names the file.
"""
from typing import List


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded safely; the message is one line
    that names the file."""


class ForeignCheckpointError(CheckpointError):
    """A readable checkpoint that holds objects the door does not read as
    data (``names``: the globals its pickle names)."""

    def __init__(self, message: str, names: List[str]):
        super().__init__(message)
        self.names = names
