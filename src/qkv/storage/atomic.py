"""Atomic writes: a reader sees the old file or directory or the new one, whole, also after a crash.

:func:`write_file` writes a temporary file beside the target, fsyncs it, makes it mode 0644 and renames it
over the target. :func:`write_directory` and :func:`replace_directory` do the same for a directory: the new
one is built beside the target and renamed into place; an existing target is renamed away first (POSIX
cannot swap two directories), so a crash between the two renames leaves ``.<name>.old-…``, which
:func:`recover_directory` and :func:`clean_leftovers` put back. Every write first asks
:mod:`qkv.storage.outputs` whether the output may be written.

Temporary and old copies are named ``.<name>.<kind>-<pid>-<hex>`` so that a later run can tell a killed
writer's leftovers (its process is gone) from a running writer's.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path

from qkv.storage.errors import WriteError
from qkv.storage.outputs import check_output_directory, check_output_file

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "LEFTOVER",
    "Stage",
    "clean_leftovers",
    "fsync_dir",
    "recover_directory",
    "remove",
    "replace_directory",
    "sibling",
    "write_directory",
    "write_file",
    "write_new_file",
    "writer_alive",
]

FILE_MODE = 0o644  # files readable by all, as `cp` would make them (safetensors' save_file makes 0600)
DIR_MODE = 0o755

Stage = Callable[[str], None]
"""A test seam: called with the name of each stage of a write, so a test can kill the writer there."""

# Leftovers of a writer: ".<name>.<kind>-<pid>-<random>". "trash" is a checkpoint being pruned.
LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old|trash)-(?P<pid>\d+)-(?P<token>\w+)$")

# ---- writing ---------------------------------------------------------------------------------------------------


def write_file(
    path: str | os.PathLike[str],
    data: bytes | str,
    *,
    overwrite: bool = True,
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> Path:
    """Write ``data`` (text is UTF-8) to ``path`` atomically: a reader sees the old file or the new one, whole.

    A temporary sibling is written, fsynced, made mode 0644 and renamed over ``path``; the parent
    directories are created. With ``overwrite=False`` an existing ``path`` is refused, and ``path`` is never
    one of ``inputs`` (see :func:`check_output_file`). A full disk raises :class:`WriteError` naming ``path``,
    and ``path`` is unchanged.
    """
    target = Path(path)
    check_output_file(target, overwrite=overwrite, inputs=inputs)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    temp = sibling(target, "tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_new_file(temp, payload)
        os.replace(temp, target)
        fsync_dir(target.parent)
    except BaseException as error:
        temp.unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, (FileNotFoundError, WriteError)):
            raise _write_error(target, error, "the file") from error
        raise
    return target


def write_directory(
    target: str | os.PathLike[str],
    files: Mapping[str, bytes],
    *,
    owned: Collection[str] = (),
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike[str]] = (),
    stage: Stage | None = None,
) -> Path:
    """Write a directory holding exactly ``files`` (name -> bytes) atomically, replacing ``target``.

    A reader sees the previous directory or the new one, complete, also after a crash (see the module
    docstring). The names in ``files`` and ``owned`` are what qkv writes into this kind of directory; an
    existing ``target`` holding anything else is refused unless ``overwrite`` (:func:`check_output_directory`).
    Files are mode 0644, the directory 0755. A full disk raises :class:`WriteError` and changes nothing.
    """

    def fill(temp: Path) -> None:
        for name, data in files.items():
            write_new_file(temp / name, data, stage=stage)

    return _replace(target, fill, {*owned, *files}, overwrite, inputs, stage, sync_files=False)


def replace_directory(
    target: str | os.PathLike[str],
    fill: Callable[[Path], None],
    *,
    owned: Collection[str],
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike[str]] = (),
    stage: Stage | None = None,
) -> Path:
    """:func:`write_directory` for a directory that ``fill(temporary_directory)`` writes (another library's
    writer, say). ``fill`` may delete and recreate the directory it is given. Every file it leaves is
    fsynced and made mode 0644 before the directory is renamed into place."""
    return _replace(target, fill, owned, overwrite, inputs, stage, sync_files=True)


def _replace(
    target: str | os.PathLike[str],
    fill: Callable[[Path], None],
    owned: Collection[str],
    overwrite: bool,
    inputs: Iterable[str | os.PathLike[str]],
    stage: Stage | None,
    *,
    sync_files: bool,
) -> Path:
    out = Path(target)
    check_output_directory(out, owned=owned, overwrite=overwrite, inputs=inputs)
    at = stage or _no_stage
    parent = out.parent
    temp = sibling(out, "tmp")
    old: Path | None = None
    try:
        parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(temp)
        os.chmod(temp, DIR_MODE)  # whatever the umask
        at("tmp_created")
        fill(temp)
        os.chmod(temp, DIR_MODE)
        if sync_files:
            _sync_files(temp)
        fsync_dir(temp)
        at("synced")
        if out.exists() or out.is_symlink():
            old = sibling(out, "old")
            os.rename(out, old)
            at("old_moved")  # the crash window: no `out`; readers restore `old`
        os.rename(temp, out)  # the commit point
    except BaseException as error:
        shutil.rmtree(temp, ignore_errors=True)
        if old is not None and not out.exists():
            os.rename(old, out)
        if isinstance(error, OSError) and not isinstance(error, (FileNotFoundError, WriteError)):
            raise _write_error(out, error, "the directory") from error
        raise
    fsync_dir(parent)
    at("new_moved")
    if old is not None:
        remove(old)
        at("old_removed")
    return out


def _write_error(target: Path, error: OSError, what: str) -> WriteError:
    reason = error.strerror or str(error)
    if error.errno == errno.ENOSPC:
        reason = "No space left on device"
    return WriteError(
        error.errno or 0, f"{target}: could not write {what} ({reason}); the previous one is unchanged"
    )


def _no_stage(name: str) -> None:
    """No test is watching the stages of this write."""


def write_new_file(path: Path, data: bytes, *, stage: Stage | None = None) -> None:
    """Create ``path`` (it must not exist), write ``data``, fsync; mode 0644 whatever the umask.

    ``stage`` hears ``partial:<name>`` halfway through and ``written:<name>`` at the end.
    """
    at = stage or _no_stage
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        view = memoryview(data)
        half = len(view) // 2
        _write_all(fd, view[:half])
        at(f"partial:{path.name}")
        _write_all(fd, view[half:])
        os.fsync(fd)
    finally:
        os.close(fd)
    at(f"written:{path.name}")


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _sync_files(directory: Path) -> None:
    for entry in directory.rglob("*"):
        if entry.is_file() and not entry.is_symlink():
            os.chmod(entry, FILE_MODE)
            fd = os.open(entry, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make renames and new entries in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sibling(path: Path, kind: str) -> Path:
    """A fresh name beside ``path`` that :func:`clean_leftovers` recognises: ``.<name>.<kind>-<pid>-<hex>``."""
    return path.parent / f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def remove(path: Path) -> None:
    """Delete a file or a directory tree (a link itself, never what it points to)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


