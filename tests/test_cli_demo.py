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
