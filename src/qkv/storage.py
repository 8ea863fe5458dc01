"""Files on disk: written so that nothing is lost, read so that nothing harmful or malformed gets in.

Every file qkv reads or writes goes through here:

* **Errors.** :class:`CheckpointError` (a file qkv cannot or will not load or write), its subclass
  :class:`OutputExistsError` (an output path that holds what qkv did not write, or that is an input), and
  :class:`WriteError` (an ``OSError`` such as a full disk, with a one-line message naming the target).
* **Reading.** :func:`read_json` and :func:`read_json_object` name the file (and line and column) for bytes
  that are not UTF-8, text that is not JSON, JSON nested too deep or of the wrong shape.
  :func:`read_safetensors_header` validates a safetensors header against the file's size before any tensor
  is read, and recognises a pickle (:func:`pickle_kind`) without ever unpickling it.
* **Writing.** :func:`write_file` writes a temporary file beside the target, fsyncs it, makes it mode 0644
  and renames it over the target. :func:`write_directory` and :func:`replace_directory` do the same for a
  directory: the new one is built beside the target and renamed into place; an existing target is renamed
  away first (POSIX cannot swap two directories), so a crash between the two renames leaves ``.<name>.old-…``,
  which :func:`recover_directory` and :func:`clean_leftovers` put back.
* **Outputs never destroy data.** :func:`check_output_directory` and :func:`check_output_file` refuse an
  output that is an input or holds one, and (unless ``overwrite``) an existing directory holding any entry
  that qkv does not write into that kind of output, or an existing file.

Temporary and old copies are named ``.<name>.<kind>-<pid>-<hex>`` so that a later run can tell a killed
writer's leftovers (its process is gone) from a running writer's.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

__all__ = [
    "FILE_MODE",
    "CheckpointError",
    "OutputExistsError",
    "TensorEntry",
    "WriteError",
    "check_output_directory",
    "check_output_file",
    "clean_leftovers",
    "pickle_kind",
    "read_json",
    "read_json_object",
    "read_safetensors_header",
    "recover_directory",
    "replace_directory",
    "write_directory",
    "write_file",
]

FILE_MODE = 0o644  # files readable by all, as `cp` would make them (safetensors' save_file makes 0600)
DIR_MODE = 0o755
MAX_HEADER_BYTES = 100_000_000  # the limit safetensors itself enforces
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")

Stage = Callable[[str], None]
"""A test seam: called with the name of each stage of a write, so a test can kill the writer there."""

# Leftovers of a writer: ".<name>.<kind>-<pid>-<random>". "trash" is a checkpoint being pruned.
LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old|trash)-(?P<pid>\d+)-(?P<token>\w+)$")


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


# ---- JSON -------------------------------------------------------------------------------------------------


def read_json(path: str | os.PathLike[str], *, what: str = "a JSON file") -> Any:
    """The JSON value in ``path``; a :class:`CheckpointError` naming the file (and line and column) for bytes
    that are not UTF-8, text that is not JSON, or JSON nested too deeply to parse.

    ``what`` says what the file should be, for the messages ("a tokenizer.json", ...).
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file; is this a qkv model directory (see qkv train --out)?")
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise CheckpointError(f"{file}: not UTF-8 text (byte {error.start}); expected {what}") from error
    except OSError as error:
        raise CheckpointError(f"{file}: cannot be read ({error.strerror or error})") from error
    return parse_json(text, str(file))


def parse_json(text: str, source: str) -> Any:
    """``json.loads`` with every failure a one-line :class:`CheckpointError` naming ``source``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{source}:{error.lineno}:{error.colno}: invalid JSON: {error.msg}") from error
    except RecursionError as error:  # "[[[[...": the decoder recurses once per level
        raise CheckpointError(f"{source}: invalid JSON: nested too deeply to read") from error
    except ValueError as error:  # an integer of more digits than Python converts (sys.int_info)
        raise CheckpointError(f"{source}: invalid JSON: {error}") from error


def read_json_object(path: str | os.PathLike[str], *, what: str = "a JSON object") -> dict[str, Any]:
    """:func:`read_json`, which must give a JSON object ``{...}``."""
    value = read_json(path, what=what)
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object {{...}}, got {json_type(value)}")
    return value


def json_type(value: Any) -> str:
    """How JSON calls the type of ``value``, with an article: "an array", "a string", ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    names = {dict: "an object", list: "an array", str: "a string", int: "an integer", float: "a number"}
    return names.get(type(value), f"a {type(value).__name__}")


