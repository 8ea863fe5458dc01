"""`qkv demo` on the command line, on a small slice of the demo corpus: what it prints, and the warning
when its time limit stops training far short of --steps (an undertrained model, seen when another job
kept the CPU busy: 33 of 500 steps and 0/500 right, with nothing saying why)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from qkv import cli
from qkv.data import demo


@pytest.fixture(autouse=True)
def small_corpus(monkeypatch: pytest.MonkeyPatch) -> None:
    # Both the trainer (qkv.train.pipeline) and the demo's held-out translation read demo.splits.
    monkeypatch.setattr(demo, "splits", functools.partial(demo.splits, size=400, held_out=20))


def run_demo(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[str, str]:
    code = cli.main(["demo", "--out", str(tmp_path / "demo"), "--threads", "1", "--quiet", *args])
    assert code == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_demo_warns_when_the_time_limit_leaves_the_model_undertrained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, err = run_demo(tmp_path, capsys, "--steps", "500", "--max-minutes", "0.001")
    steps = int(out.split("trained ")[1].split(" steps")[0])
    assert steps < 0.8 * 500 and "(max_minutes)" in out
    assert "warning: the time limit (--max-minutes 0.001) stopped training at step" in err
    assert f"at step {steps} of 500" in err and "undertrained" in err
    # The rest of the demo still runs: held-out score, headline, heat maps.
    assert "held-out exact match: " in out and "/20 = " in out
    assert "我爱你 -> " in out and (tmp_path / "demo" / "attention.png").is_file()


def test_demo_does_not_warn_when_it_runs_its_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, err = run_demo(tmp_path, capsys, "--steps", "3", "--max-minutes", "5")
    assert "trained 3 steps" in out and "(max_steps)" in out
    assert "warning" not in err


def _digest(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


def test_demo_never_deletes_a_directory_it_did_not_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A training run of the user's (checkpoints/ and all) or a folder with the user's file in it is
    refused, unchanged; only a previous demo run (its marker and its own files) is replaced."""
    run = tmp_path / "my-run"
    (run / "checkpoints" / "step-1").mkdir(parents=True)
    (run / "checkpoints" / "step-1" / "model.safetensors").write_bytes(b"weights")
    (run / "metrics.jsonl").write_text("{}\n")
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    for directory in (run, user):
        before = _digest(directory)
        assert cli.main(["demo", "--out", str(directory), "--quiet"]) == 2
        assert "the demo replaces only its own runs" in capsys.readouterr().err
        assert _digest(directory) == before
    # A demo run with a file added by the user is not the demo's any more.
    out, _ = run_demo(tmp_path, capsys, "--steps", "2")
    (tmp_path / "demo" / "notes.txt").write_text("mine")
    assert cli.main(["demo", "--out", str(tmp_path / "demo"), "--quiet"]) == 2
    assert "notes.txt" in capsys.readouterr().err
    (tmp_path / "demo" / "notes.txt").unlink()
    out, _ = run_demo(tmp_path, capsys, "--steps", "2")
    assert "removing the previous demo run" in out
