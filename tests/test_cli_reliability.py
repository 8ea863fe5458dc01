"""Every bad input a user can give the CLI ends with one line on stderr naming what and where, and a non-zero
exit: never a traceback, never exit 0 with garbage, nothing on disk changed (RELIABILITY.md, promise 16).

Flag values are checked by argparse as they are parsed, so most cases run in-process (`main([...])`); the
closed pipe, a full disk and the outputs that must stay untouched run `python -m qkv` as a user would.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

import pytest
import torch

from qkv import checkpoint
from qkv.cli import build_parser, main
from qkv.cli import flag_types as types
from qkv.cli import params as params_command
from qkv.cli.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OUTPUT_CLOSED
from tests.test_cli_translate import save_tiny_model

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
ENV.pop("QKV_DEBUG", None)
HANG_GUARD_S = 120  # a command that takes longer has hung


def qkv(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "qkv", *args],
        input=stdin,
        capture_output=True,
        env=ENV,
        timeout=HANG_GUARD_S,
        check=False,
    )
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


def snapshot(*roots: Path) -> dict[str, str]:
    """Every entry under ``roots``: a file's sha256, or "dir"; equal snapshots mean nothing changed."""
    entries = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            entries[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return entries


def error_line(stderr: str, command: str) -> str:
    """The one error line: the last line of stderr, and the only one that says error."""
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr, stderr
    assert lines and lines[-1].startswith(f"qkv {command}: error: "), stderr
    assert sum("error" in line for line in lines) == 1, stderr
    return lines[-1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model") / "m")


# ---- flags, checked as they are parsed ----------------------------------------------------------------


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    found = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(found.choices)


def test_every_number_a_flag_takes_is_checked() -> None:
    checked = {
        types.positive_int,
        types.non_negative_int,
        types.seed,
        types.positive_float,
        types.non_negative_float,
        types.fraction,
    }
    for name, parser in subcommands().items():
        for action in parser._actions:
            assert action.type not in (int, float), f"qkv {name} {action.option_strings}: unchecked number"
            if isinstance(action.default, int | float) and not isinstance(action.default, bool):
                assert action.type in checked, f"qkv {name} {action.option_strings}"


def test_every_path_a_flag_takes_is_checked() -> None:
    for name, parser in subcommands().items():
        for action in parser._actions:
            if action.metavar in ("FILE", "DIR") and action.dest != "resume":  # --resume says it itself
                assert action.type is not None, f"qkv {name} {action.option_strings}: unchecked path"


FLAG_CASES = [
    ("translate", "--beam", "0", "must be >= 1, got 0"),
    ("translate", "--beam", "-1", "must be >= 1, got -1"),
    ("translate", "--beam", "two", "expected a whole number, got 'two'"),
    ("translate", "--batch-size", "0", "must be >= 1, got 0"),
    ("translate", "--alpha", "nan", "must be a finite number, got nan"),
    ("translate", "--alpha", "-1", "must be >= 0, got -1"),
    ("translate", "--max-len-a", "inf", "must be a finite number, got inf"),
    ("translate", "--max-len-b", "-1", "must be >= 0, got -1"),
    ("translate", "--iterations", "0", "must be >= 1, got 0"),
    ("translate", "--length-beam", "0", "must be >= 1, got 0"),
    ("translate", "--device", "cuda:abc", "expected cpu, cuda, cuda:N or auto, got 'cuda:abc'"),
    ("translate", "--device", "gpu", "expected cpu, cuda, cuda:N or auto, got 'gpu'"),
    ("evaluate", "--src-col", "0", "must be >= 1, got 0"),
    ("evaluate", "--beam", "0", "must be >= 1, got 0"),
    ("attention", "--layers", "-1", "must be >= 0, got -1"),
    ("attention", "--heads", "-1", "must be >= 0, got -1"),
    ("attention", "--kinds", "encoder,self", "unknown kind 'self'"),
    ("attention", "--out", "heads.txt", "heads.txt: end an image file name in .png, .pdf or .svg"),
    ("train", "--lr", "nan", "must be a finite number, got nan"),
    ("train", "--lr", "inf", "must be a finite number, got inf"),
    ("train", "--lr", "0", "must be > 0, got 0"),
    ("train", "--dropout", "1.5", "must be in [0, 1), got 1.5"),
    ("train", "--dropout", "1", "must be in [0, 1), got 1"),
    ("train", "--dropout", "-0.1", "must be in [0, 1), got -0.1"),
    ("train", "--label-smoothing", "1", "must be in [0, 1), got 1"),
    ("train", "--max-minutes", "-1", "must be > 0, got -1"),
    ("train", "--max-minutes", "nan", "must be a finite number, got nan"),
    ("train", "--threads", "0", "must be >= 1, got 0"),
    ("train", "--vocab-size", "0", "must be >= 1, got 0"),
    ("train", "--max-tokens", "0", "must be >= 1, got 0"),
    ("train", "--accumulate", "0", "must be >= 1, got 0"),
    ("train", "--warmup", "-1", "must be >= 0, got -1"),
    ("train", "--weight-decay", "-1", "must be >= 0, got -1"),
    ("train", "--clip-norm", "nan", "must be a finite number, got nan"),
    ("train", "--max-bad-steps", "-1", "must be >= 0, got -1"),
    ("train", "--max-steps", "0", "must be >= 1, got 0"),
    ("train", "--max-epochs", "0", "must be >= 1, got 0"),
    ("train", "--seed", "-1", "must be >= 0, got -1"),
    ("train", "--seed", str(2**63), f"must be <= {2**63 - 1}, got {2**63}"),
    ("train", "--save-every", "0", "must be >= 1, got 0"),
    ("train", "--keep-last", "0", "must be >= 1, got 0"),
    ("train", "--valid-every", "0", "must be >= 1, got 0"),
    ("train", "--patience", "0", "must be >= 1, got 0"),
    ("train", "--valid-bleu", "-1", "must be >= 0, got -1"),
    ("train", "--log-every", "0", "must be >= 1, got 0"),
    ("train", "--d-model", "0", "must be >= 1, got 0"),
    ("train", "--heads", "0", "must be >= 1, got 0"),
    ("train", "--d-ff", "0", "must be >= 1, got 0"),
    ("train", "--layers", "0", "must be >= 1, got 0"),
    ("train", "--encoder-layers", "0", "must be >= 1, got 0"),
    ("train", "--decoder-layers", "0", "must be >= 1, got 0"),
    ("train", "--max-positions", "0", "must be >= 1, got 0"),
    ("train", "--src-col", "0", "must be >= 1, got 0"),
    ("train", "--max-chars", "0", "must be >= 1, got 0"),
    ("train", "--length-weight", "-1", "must be >= 0, got -1"),
    ("train", "--device", "gpu", "expected cpu, cuda, cuda:N or auto, got 'gpu'"),
    ("average", "--last", "0", "must be >= 1, got 0"),
    ("average", "--last", "-1", "must be >= 1, got -1"),
    ("params", "--vocab", "0", "must be >= 1, got 0"),
    ("params", "--tgt-vocab", "-5", "must be >= 1, got -5"),
    ("embed", "--batch-size", "0", "must be >= 1, got 0"),
    ("finetune", "--lr", "inf", "must be a finite number, got inf"),
    ("finetune", "--label-col", "0", "must be >= 1, got 0"),
    ("finetune", "--max-tokens", "0", "must be >= 1, got 0"),
    ("finetune", "--warmup", "-1", "must be >= 0, got -1"),
    ("finetune", "--save-every", "0", "must be >= 1, got 0"),
    ("distill", "--beam", "0", "must be >= 1, got 0"),
    ("distill", "--batch-size", "0", "must be >= 1, got 0"),
    ("demo", "--steps", "0", "must be >= 1, got 0"),
    ("demo", "--max-minutes", "-1", "must be > 0, got -1"),
    ("demo", "--threads", "0", "must be >= 1, got 0"),
]


@pytest.mark.parametrize(("command", "flag", "value", "message"), FLAG_CASES)
def test_a_bad_flag_value_is_one_line_and_exit_2(
    command: str, flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main([command, f"{flag}={value}"])  # `=`: a negative number is a value, not an option
    assert done.value.code == EXIT_BAD_INPUT
    line = error_line(capsys.readouterr().err, command)
    assert line.startswith(f"qkv {command}: error: argument {flag}: {message}"), line


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_a_cuda_device_where_there_is_none_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    for device in ("cuda", "cuda:1"):
        with pytest.raises(SystemExit) as done:
            main(["translate", "--device", device, "x"])
        assert done.value.code == EXIT_BAD_INPUT
        line = error_line(capsys.readouterr().err, "translate")
        assert line.endswith(
            f"argument --device: {device}: no CUDA device is available here; use --device cpu"
        )


# ---- paths, checked before any work -------------------------------------------------------------------


def test_a_directory_where_a_file_is_expected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    for argv in (
        ["train", "--data", str(folder)],
        ["train", "--valid", str(folder)],
        ["evaluate", "--data", str(folder)],
        ["distill", "--data", str(folder)],
        ["finetune", "--data", str(folder)],
        ["evaluate", "--output", str(folder)],
        ["distill", "--out", str(folder)],
    ):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == EXIT_BAD_INPUT
        line = error_line(capsys.readouterr().err, argv[0])
        assert line.startswith(f"qkv {argv[0]}: error: argument {argv[1]}: {folder} is a directory"), line


def test_a_file_where_a_directory_is_expected_changes_nothing(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = tmp_path / "notes.txt"
    mine.write_text("the user's own notes\n", encoding="utf-8")
    before = snapshot(tmp_path, model_dir)
    for argv in (
        ["train", "--out", str(mine), "--max-steps", "1"],
        ["train", "--out", str(mine / "run")],
        ["average", "--run", str(model_dir), "--out", str(mine)],
        ["export", "--model", str(model_dir), "--format", "marian", "--out", str(mine)],
        ["finetune", "--out", str(mine)],
        ["demo", "--out", str(mine)],
        ["translate", "--model", str(mine), "x"],
    ):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == EXIT_BAD_INPUT
        line = error_line(capsys.readouterr().err, argv[0])
        assert f"{mine}" in line and ("is a file" in line), line
    assert snapshot(tmp_path, model_dir) == before


def test_a_missing_input_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.tsv"
    with pytest.raises(SystemExit):
        main(["evaluate", "--data", str(missing)])
    assert error_line(capsys.readouterr().err, "evaluate").endswith(
        f"argument --data: {missing}: no such file"
    )


# ---- what a command raises: one line, an exit code, QKV_DEBUG for the traceback -------------------------


@pytest.mark.parametrize(
    ("raised", "code", "message"),
    [
        (
            ValueError("a.tsv:3: expected 2 columns,\ngot 1"),
            EXIT_BAD_INPUT,
            "a.tsv:3: expected 2 columns, got 1",
        ),
        (
            OSError(errno.ENOSPC, "No space left on device", "out/x"),
            EXIT_FAILED,
            "out/x: No space left on device",
        ),
        (PermissionError(errno.EACCES, "Permission denied", "out"), EXIT_FAILED, "out: Permission denied"),
        (RuntimeError("shape mismatch"), EXIT_FAILED, "internal error, RuntimeError: shape mismatch"),
    ],
)
def test_what_a_command_raises_becomes_one_line(
    raised: Exception,
    code: int,
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def fail(args: argparse.Namespace) -> int:
        raise raised

    monkeypatch.delenv("QKV_DEBUG", raising=False)
    monkeypatch.setattr(params_command, "cmd_params", fail)
    assert main(["params"]) == code
    line = error_line(capsys.readouterr().err, "params")
    assert line.startswith(f"qkv params: error: {message}"), line
    if code == EXIT_FAILED and isinstance(raised, RuntimeError):
        assert "QKV_DEBUG=1" in line
    monkeypatch.setenv("QKV_DEBUG", "1")  # for developers: the exception itself, with its traceback
    with pytest.raises(type(raised)):
        main(["params"])


def test_help_documents_the_exit_codes_and_qkv_debug(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "exit codes:" in text and "QKV_DEBUG=1" in text and "141" in text


def test_a_closed_output_pipe_ends_quietly(model_dir: Path) -> None:
    """`qkv translate < many | head -1`: the reader goes away after one line."""
    command = [sys.executable, "-m", "qkv", "translate", "--model", str(model_dir), "--beam", "1"]
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV
    )
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None

    def feed(pipe: IO[bytes]) -> None:
        try:
            pipe.write("我爱你\n".encode() * 20_000)  # far more output than a pipe buffers
            pipe.close()
        except BrokenPipeError:  # qkv stopped reading: what this test wants
            pass

    writer = threading.Thread(target=feed, args=(process.stdin,))
    writer.start()
    first = process.stdout.readline()
    process.stdout.close()
    stderr = process.stderr.read().decode()
    process.wait(timeout=HANG_GUARD_S)
    writer.join()
    assert first.endswith(b"\n")
    assert process.returncode == EXIT_OUTPUT_CLOSED, stderr
    assert stderr == ""  # no traceback, no "Exception ignored ... BrokenPipeError" at exit


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full, whose writes fail with ENOSPC")
def test_a_full_disk_is_one_line_and_exit_1(model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "test.tsv"
    data.write_text("我爱你\tI love you\n", encoding="utf-8")
    done = qkv("evaluate", "--model", str(model_dir), "--data", str(data), "--beam", "1", "--quiet",
               "--output", "/dev/full")  # fmt: skip
    assert done.returncode == EXIT_FAILED
    assert error_line(done.stderr, "evaluate") == "qkv evaluate: error: /dev/full: No space left on device"


# ---- outputs that hold the input or what qkv did not write --------------------------------------------


@pytest.fixture
def run_dir(model_dir: Path, tmp_path: Path) -> Path:
    """A run directory with two checkpoints of the tiny model."""
    run = tmp_path / "run"
    tensors = checkpoint.load_tensors(model_dir / checkpoint.MODEL_FILE)
    config = checkpoint.load_json(model_dir / checkpoint.CONFIG_FILE)
    tokenizer = (model_dir / "tokenizer.json").read_text(encoding="utf-8")
    for step in (1, 2):
        checkpoint.commit_checkpoint(run, f"step-{step:08d}", tensors={checkpoint.MODEL_FILE: tensors},
                                     json={checkpoint.CONFIG_FILE: config}, text={"tokenizer.json": tokenizer})  # fmt: skip
    return run


def test_average_into_its_own_run_is_refused(run_dir: Path) -> None:
    before = snapshot(run_dir)
    done = qkv("average", "--run", str(run_dir), "--last", "1", "--out", str(run_dir))
    assert done.returncode == EXIT_BAD_INPUT
    assert str(run_dir) in error_line(done.stderr, "average")
    assert snapshot(run_dir) == before


def test_export_into_a_directory_of_the_users_files_is_refused(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "d"
    out.mkdir()
    (out / "thesis.tex").write_text("\\documentclass{article}\n", encoding="utf-8")
    before = snapshot(out, model_dir)
    done = qkv("export", "--model", str(model_dir), "--format", "marian", "--out", str(out))
    assert done.returncode == EXIT_BAD_INPUT
    line = error_line(done.stderr, "export")
    assert str(out) in line and "--overwrite" in line
    assert snapshot(out, model_dir) == before
