"""Model directories on disk: written atomically, tensors in safetensors only, never a pickle.

A model directory holds ``config.json``, ``model.safetensors`` and the tokenizer files (``tokenizer.json``,
or ``src_tokenizer.json`` + ``tgt_tokenizer.json``); a resumable one adds ``trainer_state.json`` and
``optimizer.safetensors``. A training run keeps several in ``<run>/checkpoints/<name>/`` and names the newest
complete one in the pointer file ``<run>/checkpoints/LATEST``.

Writing (:func:`save_directory`, through :func:`qkv.storage.write_directory`) goes to a temporary sibling
``.<name>.tmp-<pid>-<hex>``; every file and the directory are fsynced, then the directory is renamed into
place. Replacing an existing directory takes two renames, because POSIX cannot swap two directories
atomically:

1. the old directory is renamed away to ``.<name>.old-<pid>-<hex>``,
2. the new one is renamed to ``<name>`` (the commit point), and the old one is removed.

A crash between 1 and 2 leaves no ``<name>``: :func:`load_directory`, :func:`latest_checkpoint`,
:func:`recover` and :func:`clean_stale` then restore the ``.old`` directory, so a reader always sees the
previous or the new directory, complete. :func:`commit_checkpoint` also replaces ``LATEST`` with
``os.replace`` only after its directory is in place. Leftovers of a killed writer (temporary and old
directories) are removed by :func:`clean_stale`; those of a writer that is still running are left alone.
An existing directory is replaced only when it holds nothing but files qkv writes there (or with
``overwrite=True``), and never when it is or holds the input (:mod:`qkv.storage`).

Reading never unpickles: ``torch.load`` is not called anywhere, and a ``model.safetensors`` that is really a
pickle is recognised by its content and refused. Every file is checked before its data is used; problems
raise :class:`CheckpointError` naming the file and, where one is to blame, the tensor.
"""

from __future__ import annotations

import json as json_module
import os
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor

from qkv import storage
from qkv.storage import CheckpointError, OutputExistsError, WriteError

__all__ = [
    "MODEL_DIRECTORY_FILES",
    "CheckpointError",
    "OutputExistsError",
    "WriteError",
    "check_output",
    "check_state_dict",
    "clean_stale",
    "commit_checkpoint",
    "latest_checkpoint",
    "load_directory",
    "load_json",
    "load_tensors",
    "prune_checkpoints",
    "recover",
    "save_directory",
    "tensor_specs",
]

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"
CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "LATEST"
PICKLE_SUFFIXES = storage.PICKLE_SUFFIXES
FILE_MODE = storage.FILE_MODE
DIR_MODE = storage.DIR_MODE
MAX_HEADER_BYTES = storage.MAX_HEADER_BYTES

# What qkv writes into a model directory (a checkpoint, best/, an average): an existing directory holding
# only these is replaced without asking; anything else in it needs overwrite=True (qkv.storage.outputs).
MODEL_DIRECTORY_FILES = frozenset(
    {
        CONFIG_FILE,
        MODEL_FILE,
        OPTIMIZER_FILE,
        TRAINER_STATE_FILE,
        "tokenizer.json",
        "src_tokenizer.json",
        "tgt_tokenizer.json",
    }
)

Spec = tuple[tuple[int, ...], torch.dtype | None]
"""A tensor's (shape, dtype); dtype None means "any dtype"."""

# Test seam: called with the name of each stage of a write ("tmp_created", "partial:<file>",
# "written:<file>", "synced", "old_moved", "new_moved", "old_removed", "pointer_written",
# "pointer_replaced"), so a test can kill the writer there.
_stage_hook: Callable[[str], None] | None = None


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
    overwrite: bool = False,
    owned: Collection[str] = MODEL_DIRECTORY_FILES,
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> Path:
    """Write a directory of files atomically: afterwards ``path`` holds exactly these files, or (after a
    crash) the previous directory, complete.

    ``tensors`` maps file names to state dicts (``{"model.safetensors": model.state_dict()}``), ``json`` file
    names to JSON values (``{"config.json": {...}}``) and ``text`` file names to text (tokenizer JSON).
    Everything is serialised before the disk is touched, so a bad value leaves no trace. Tensors are
    stored on CPU and contiguous; tensors that share memory (tied weights) are each stored in full, so the
    file loads with a strict ``load_state_dict``. ``metadata`` goes into each safetensors header. Files are
    mode 0644, the directory 0755.

    An existing ``path`` is replaced only if every entry in it is a file named in ``owned`` or among the
    files written; otherwise :class:`OutputExistsError` (a subclass of :class:`CheckpointError`), unless
    ``overwrite``. ``path`` may never be, hold, or (existing) lie inside one of ``inputs``, the paths the
    caller read to make it. A full disk raises :class:`WriteError` (an ``OSError``) and changes nothing.
    """
    files = _serialise(tensors, json, text or {}, metadata or {})
    return storage.write_directory(path, files, owned=owned, overwrite=overwrite, inputs=inputs, stage=_stage)


