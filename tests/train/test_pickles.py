"""Pickles where a checkpoint is expected are refused by name, and their payload never runs; src/ never calls
torch.load without weights_only=True (it does not call it at all)."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest
import torch

import qkv
from qkv import checkpoint
from qkv.checkpoint import CheckpointError
from qkv.models import saved
from tests.train import runs
from tests.train.runs import STEPS, checkpoint_dir

SRC = Path(qkv.__file__).parent


class Payload:
    """Unpickling this writes a marker file: code run by the unpickler."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').write('payload ran')",)


def pickle_checkpoint(reference_run: Path, tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A run directory whose latest checkpoint holds a pickle ``name`` instead of model.safetensors; and
    the marker file its payload would write."""
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    directory = checkpoint.latest_checkpoint(run)
    assert directory == checkpoint_dir(run, STEPS)
    marker = tmp_path / "payload-ran"
    (directory / checkpoint.MODEL_FILE).unlink()
    torch.save({"encoder.weight": Payload(marker)}, directory / name)
    shutil.rmtree(run / "best")
    return run, marker


def test_the_payload_is_real(tmp_path: Path) -> None:
    """Control: unpickled unsafely, the payload does run (so "it never ran" below means something)."""
    marker = tmp_path / "control"
    torch.save(Payload(marker), tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)  # noqa: TID251 - the control itself
    assert marker.read_text() == "payload ran"


@pytest.mark.parametrize("name", ["model.pt", "model.bin", checkpoint.MODEL_FILE])
def test_a_pickle_in_a_checkpoint_is_refused_and_never_runs(
    reference_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(
        "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1"
    )  # turns torch.load without weights_only unsafe
    run, marker = pickle_checkpoint(reference_run, tmp_path, name)
    directory = checkpoint_dir(run, STEPS)
    expected = "safetensors" if name == checkpoint.MODEL_FILE else "pickle"
    for path in (
        directory,
        run,
    ):  # a model directory, and a run directory (resolved to the latest checkpoint)
        with pytest.raises(CheckpointError, match=expected) as error:
            saved.load(path)
        assert str(directory / name) in str(
            error.value
        ) or f"{directory}: holds a pickle file ({name})" in str(error.value)
        assert "arbitrary code" in str(error.value)
    # The command line refuses it as well, with the same message and exit code 2.
    output = runs.train_here(["--resume", str(run), "--max-steps", str(STEPS + 5), "--quiet"], expect=2)
    assert name in output and "arbitrary code" in output
    assert not marker.exists()


def call_text(source: str, open_paren: int) -> str:
    """The text of a call from its "(" to the matching ")" (or the end of the source)."""
    depth = 0
    for index in range(open_paren, len(source)):
        depth += {"(": 1, ")": -1}.get(source[index], 0)
        if depth == 0:
            return source[open_paren : index + 1]
    return source[open_paren:]


def test_src_never_calls_torch_load_without_weights_only() -> None:
    calls, unsafe = [], []
    for file in sorted(SRC.rglob("*.py")):
        source = file.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in (
                "torch.load",
                "torch.serialization.load",
            ):
                calls.append(f"{file}:{node.lineno}: {ast.unparse(node)}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch"):
                if any(alias.name == "load" for alias in node.names):
                    calls.append(f"{file}:{node.lineno}: from {node.module} import load")
        # The text as well (a call built in a string, a hint printed for the user): always weights_only=True.
        for match in re.finditer(r"torch\.load\(", source):
            if "weights_only=True" not in call_text(source, match.end() - 1):
                unsafe.append(f"{file}:{source.count(chr(10), 0, match.start()) + 1}")
    assert calls == [], "torch.load is called in src/: load checkpoints with qkv.checkpoint (safetensors)"
    assert unsafe == [], "torch.load( appears without weights_only=True"
