"""Model directories on disk: written atomically, tensors in safetensors only, never a pickle.

A model directory holds ``config.json``, ``model.safetensors`` and the tokenizer files (``tokenizer.json``,
or ``src_tokenizer.json`` + ``tgt_tokenizer.json``); a resumable one adds ``trainer_state.json`` and
``optimizer.safetensors``. A training run keeps several in ``<run>/checkpoints/<name>/`` and names the newest
complete one in the pointer file ``<run>/checkpoints/LATEST``.

Writing (:func:`save_directory`) goes to a temporary sibling ``.<name>.tmp-<pid>-<hex>``; every file and the
directory are fsynced, then the directory is renamed into place. Replacing an existing directory takes two
renames, because POSIX cannot swap two directories atomically:

1. the old directory is renamed away to ``.<name>.old-<pid>-<hex>``,
2. the new one is renamed to ``<name>`` (the commit point), and the old one is removed.

A crash between 1 and 2 leaves no ``<name>``: :func:`load_directory`, :func:`latest_checkpoint` and
:func:`clean_stale` then restore the ``.old`` directory, so a reader always sees the previous or the new
directory, complete. :func:`commit_checkpoint` also replaces ``LATEST`` with ``os.replace`` only after its
directory is in place. Leftovers of a killed writer (temporary and old directories) are removed by
:func:`clean_stale`; those of a writer that is still running are left alone.

Reading never unpickles: ``torch.load`` is not called anywhere, and a ``model.safetensors`` that is really a
pickle is recognised by its content and refused. Every file is checked before its data is used; problems
raise :class:`CheckpointError` naming the file and, where one is to blame, the tensor.
"""

from __future__ import annotations

import json as json_module
import os
import re
import secrets
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor

__all__ = [
    "CheckpointError",
    "check_state_dict",
    "clean_stale",
    "commit_checkpoint",
    "latest_checkpoint",
    "load_directory",
    "load_json",
    "load_tensors",
    "prune_checkpoints",
    "save_directory",
    "tensor_specs",
]

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"
CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "LATEST"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
FILE_MODE = 0o644  # files readable by all, as `cp` would make them (safetensors' save_file makes 0600)
DIR_MODE = 0o755
MAX_HEADER_BYTES = 100_000_000  # the limit safetensors itself enforces

# Leftovers of a writer: ".<name>.<kind>-<pid>-<random>". "trash" is a checkpoint being pruned.
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old|trash)-(?P<pid>\d+)-(?P<token>\w+)$")