def check_output(
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    owned: Collection[str] = MODEL_DIRECTORY_FILES,
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> None:
    """Raise :class:`OutputExistsError` now if :func:`save_directory` would refuse ``path`` later: call it
    before long work whose result goes there. See :func:`qkv.storage.check_output_directory`."""
    storage.check_output_directory(path, owned=owned, overwrite=overwrite, inputs=inputs)


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
    The checkpoints folder is qkv's own: a checkpoint of the same name is replaced whatever it holds.
    """
    _check_checkpoint_name(name, source="checkpoint name")
    checkpoints = Path(run_dir) / CHECKPOINTS_DIR
    directory = save_directory(
        checkpoints / name, tensors=tensors, json=json, text=text, metadata=metadata, overwrite=True
    )
    pointer_temp = storage.sibling(checkpoints / LATEST_FILE, "tmp")
    try:
        storage.write_new_file(pointer_temp, (name + "\n").encode("utf-8"), stage=_stage)
        _stage("pointer_written")
        os.replace(pointer_temp, checkpoints / LATEST_FILE)
    except BaseException as error:
        pointer_temp.unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, FileNotFoundError):
            raise WriteError(
                error.errno or 0,
                f"{checkpoints / LATEST_FILE}: could not write ({error.strerror or error}); it still names the "
                f"previous checkpoint",
            ) from error
        raise
    storage.fsync_dir(checkpoints)
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
    try:
        name = pointer.read_bytes().decode("utf-8").strip()
    except UnicodeDecodeError as error:
        raise CheckpointError(f"{pointer}: not UTF-8 text; it should hold a checkpoint name") from error
    _check_checkpoint_name(name, source=str(pointer))
    directory = storage.recover_directory(checkpoints / name)
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
            trash = storage.sibling(checkpoints / name, "trash")
            os.rename(checkpoints / name, trash)
            storage.remove(trash)
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
    return [*storage.clean_leftovers(root), *storage.clean_leftovers(root / CHECKPOINTS_DIR)]


def recover(directory: str | os.PathLike[str]) -> Path:
    """``directory``, restored first if a writer was killed while replacing it (between its two renames).

    Call it before testing whether a directory that qkv replaces (``best/``, a checkpoint) exists.
    """
    return storage.recover_directory(Path(directory))


# ---- reading -----------------------------------------------------------------------------------------------


def load_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a JSON object from ``path``; errors name the file and, for bad JSON, the line and column."""
    return storage.read_json_object(path, what="a JSON file")


def tensor_specs(path: str | os.PathLike[str]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of every tensor in a safetensors file, read from its header alone.

    The whole header is validated (see :func:`load_tensors`), so a file that passes here loads.
    """
    return {name: (e.shape, e.dtype) for name, e in storage.read_safetensors_header(path).items()}


def load_tensors(
    path: str | os.PathLike[str],
    *,
    expected: Mapping[str, Tensor | Spec] | None = None,
    strict_dtype: bool = False,
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
        check_state_dict(expected, specs, file, strict_dtype=strict_dtype)
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
    directory = storage.recover_directory(Path(path))
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
    pointers: set[int] = set()
    for name, tensor in state.items():
        if not isinstance(tensor, Tensor):
            raise CheckpointError(f"{file}: {name!r} is a {type(tensor).__name__}, not a Tensor")
        if tensor.layout != torch.strided:
            raise CheckpointError(f"{file}: tensor {name!r} is {tensor.layout}; convert it with .to_dense()")
        tensor = tensor.detach().cpu()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in pointers and tensor.numel():
            tensor = tensor.clone()  # tied weights: safetensors refuses tensors that share memory
        pointers.add(pointer)
        prepared[name] = tensor.contiguous()
    try:
        return safetensors.torch.save(prepared, metadata={"format": "pt", **metadata})
    except Exception as error:
        raise CheckpointError(f"{file}: cannot be written as safetensors: {error}") from error


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


def _convert_hint(pickle_file: Path) -> str:
    converted = pickle_file.with_name(
        MODEL_FILE if pickle_file.name != MODEL_FILE else "converted.safetensors"
    )
    return storage.convert_hint(pickle_file, converted)