# ---- what killed writers leave behind ----------------------------------------------------------------------------


def writer_alive(pid: int) -> bool:
    """Whether the process that made a leftover may still be writing (never this process itself)."""
    if pid == os.getpid():
        return False  # this process is not writing while it cleans up
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def recover_directory(directory: Path) -> Path:
    """``directory``, restored from its ``.old`` copy if a writer died between its two renames.

    If that writer is still running (it is about to rename the new directory in), the old copy is read in
    place; if it cannot be renamed back (a read-only file system), too.
    """
    if directory.exists() or not directory.parent.is_dir():
        return directory
    olds = []
    for entry in directory.parent.iterdir():
        match = LEFTOVER.match(entry.name)
        if match and match["kind"] == "old" and match["name"] == directory.name and entry.is_dir():
            olds.append((entry.stat().st_mtime, entry, writer_alive(int(match["pid"]))))
    if not olds:
        return directory
    _, newest, alive = max(olds)
    if alive:
        return newest
    try:
        os.rename(newest, directory)
    except OSError:
        return newest
    return directory


def clean_leftovers(folder: Path) -> list[Path]:
    """Remove what killed writers left in ``folder``; return it. An ``.old`` directory whose directory is
    missing is renamed back instead (the writer died between its two renames). Leftovers of a writer that is
    still running are left alone, except those of this very process."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    # Newest first, so that of two .old copies of one missing directory the newer is restored.
    leftovers = sorted(folder.iterdir(), key=lambda entry: entry.lstat().st_mtime, reverse=True)
    for entry in leftovers:
        match = LEFTOVER.match(entry.name)
        if match is None or writer_alive(int(match["pid"])):
            continue
        original = folder / match["name"]
        if match["kind"] == "old" and not original.exists():
            os.rename(entry, original)
            fsync_dir(folder)
            continue
        remove(entry)
        removed.append(entry)
    return removed
