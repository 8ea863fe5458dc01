"""qkv.train.run_log: what a run reports. Records go to metrics.jsonl as written (read back with json),
only rank 0 writes, and progress=False keeps the console quiet."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qkv.train.run_log import RunLog


def test_records_are_appended_to_metrics_jsonl_one_a_line(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"  # created by the first record
    log = RunLog(run_dir, rank=0, progress=False)
    records = [{"step": 1, "loss": 2.5, "lr": 1e-4}, {"step": 2, "valid_nll": 1.25, "note": "中文"}]
    for record in records:
        log.write(record)
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == records


def test_only_rank_0_writes(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "run", rank=1, progress=True)
    log.write({"step": 1, "loss": 2.5})
    log.validation({"step": 1, "valid_nll": 2.0})
    assert not (tmp_path / "run").exists()
    assert log.progress_bar(10, initial=0).disable


def test_a_validation_is_one_console_line_unless_quiet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    RunLog(tmp_path / "quiet", rank=0, progress=False).validation({"step": 5, "valid_nll": 1.234567})
    assert capsys.readouterr().out == ""
    RunLog(tmp_path / "shown", rank=0, progress=True).validation({"step": 5, "valid_nll": 1.234567})
    assert capsys.readouterr().out == "step 5  valid_nll 1.235\n"
    assert (tmp_path / "quiet" / "metrics.jsonl").read_text() == (
        tmp_path / "shown" / "metrics.jsonl"
    ).read_text()
