"""qkv.storage: atomic writes that never destroy what qkv did not write, and readers that answer every
malformed file with one CheckpointError naming it. Data-loss tests compare the sha256 of every file
before and after."""

from __future__ import annotations

import ast
import errno
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
import safetensors.torch
import torch

from qkv import storage
from qkv.storage import CheckpointError, OutputExistsError, WriteError

SRC = Path(storage.__file__).parent  # the package's directory


def tree_hashes(*roots: Path) -> dict[str, str]:
    """sha256 of every file under ``roots`` (and the roots themselves when they are files), by path."""
    hashes: dict[str, str] = {}
    for root in roots:
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in paths:
            hashes[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def test_storage_imports_nothing_of_qkv() -> None:
    """Its modules import one another (absolutely, so that this test sees them) and nothing else of qkv."""
    modules = sorted(SRC.glob("*.py"))
    assert {m.name for m in modules} >= {"__init__.py", "atomic.py", "errors.py", "outputs.py"}
    imported: set[str] = set()
    for module in modules:
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{module.name}: relative import of {node.module}"
                imported.add(node.module or "")
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    outside = {name for name in imported if name.startswith("qkv") and not name.startswith("qkv.storage.")}
    assert outside <= {"qkv.config"}


def test_one_checkpoint_error_class_everywhere() -> None:
    from qkv import checkpoint
    from qkv.models import bert_files, bert_hf

    assert (
        checkpoint.CheckpointError is bert_hf.CheckpointError is bert_files.CheckpointError is CheckpointError
    )
    assert issubclass(OutputExistsError, CheckpointError) and issubclass(CheckpointError, ValueError)
    assert issubclass(WriteError, OSError)


# ---- atomic files ------------------------------------------------------------------------------------------


def test_write_file_is_atomic_mode_0644_and_leaves_nothing_beside_it(tmp_path: Path) -> None:
    previous = os.umask(0o077)
    try:
        path = storage.write_file(tmp_path / "sub" / "out.txt", "你好\n")
    finally:
        os.umask(previous)
    assert path.read_bytes() == "你好\n".encode()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    storage.write_file(path, b"second")
    assert path.read_bytes() == b"second"
    assert os.listdir(path.parent) == ["out.txt"]


def test_write_file_refuses_an_existing_file_unless_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "user.tsv"
    path.write_text("the user's own data\n")
    before = tree_hashes(tmp_path)
    with pytest.raises(OutputExistsError, match=r"user\.tsv: exists already; .*--out or pass --overwrite"):
        storage.write_file(path, "new", overwrite=False)
    assert tree_hashes(tmp_path) == before
    storage.write_file(path, "new", overwrite=True)
    assert path.read_text() == "new"


def test_write_file_never_writes_over_an_input(tmp_path: Path) -> None:
    data = tmp_path / "corpus.tsv"
    data.write_text("a\tb\n")
    before = tree_hashes(tmp_path)
    with pytest.raises(OutputExistsError, match="corpus.tsv: is also the input"):
        storage.write_file(data, "x", overwrite=True, inputs=[data])
    with pytest.raises(OutputExistsError, match="is a directory"):
        storage.write_file(tmp_path, "x", overwrite=True)
    assert tree_hashes(tmp_path) == before


def test_disk_full_while_writing_a_file_names_it_and_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text("old")

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(WriteError) as error:
        storage.write_file(path, "new" * 1000)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and "No space left" in message and "\n" not in message
    assert error.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["tokenizer.json"]


# ---- where outputs may go ----------------------------------------------------------------------------------

OWNED = {"config.json", "model.safetensors"}


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    """An output directory holding a file qkv wrote and one the user put there."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "notes.txt").write_text("the user's notes")
    return out


def test_a_directory_with_a_users_file_is_refused_naming_it_and_the_flag(user_dir: Path) -> None:
    before = tree_hashes(user_dir)
    with pytest.raises(OutputExistsError) as error:
        storage.write_directory(user_dir, {"config.json": b"{}"}, owned=OWNED)
    assert str(error.value) == (
        f"{user_dir}: exists and holds files qkv did not write (notes.txt); choose another --out or pass "
        "--overwrite"
    )
    assert error.value.foreign == ("notes.txt",)
    assert tree_hashes(user_dir) == before
    assert sorted(os.listdir(user_dir.parent)) == ["out"]  # no temporary left


def test_a_subdirectory_counts_as_not_written_by_qkv(tmp_path: Path) -> None:
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "config.json").write_text("{}")
    with pytest.raises(OutputExistsError, match=r"\(checkpoints\)"):
        storage.check_output_directory(out, owned=OWNED)


def test_overwrite_replaces_a_directory_with_a_users_file(user_dir: Path) -> None:
    storage.write_directory(user_dir, {"config.json": b'{"new": 1}'}, owned=OWNED, overwrite=True)
    assert os.listdir(user_dir) == ["config.json"]


def test_a_directory_qkv_wrote_or_an_empty_one_is_replaced_without_asking(tmp_path: Path) -> None:
    out = tmp_path / "model"
    storage.write_directory(out, {"config.json": b"1", "model.safetensors": b"2"}, owned=OWNED)
    storage.write_directory(out, {"config.json": b"3"}, owned=OWNED)
    assert os.listdir(out) == ["config.json"] and (out / "config.json").read_bytes() == b"3"
    empty = tmp_path / "empty"
    empty.mkdir()
    storage.write_directory(empty, {"a.json": b"{}"})
    assert os.listdir(empty) == ["a.json"]


def test_an_existing_file_is_never_replaced_by_a_directory(tmp_path: Path) -> None:
    out = tmp_path / "model"
    out.write_text("a file")
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError, match="model: exists and is not a directory"):
            storage.write_directory(out, {"config.json": b"{}"}, overwrite=overwrite)
    assert out.read_text() == "a file"


@pytest.mark.parametrize("where", ["same", "parent", "grandparent", "inside-existing"])
def test_an_output_that_is_or_holds_the_input_is_refused_even_with_overwrite(
    tmp_path: Path, where: str
) -> None:
    run = tmp_path / "run"
    model = run / "checkpoints" / "step-1"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "keep").mkdir()
    out = {
        "same": model,
        "parent": run / "checkpoints",
        "grandparent": run,
        "inside-existing": model / "keep",
    }[where]
    before = tree_hashes(tmp_path)
    with pytest.raises(OutputExistsError, match=f"{out.name}: (is also|holds|is part of) the input"):
        storage.write_directory(out, {"config.json": b"{}"}, owned=OWNED, overwrite=True, inputs=[model])
    assert tree_hashes(tmp_path) == before
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(
        ["run", "checkpoints", "step-1", "config.json", "keep"]
    )


def test_a_new_directory_beside_the_input_is_fine(tmp_path: Path) -> None:
    model = tmp_path / "run" / "checkpoints"
    model.mkdir(parents=True)
    storage.write_directory(tmp_path / "run" / "averaged", {"config.json": b"{}"}, inputs=[model])
    assert (tmp_path / "run" / "averaged" / "config.json").is_file()


def test_disk_full_while_replacing_a_directory_keeps_the_old_one(tmp_path: Path) -> None:
    out = tmp_path / "ct2"
    storage.write_directory(out, {"model.bin": b"old"})
    before = tree_hashes(out)

    def fill(temp: Path) -> None:
        (temp / "model.bin").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(WriteError, match=r"ct2: could not write the directory \(No space left on device\)"):
        storage.replace_directory(out, fill, owned={"model.bin"})
    assert tree_hashes(out) == before and os.listdir(tmp_path) == ["ct2"]


def test_replace_directory_syncs_and_sets_modes_of_what_fill_wrote(tmp_path: Path) -> None:
    previous = os.umask(0o077)
    try:
        out = storage.replace_directory(
            tmp_path / "ct2", lambda temp: (temp / "model.bin").write_bytes(b"x"), owned={"model.bin"}
        )
    finally:
        os.umask(previous)
    assert stat.S_IMODE((out / "model.bin").stat().st_mode) == 0o644
    assert stat.S_IMODE(out.stat().st_mode) == 0o755


# ---- reading JSON --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe{}", r"config.json: not UTF-8 text \(byte 0\)"),
        (b'{"a": }', r"config.json:1:7: invalid JSON"),
        (b"[" * 100_000, r"config.json: invalid JSON: nested too deeply"),
        (b'{"a": ' + b"7" * 5000 + b"}", r"config.json: invalid JSON: Exceeds the limit"),
        (b"[1, 2]", r"config.json: expected a JSON object \{...\}, got an array"),
    ],
)
def test_read_json_object_names_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as error:
        storage.read_json_object(path)
    assert "\n" not in str(error.value)


# ---- safetensors headers -------------------------------------------------------------------------------------


def safetensors_with_header(path: Path, header: object, data: bytes = b"\0" * 16) -> Path:
    """A file framed like safetensors around an arbitrary JSON ``header``."""
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return path


GOOD = {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}
BAD_HEADERS = [
    ([GOOD], "not a safetensors file"),
    ({"w": [1, 2]}, "tensor 'w': corrupted header entry"),
    ({"w": {"shape": [2, 2], "data_offsets": [0, 16]}}, "tensor 'w': unknown dtype None"),
    ({"w": {"dtype": ["F32"], "shape": [2, 2], "data_offsets": [0, 16]}}, "tensor 'w': unknown dtype"),
    ({"w": {"dtype": "F32", "data_offsets": [0, 16]}}, "tensor 'w': corrupted header: shape None"),
    ({"w": {"dtype": "F32", "shape": "2x2", "data_offsets": [0, 16]}}, "shape '2x2' is not a list"),
    ({"w": {"dtype": "F32", "shape": [2, -2], "data_offsets": [0, 16]}}, "shape .* is not a list of sizes"),
    ({"w": {"dtype": "F32", "shape": [2, True], "data_offsets": [0, 16]}}, "is not a list of sizes"),
    ({"w": {"dtype": "F32", "shape": [2.0, 2], "data_offsets": [0, 16]}}, "is not a list of sizes"),
    ({"w": {"dtype": "F32", "shape": [2, 2]}}, "data_offsets None is not"),
    ({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [-16, 0]}}, r"data_offsets \[-16, 0\]"),
    ({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [16, 0]}}, r"data_offsets \[16, 0\]"),
    ({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, "16"]}}, "data_offsets"),
    ({"w": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 16]}}, "needs .* bytes but"),
    (
        {
            "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
            "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
        },
        "tensor 'b' starts at byte 8 of the data, expected 16",
    ),
    ({**GOOD, "__metadata__": {"format": 1}}, "__metadata__ must map names to strings"),
    ({**GOOD, "__metadata__": [1]}, "__metadata__ must map names to strings"),
]


@pytest.mark.parametrize(("header", "message"), BAD_HEADERS)
def test_a_header_of_the_wrong_shape_names_the_file(tmp_path: Path, header: object, message: str) -> None:
    path = safetensors_with_header(tmp_path / "model.safetensors", header)
    before = tree_hashes(tmp_path)
    with pytest.raises(CheckpointError, match=f"model.safetensors: .*{message}") as error:
        storage.read_safetensors_header(path)
    assert "\n" not in str(error.value)
    assert tree_hashes(tmp_path) == before


def test_a_pathologically_nested_header_names_the_file(tmp_path: Path) -> None:
    raw = b'{"w": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    path = tmp_path / "model.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw)
    with pytest.raises(
        CheckpointError, match="model.safetensors: corrupted safetensors header.*nested too deeply"
    ):
        storage.read_safetensors_header(path)


def test_a_good_header_reads_as_safetensors_does(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    tensors = {"a": torch.zeros(3, 2, dtype=torch.bfloat16), "b": torch.ones(4, dtype=torch.int64)}
    safetensors.torch.save_file(tensors, str(path))
    entries = storage.read_safetensors_header(path)
    assert {n: (e.shape, e.dtype) for n, e in entries.items()} == {
        "a": ((3, 2), torch.bfloat16),
        "b": ((4,), torch.int64),
    }