_DTYPES: dict[str, torch.dtype] = {
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

Spec = tuple[tuple[int, ...], torch.dtype | None]
"""A tensor's (shape, dtype); dtype None means "any dtype"."""

# Test seam: called with the name of each stage of a write ("tmp_created", "partial:<file>",
# "written:<file>", "synced", "old_moved", "new_moved", "old_removed", "pointer_written",
# "pointer_replaced"), so a test can kill the writer there.
_stage_hook: Callable[[str], None] | None = None


class CheckpointError(ValueError):
    """A checkpoint file or directory that qkv cannot or will not load, or cannot write."""


def _stage(name: str) -> None:
    if _stage_hook is not None:
        _stage_hook(name)


# ---- writing -----------------------------------------------------------------------------------------------


def save_directory(
    path: str | os.PathLike[str],
    *,
    tensors: Mapping[str, Mapping[str, Tensor]],
    json: Mapping[str, Any],
    text: Mapping[str, str] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a directory of files atomically: afterwards ``path`` holds exactly these files, or (after a
    crash) the previous directory, complete.

    ``tensors`` maps file names to state dicts (``{"model.safetensors": model.state_dict()}``), ``json`` file
    names to JSON values (``{"config.json": {...}}``) and ``text`` file names to text (tokenizer JSON).
    Everything is serialised before the disk is touched, so a bad value leaves no trace. Tensors are
    stored on CPU and contiguous; tensors that share memory (tied weights) are each stored in full, so the
    file loads with a strict ``load_state_dict``. ``metadata`` goes into each safetensors header. Files are
    mode 0644, the directory 0755.
    """
    target = Path(path)
    files = _serialise(tensors, json, text or {}, metadata or {})
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"{target}: exists and is not a directory; move it away or choose another path")
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    temp = _sibling(target, "tmp")
    old: Path | None = None
    try:
        os.mkdir(temp)
        os.chmod(temp, DIR_MODE)  # whatever the umask
        _stage("tmp_created")
        for name, data in files.items():
            _write_file(temp / name, data)
        _fsync_dir(temp)
        _stage("synced")
        if target.exists():
            old = _sibling(target, "old")
            os.rename(target, old)
            _stage("old_moved")  # the crash window: no `target`; readers restore `old`
        os.rename(temp, target)  # the commit point
    except BaseException as error:
        shutil.rmtree(temp, ignore_errors=True)
        if old is not None and not target.exists():
            os.rename(old, target)
        if isinstance(error, OSError) and not isinstance(error, FileNotFoundError):
            raise OSError(
                error.errno,
                f"{target}: could not write the directory ({error}); the previous one is unchanged",
            ) from error
        raise
    _fsync_dir(parent)
    _stage("new_moved")
    if old is not None:
        shutil.rmtree(old)
        _stage("old_removed")
    return target


def commit_checkpoint(
    run_dir: str | os.PathLike[str],
    name: str,
    *,
    tensors: Mapping[str, Mapping[str, Tensor]],
    json: Mapping[str, Any],
    text: Mapping[str, str] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``run_dir/checkpoints/<name>/`` atomically (see :func:`save_directory`), then point
    ``run_dir/checkpoints/LATEST`` at it. Returns the checkpoint directory.

    Name checkpoints so that they sort, e.g. ``f"step-{step:08d}"``: :func:`prune_checkpoints` keeps the last.
    """
    _check_checkpoint_name(name, source="checkpoint name")
    checkpoints = Path(run_dir) / CHECKPOINTS_DIR
    directory = save_directory(checkpoints / name, tensors=tensors, json=json, text=text, metadata=metadata)
    pointer_temp = _sibling(checkpoints / LATEST_FILE, "tmp")
    try:
        _write_file(pointer_temp, (name + "\n").encode("utf-8"))
        _stage("pointer_written")
        os.replace(pointer_temp, checkpoints / LATEST_FILE)
    except BaseException:
        pointer_temp.unlink(missing_ok=True)
        raise
    _fsync_dir(checkpoints)
    _stage("pointer_replaced")
    return directory


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The checkpoint directory that ``run_dir/checkpoints/LATEST`` names, or None if no checkpoint was
    committed yet. A directory left missing by a killed writer is restored first.
    """
    checkpoints = Path(run_dir) / CHECKPOINTS_DIR
    pointer = checkpoints / LATEST_FILE
    if not pointer.is_file():
        return None
    name = pointer.read_text(encoding="utf-8").strip()
    _check_checkpoint_name(name, source=str(pointer))
    directory = _recover(checkpoints / name)
    if not directory.is_dir():
        raise CheckpointError(
            f"{pointer}: names checkpoint {name!r} but {checkpoints / name} does not exist; "
            f"point {LATEST_FILE} at an existing checkpoint, or delete it to start afresh"
        )
    return directory


def prune_checkpoints(run_dir: str | os.PathLike[str], keep_last: int) -> list[Path]:
    """Delete all but the last ``keep_last`` checkpoints (in natural name order, so ``step-10`` comes after
    ``step-9``) and never the one ``LATEST`` names. Returns the deleted directories.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last={keep_last}: keep at least one checkpoint")
    checkpoints = Path(run_dir) / CHECKPOINTS_DIR
    if not checkpoints.is_dir():
        return []
    latest = latest_checkpoint(run_dir)
    names = sorted(
        (entry.name for entry in checkpoints.iterdir() if entry.is_dir() and not entry.name.startswith(".")),
        key=_natural_key,
    )
    keep = set(names[-keep_last:]) | ({latest.name} if latest is not None else set())
    removed = []
    for name in names:
        if name not in keep:
            # Renamed first, so a half-deleted directory is never taken for a checkpoint.
            trash = _sibling(checkpoints / name, "trash")
            os.rename(checkpoints / name, trash)
            shutil.rmtree(trash)
            removed.append(checkpoints / name)
    return removed


def clean_stale(directory: str | os.PathLike[str]) -> list[Path]:
    """Remove what killed writers left in ``directory`` and in ``directory/checkpoints``; return it.

    Temporary files and directories are removed. An ``.old`` directory is removed when its directory
    exists, and renamed back into place when it does not (the writer died between its two renames).
    Leftovers of a writer process that is still running are left alone, except those of this very process:
    do not call this while another thread of the same process is saving.
    """
    root = Path(directory)
    removed: list[Path] = []
    for folder in (root, root / CHECKPOINTS_DIR):
        if not folder.is_dir():
            continue
        # Newest first, so that of two .old copies of one missing directory the newer is restored.
        leftovers = sorted(folder.iterdir(), key=lambda entry: entry.lstat().st_mtime, reverse=True)
        for entry in leftovers:
            match = _LEFTOVER.match(entry.name)
            if match is None or _writer_alive(int(match["pid"])):
                continue
            original = folder / match["name"]
            if match["kind"] == "old" and not original.exists():
                os.rename(entry, original)
                _fsync_dir(folder)
                continue
            _remove(entry)
            removed.append(entry)
    return removed


# ---- reading -----------------------------------------------------------------------------------------------


def load_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a JSON object from ``path``; errors name the file and, for bad JSON, the line and column."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file; is this a qkv model directory (see qkv train --out)?")
    try:
        value = json_module.loads(file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise CheckpointError(f"{file}: not UTF-8 text (byte {error.start}); expected a JSON file") from error
    except json_module.JSONDecodeError as error:
        raise CheckpointError(f"{file}:{error.lineno}:{error.colno}: invalid JSON: {error.msg}") from error
    if not isinstance(value, dict):
        raise CheckpointError(f"{file}: expected a JSON object {{...}}, got a {type(value).__name__}")
    return value


def tensor_specs(path: str | os.PathLike[str]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of every tensor in a safetensors file, read from its header alone.

    The whole header is validated (see :func:`load_tensors`), so a file that passes here loads.
    """
    return {name: (shape, dtype) for name, (shape, dtype, _, _) in _read_header(Path(path)).items()}


def load_tensors(
    path: str | os.PathLike[str], *, expected: Mapping[str, Tensor | Spec] | None = None
) -> dict[str, Tensor]:
    """All tensors of a safetensors file, on CPU.

    The file is checked first and a :class:`CheckpointError` names it, and the tensor where one is to blame,
    when it is truncated, its header is corrupted or its header length is absurd, or when it is not a
    safetensors file at all (a pickle from ``torch.save`` is recognised and refused, never unpickled).
    With ``expected`` (a module's ``state_dict()`` or name -> (shape, dtype)), the header is compared with
    it by :func:`check_state_dict` before any tensor data is read.
    """
    file = Path(path)
    specs = tensor_specs(file)
    if expected is not None:
        check_state_dict(expected, specs, file)
    try:
        return safetensors.torch.load_file(str(file), device="cpu")
    except Exception as error:  # safetensors raises its own SafetensorError and OSError
        raise CheckpointError(f"{file}: could not be read as safetensors: {error}") from error


def check_state_dict(
    expected: Mapping[str, Tensor | Spec],
    loaded: Mapping[str, Tensor | Spec],
    file: str | os.PathLike[str],
    *,
    strict_dtype: bool = False,
) -> None:
    """Raise :class:`CheckpointError` naming ``file`` and every missing, unexpected or misshapen tensor.

    Call it before ``module.load_state_dict`` so that a mismatch loads nothing at all. ``expected`` is a
    module's ``state_dict()`` or name -> (shape, dtype); ``loaded`` is what the file holds (tensors or
    :func:`tensor_specs`). Dtypes must agree exactly with ``strict_dtype``; otherwise only in kind
    (floating point, complex, bool or integer), since ``load_state_dict`` casts between float types.
    """
    want = {name: _spec(value) for name, value in expected.items()}
    have = {name: _spec(value) for name, value in loaded.items()}
    problems = []
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    if missing:
        problems.append(f"missing tensors {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors {_listing(unexpected)}")
    for name in sorted(set(want) & set(have)):
        (want_shape, want_dtype), (have_shape, have_dtype) = want[name], have[name]
        if want_shape != have_shape:
            problems.append(
                f"tensor {name!r} has shape {list(have_shape)} in the file, {list(want_shape)} expected"
            )
        elif want_dtype is not None and have_dtype is not None and want_dtype != have_dtype:
            if strict_dtype or _dtype_kind(want_dtype) != _dtype_kind(have_dtype):
                problems.append(f"tensor {name!r} has dtype {have_dtype} in the file, {want_dtype} expected")
    if problems:
        raise CheckpointError(
            f"{file}: does not fit the model: " + "; ".join(problems) + ". Nothing was loaded. Was it saved "
            "with a different config.json (vocab_size, d_model, layers), or from another model class?"
        )


def load_directory(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(config, tensors)`` of a model directory: ``config.json`` and ``model.safetensors``.

    A directory left missing by a writer killed mid-replace is restored first (see the module docstring).
    A directory holding only pickle files (``.pt``, ``.pth``, ``.bin``, ``.ckpt``, ``.pkl``) is refused.
    """
    directory = _recover(Path(path))
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{directory}: no such model directory; pass a directory written by qkv train (or qkv.checkpoint)"
        )
    model_file = directory / MODEL_FILE
    if not model_file.is_file():
        pickles = sorted(entry.name for entry in directory.iterdir() if entry.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise CheckpointError(
                f"{directory}: holds a pickle file ({', '.join(pickles)}) and no {MODEL_FILE}; qkv loads only "
                f"safetensors, because unpickling runs arbitrary code. {_convert_hint(directory / pickles[0])}"
            )
        raise CheckpointError(f"{directory}: has no {MODEL_FILE}; is it a qkv model directory?")
    config = load_json(directory / CONFIG_FILE)
    return config, load_tensors(model_file)


# ---- helpers -----------------------------------------------------------------------------------------------


def _serialise(
    tensors: Mapping[str, Mapping[str, Tensor]],
    json: Mapping[str, Any],
    text: Mapping[str, str],
    metadata: Mapping[str, str],
) -> dict[str, bytes]:
    """File name -> bytes for every file of a directory, checking names and values."""
    files: dict[str, bytes] = {}

    def add(name: str, data: bytes) -> None:
        if (
            not isinstance(name, str)
            or not name
            or name in (".", "..")
            or "/" in name
            or name.startswith(".")
        ):
            raise CheckpointError(f"{name!r}: not a plain file name (no '/', not starting with '.')")
        if name in files:
            raise CheckpointError(
                f"{name}: given twice (in tensors, json or text); each file is written once"
            )
        files[name] = data

    for name, state in tensors.items():
        if not name.endswith(".safetensors"):
            raise CheckpointError(f"{name}: tensor files must be named *.safetensors")
        add(name, _safetensors_bytes(name, state, metadata))
    for name, value in json.items():
        try:
            data = json_module.dumps(value, indent=2, ensure_ascii=False) + "\n"
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"{name}: cannot be written as JSON: {error}") from error
        add(name, data.encode("utf-8"))
    for name, value in text.items():
        add(name, value.encode("utf-8"))
    return files


def _safetensors_bytes(file: str, state: Mapping[str, Tensor], metadata: Mapping[str, str]) -> bytes:
    prepared: dict[str, Tensor] = {}
    storages: set[int] = set()
    for name, tensor in state.items():
        if not isinstance(tensor, Tensor):
            raise CheckpointError(f"{file}: {name!r} is a {type(tensor).__name__}, not a Tensor")
        if tensor.layout != torch.strided:
            raise CheckpointError(f"{file}: tensor {name!r} is {tensor.layout}; convert it with .to_dense()")
        tensor = tensor.detach().cpu()
        storage = tensor.untyped_storage().data_ptr()
        if storage in storages and tensor.numel():
            tensor = tensor.clone()  # tied weights: safetensors refuses tensors that share memory
        storages.add(storage)
        prepared[name] = tensor.contiguous()
    try:
        return safetensors.torch.save(prepared, metadata={"format": "pt", **metadata})
    except Exception as error:
        raise CheckpointError(f"{file}: cannot be written as safetensors: {error}") from error


def _write_file(path: Path, data: bytes) -> None:
    """Create ``path`` (it must not exist), write ``data``, fsync; mode 0644 whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        view = memoryview(data)
        half = len(view) // 2
        _write_all(fd, view[:half])
        _stage(f"partial:{path.name}")
        _write_all(fd, view[half:])
        os.fsync(fd)
    finally:
        os.close(fd)
    _stage(f"written:{path.name}")


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _fsync_dir(path: Path) -> None:
    """Make renames and new entries in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sibling(path: Path, kind: str) -> Path:
    """A fresh name beside ``path`` that :func:`clean_stale` recognises: ``.<name>.<kind>-<pid>-<hex>``."""
    return path.parent / f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def _writer_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process is not writing while it cleans up
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _recover(directory: Path) -> Path:
    """``directory``, restored from its ``.old`` copy if a writer died between its two renames.

    If that writer is still running (it is about to rename the new directory in), the old copy is read in
    place; if it cannot be renamed back (a read-only file system), too.
    """
    if directory.exists() or not directory.parent.is_dir():
        return directory
    olds = []
    for entry in directory.parent.iterdir():
        match = _LEFTOVER.match(entry.name)
        if match and match["kind"] == "old" and match["name"] == directory.name and entry.is_dir():
            olds.append((entry.stat().st_mtime, entry, _writer_alive(int(match["pid"]))))
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


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _check_checkpoint_name(name: str, *, source: str) -> None:
    if not name or name in (".", "..", LATEST_FILE) or "/" in name or "\\" in name or name.startswith("."):
        raise CheckpointError(
            f"{source}: {name!r} is not a checkpoint name; use a plain name such as 'step-00001000'"
        )


def _natural_key(name: str) -> tuple[str | int, ...]:
    """Sort key comparing digit runs as numbers: ``step-9`` < ``step-10``."""
    return tuple(int(part) if index % 2 else part for index, part in enumerate(re.split(r"(\d+)", name)))


def _listing(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(repr(name) for name in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _spec(value: Tensor | Spec) -> Spec:
    if isinstance(value, Tensor):
        return tuple(value.shape), value.dtype
    shape, dtype = value
    return tuple(int(size) for size in shape), dtype


def _dtype_kind(dtype: torch.dtype) -> str:
    if dtype.is_floating_point:
        return "floating point"
    if dtype.is_complex:
        return "complex"
    return "bool" if dtype == torch.bool else "integer"


_HeaderEntry = tuple[tuple[int, ...], torch.dtype, int, int]


def _read_header(file: Path) -> dict[str, _HeaderEntry]:
    """Validate a safetensors file's header against its size: name -> (shape, dtype, begin, end).

    Layout: 8 bytes little-endian header length n, n bytes of JSON starting with '{', then the tensor data,
    which the tensors' data_offsets must cover exactly.
    """
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
        header = json_module.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json_module.JSONDecodeError) as error:
        raise CheckpointError(
            f"{file}: corrupted safetensors header ({error}); the file is damaged: re-save or re-download it"
        ) from error
    if not isinstance(header, dict):
        raise CheckpointError(f"{file}: corrupted safetensors header (not a JSON object)")
    data_length = size - 8 - header_length
    entries: dict[str, _HeaderEntry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        entries[name] = _header_entry(file, name, info, data_length)
    position = 0
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda item: (item[1][2], item[1][3])):
        if begin != position:
            raise CheckpointError(
                f"{file}: tensor {name!r} starts at byte {begin} of the data, expected {position} "
                "(overlap or gap): corrupted header; re-save or re-download the file"
            )
        position = end
    if position != data_length:
        raise CheckpointError(
            f"{file}: {data_length - position} bytes after the last tensor: the file is corrupted or was "
            "appended to; re-save or re-download it"
        )
    return entries


def _header_entry(file: Path, name: str, info: Any, data_length: int) -> _HeaderEntry:
    where = f"{file}: tensor {name!r}"
    if not isinstance(info, dict):
        raise CheckpointError(f"{where}: corrupted header entry {info!r}")
    dtype_name = info.get("dtype")
    dtype = _DTYPES.get(dtype_name) if isinstance(dtype_name, str) else None
    shape = info.get("shape")
    offsets = info.get("data_offsets")
    if dtype is None:
        raise CheckpointError(f"{where}: unknown dtype {dtype_name!r}: corrupted header or newer format")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise CheckpointError(f"{where}: corrupted header: shape {shape!r} is not a list of sizes")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise CheckpointError(f"{where}: corrupted header: data_offsets {offsets!r} is not [begin, end]")
    begin, end = offsets
    needed = dtype.itemsize
    for dim in shape:
        needed *= dim
    if end - begin != needed:
        raise CheckpointError(
            f"{where}: corrupted header: shape {shape} of {info['dtype']} needs {needed} bytes but "
            f"data_offsets span {end - begin}; re-save or re-download the file"
        )
    if end > data_length:
        raise CheckpointError(
            f"{where}: needs bytes {begin}..{end} of the data but the file holds only {data_length}: "
            "the file is truncated (an interrupted copy or a killed writer?); use the previous checkpoint "
            "or copy it again"
        )
    return tuple(shape), dtype, begin, end


def _convert_hint(pickle_file: Path) -> str:
    converted = pickle_file.with_name(
        MODEL_FILE if pickle_file.name != MODEL_FILE else "converted.safetensors"
    )
    return (
        'If you trust its source, convert it with: python -c "import torch; from safetensors.torch import '
        f"save_file; save_file(torch.load('{pickle_file}', weights_only=True), '{converted}')\""
    )


def _diagnose(file: Path, prefix: bytes, header_length: int, size: int) -> str:
    """Why a file whose first bytes do not frame a JSON header is not safetensors."""
    if prefix.startswith(b"PK\x03\x04"):
        what = "a zip archive, as torch.save writes (a pickle inside)"
    elif len(prefix) >= 2 and prefix[0] == 0x80 and 2 <= prefix[1] <= 5:
        what = f"a Python pickle (protocol {prefix[1]})"
    else:
        what = ""
    if what:
        return f"is {what}, not safetensors; qkv never unpickles, because that runs arbitrary code. " + (
            _convert_hint(file)
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
            "truncated or corrupted"
        )
    return "not a safetensors file (its header does not start with '{'); re-save it with qkv"