# ---- safetensors headers ---------------------------------------------------------------------------------

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "C64": torch.complex64,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U64": torch.uint64,
    "U32": torch.uint32,
    "U16": torch.uint16,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class TensorEntry(NamedTuple):
    """One tensor of a safetensors header: its shape, dtype and byte range [begin, end) in the data."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    begin: int
    end: int


def read_safetensors_header(path: str | os.PathLike[str]) -> dict[str, TensorEntry]:
    """Every tensor of a safetensors file, its header checked against the file's size: name -> entry.

    Layout: 8 bytes little-endian header length n, n bytes of JSON (an object starting with '{'), then the
    tensor data, which the tensors' ``data_offsets`` must cover exactly, in order, without gaps or overlaps.
    A :class:`CheckpointError` names the file and, where one is to blame, the tensor, for a file that is
    truncated, corrupted, appended to, or not safetensors at all (a pickle is recognised, never unpickled).
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file; is this a qkv model directory (see qkv train --out)?")
    size = file.stat().st_size
    with open(file, "rb") as handle:
        prefix = handle.read(8)
        header_length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        plausible = 0 <= header_length <= min(MAX_HEADER_BYTES, size - 8)
        raw = handle.read(header_length) if plausible else b""
    if not raw.startswith(b"{"):
        raise CheckpointError(f"{file}: {_diagnose(file, prefix, header_length, size)}")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:  # ValueError: JSON, or a huge integer
        reason = "nested too deeply to read" if isinstance(error, RecursionError) else str(error)
        raise CheckpointError(
            f"{file}: corrupted safetensors header ({reason}); the file is damaged: re-save or re-download it"
        ) from error
    if not isinstance(header, dict):
        raise CheckpointError(f"{file}: corrupted safetensors header (not a JSON object)")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(
            f"{file}: corrupted safetensors header: __metadata__ must map names to strings; re-save the file"
        )
    data_length = size - 8 - header_length
    entries = {
        name: _header_entry(file, name, info) for name, info in header.items() if name != "__metadata__"
    }
    position = 0
    for name, entry in sorted(entries.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin != position:
            raise CheckpointError(
                f"{file}: tensor {name!r} starts at byte {entry.begin} of the data, expected {position} "
                "(overlap or gap): corrupted header; re-save or re-download the file"
            )
        position = entry.end
    cut = sorted((entry.begin, name, entry.end) for name, entry in entries.items() if entry.end > data_length)
    if cut:
        begin, name, end = cut[0]
        more = f" (and {len(cut) - 1} more tensors after it)" if len(cut) > 1 else ""
        raise CheckpointError(
            f"{file}: tensor {name!r} needs bytes {begin}..{end} of the data but the file holds only "
            f"{data_length}{more}: the file is truncated (an interrupted copy or a killed writer?); use the "
            "previous checkpoint or copy it again"
        )
    if position != data_length:
        raise CheckpointError(
            f"{file}: {data_length - position} bytes after the last tensor: the file is corrupted or was "
            "appended to; re-save or re-download it"
        )
    return entries


def _header_entry(file: Path, name: str, info: Any) -> TensorEntry:
    where = f"{file}: tensor {name!r}"
    if not isinstance(info, dict):
        raise CheckpointError(f"{where}: corrupted header entry ({json_type(info)}, not an object)")
    dtype_name = info.get("dtype")
    dtype = SAFETENSORS_DTYPES.get(dtype_name) if isinstance(dtype_name, str) else None
    shape = info.get("shape")
    offsets = info.get("data_offsets")
    if dtype is None:
        raise CheckpointError(
            f"{where}: unknown dtype {_short(dtype_name)}: corrupted header or newer format"
        )
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise CheckpointError(f"{where}: corrupted header: shape {_short(shape)} is not a list of sizes")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise CheckpointError(
            f"{where}: corrupted header: data_offsets {_short(offsets)} is not [begin, end]"
        )
    begin, end = offsets
    needed = dtype.itemsize
    for dim in shape:
        needed *= dim
    if end - begin != needed:
        raise CheckpointError(
            f"{where}: corrupted header: shape {_short(shape)} of {dtype_name} needs {_short(needed)} bytes but "
            f"data_offsets span {end - begin}; re-save or re-download the file"
        )
    return TensorEntry(tuple(shape), dtype, begin, end)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def pickle_kind(prefix: bytes) -> str:
    """What pickle a file starting with ``prefix`` is ("a Python pickle (protocol 4)", ...), or "" if none.

    torch.save writes a zip archive with a pickle inside; older torch and pickle.dump a bare pickle.
    """
    if prefix.startswith(b"PK\x03\x04"):
        return "a zip archive, as torch.save writes (a pickle inside)"
    if len(prefix) >= 2 and prefix[0] == 0x80 and 2 <= prefix[1] <= 5:
        return f"a Python pickle (protocol {prefix[1]})"
    return ""


def convert_hint(pickle_file: Path, converted: Path) -> str:
    """How to convert a pickle the user trusts to safetensors, themselves (qkv never unpickles)."""
    return (
        'If you trust its source, convert it with: python -c "import torch; from safetensors.torch import '
        f"save_file; save_file(torch.load('{pickle_file}', weights_only=True), '{converted}')\""
    )


def _diagnose(file: Path, prefix: bytes, header_length: int, size: int) -> str:
    """Why a file whose first bytes do not frame a JSON header is not safetensors."""
    what = pickle_kind(prefix)
    if what:
        converted = file.with_name(
            "model.safetensors" if file.name != "model.safetensors" else "converted.safetensors"
        )
        return (
            f"is {what}, not safetensors; qkv never unpickles, because that runs arbitrary code. "
            + convert_hint(file, converted)
        )
    if header_length < 0:
        return f"is {size} bytes, too short for a safetensors file (8-byte header length): truncated or empty"
    if header_length > MAX_HEADER_BYTES:
        return (
            f"header length {header_length} bytes exceeds safetensors' limit of {MAX_HEADER_BYTES}: the file is "
            "corrupted or not safetensors"
        )
    if header_length > size - 8:
        return (
            f"header length {header_length} bytes exceeds the file's {size - 8} bytes after it: the file is "
            "truncated inside its header (or corrupted); copy or download it again"
        )
    return "not a safetensors file (its header does not start with '{'); re-save it with qkv"


# ---- where outputs may go ------------------------------------------------------------------------------------


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
