"""Safetensors headers, checked against the file's size before any tensor is read; pickles recognised,
never unpickled.

:func:`read_safetensors_header` gives every tensor's shape, dtype and byte range, or a
:class:`~qkv.storage.errors.CheckpointError` naming the file (and the tensor to blame) for a file that is
truncated, corrupted, appended to, or not safetensors at all. :func:`pickle_kind` tells a pickle by its
first bytes, and :func:`convert_hint` says how a user who trusts one can convert it themselves.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch

from qkv.storage.errors import CheckpointError
from qkv.storage.json_files import json_type

__all__ = [
    "MAX_HEADER_BYTES",
    "PICKLE_SUFFIXES",
    "SAFETENSORS_DTYPES",
    "TensorEntry",
    "convert_hint",
    "pickle_kind",
    "read_safetensors_header",
]

MAX_HEADER_BYTES = 100_000_000  # the limit safetensors itself enforces
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")

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
