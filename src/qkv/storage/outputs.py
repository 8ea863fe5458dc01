"""Outputs never destroy data: refuse an output that is an input, or that holds what qkv did not write.

:func:`check_output_directory` and :func:`check_output_file` refuse an output that is an input or holds
one, and (unless ``overwrite``) an existing directory holding any entry that qkv does not write into that
kind of output, or an existing file. The writers of :mod:`qkv.storage.atomic` ask them first.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

from qkv.storage.errors import OutputExistsError

__all__ = ["check_output_directory", "check_output_file"]


def check_output_directory(
    target: str | os.PathLike[str],
    *,
    owned: Collection[str],
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> None:
    """Refuse (:class:`OutputExistsError`) a directory output that would destroy what qkv did not write.

    Always refused: an output that is an input, holds one, or lies inside one and exists already (replacing
    it would delete part of the input); and an output that is an existing file. Refused unless
    ``overwrite``: an existing directory holding anything but regular files named in ``owned`` (the files
    qkv writes into this kind of output). An empty directory or a missing path is fine.
    """
    out = Path(target)
    _check_not_an_input(out, inputs)
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise OutputExistsError(
            f"{out}: exists and is not a directory; choose another --out (qkv never replaces a file with "
            "a directory)",
            out,
        )
    if overwrite:
        return
    foreign = sorted(
        entry.name
        for entry in out.iterdir()
        if entry.name not in owned or entry.is_symlink() or not entry.is_file()
    )
    if foreign:
        raise OutputExistsError(
            f"{out}: exists and holds files qkv did not write ({_listing(foreign)}); choose another --out "
            "or pass --overwrite",
            out,
            foreign,
        )


def check_output_file(
    target: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> None:
    """Refuse (:class:`OutputExistsError`) a file output that is an input, is a directory, or (unless
    ``overwrite``) exists already."""
    out = Path(target)
    _check_not_an_input(out, inputs)
    if out.is_dir():
        raise OutputExistsError(f"{out}: is a directory; give a file name as --out", out)
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise OutputExistsError(
            f"{out}: exists already; choose another --out or pass --overwrite to replace it", out, [out.name]
        )


def _check_not_an_input(out: Path, inputs: Iterable[str | os.PathLike[str]]) -> None:
    resolved = out.resolve()
    for given in inputs:
        source = Path(given).resolve()
        if resolved == source:
            raise OutputExistsError(f"{out}: is also the input {given}; choose another --out", out)
        if source.is_relative_to(resolved):
            raise OutputExistsError(
                f"{out}: holds the input {given}, which writing it would delete; choose another --out", out
            )
        if resolved.is_relative_to(source) and (out.exists() or out.is_symlink()):
            raise OutputExistsError(
                f"{out}: is part of the input {given}; choose another --out (outside the input)", out
            )


def _listing(names: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... {len(names) - limit} more" if len(names) > limit else "")
