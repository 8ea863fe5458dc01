"""``qkv serve``'s bad command lines: one line on stderr naming what is wrong, exit 2 for what the user
gave (flags, directories, the host and key rule), 1 for what is outside the command (a port in use).
Run in-process (``main([...])``): each case fails before the server would start."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from qkv.cli import main


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("qkv serve: error: "), err
    return lines[0].removeprefix("qkv serve: error: ")


def serve(*argv: str) -> int:
    try:
        return main(["serve", *argv])
    except SystemExit as stopped:  # argparse's own usage errors
        return int(stopped.code or 0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "zh-en=/nonexistent/model"], "--model /nonexistent/model: no such directory"),
        (["--model", "{model}"], "which languages does it translate? add --languages SRC:TGT"),
        (["--model", "{model}", "--languages", "zh-en"], "--languages zh-en: expected SRC:TGT"),
        (["--model", "zh-en={model}", "--model", "zh-en={model}"], "two models are named zh-en"),
        (["--model", "a/b={model}"], "a name is letters, digits"),
        (["--model", "zh-en={model}", "--host", "0.0.0.0"], "--host 0.0.0.0: other machines could reach"),
        (["--model", "zh-en={model}", "--port", "70000"], "--port 70000: ports go up to 65535"),
        (["--model", "zh-en={model}", "--queue-size", "8"], "--queue-size 8 is less than --max-texts 128"),
        (["--model", "zh-en={model}", "--max-batch", "0"], "argument --max-batch: must be >= 1, got 0"),
        (["--model", "zh-en={model}", "--timeout", "nan"], "argument --timeout: must be a finite number"),
        (["--model", "zh-en={model}", "--api-keys", "/nonexistent/keys"], "argument --api-keys"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(
    tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model"  # only checked once every flag is right: never loaded here
    model.mkdir()
    argv = [a.replace("{model}", str(model)) for a in argv]
    assert serve(*argv) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in line, line


def test_a_directory_that_is_no_model_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "zh-en"
    empty.mkdir()
    assert serve("--model", str(empty)) == 2
    assert str(empty) in error_line(capsys)


def test_an_empty_keys_file_is_exit_2(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("# no keys yet\n\n", encoding="utf-8")
    assert serve("--model", f"zh-en={tiny_model_dir}", "--api-keys", str(keys)) == 2
    assert error_line(capsys) == f"--api-keys {keys}: the file has no keys (one per line)"


def test_a_port_in_use_is_one_line_and_exit_1(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert serve("--model", f"zh-en={tiny_model_dir}", "--port", str(port)) == 1
    assert error_line(capsys) == f"cannot listen on 127.0.0.1:{port}: Address already in use"
