"""The errors of files on disk: one a user can act on, naming the file and what to do.

:class:`CheckpointError` is a file qkv cannot or will not load or write, :class:`OutputExistsError` an
output path that holds what qkv did not write (or that is an input), and :class:`WriteError` an ``OSError``
such as a full disk, with a one-line message naming the target.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["CheckpointError", "OutputExistsError", "WriteError"]


class CheckpointError(ValueError):
    """A checkpoint file or directory that qkv cannot or will not load, or cannot write."""


class OutputExistsError(CheckpointError):
    """An output path qkv refuses to write: it holds what qkv did not write, or it is (or holds) an input.

    The message is one line naming the path and what to do (another ``--out``, or ``--overwrite``).
    ``path`` is the output; ``foreign`` the entries qkv did not write (empty when the output is an input).
    """

    def __init__(self, message: str, path: Path, foreign: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.path = path
        self.foreign = tuple(foreign)


class WriteError(OSError):
    """Writing failed (a full disk, no permission, ...); the previous file or directory is unchanged.

    ``errno`` is the cause's (``errno.ENOSPC`` for a full disk); ``str()`` is one line naming the target.
    """

    def __str__(self) -> str:
        return str(self.strerror)
