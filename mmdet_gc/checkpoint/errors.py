"""The errors of the checkpoint door: one line that names the file.

(Gradient Centralization: Yong et al., ECCV 2020, arXiv:2004.01461; this
package only makes the runs of ``mmdet_gc`` safe to resume and test.)
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
