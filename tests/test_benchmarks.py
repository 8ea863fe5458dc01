"""The benchmark suite runs end to end at --quick sizes and writes its JSON (a smoke test: no timings checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_suite_prints_every_table_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for title in ("peak matmul rate", "training step", "decoding", "BERT encoder forward"):
        assert title in done.stdout
    result = json.loads(out.read_text())
    assert result["machine"]["device"] == "cpu" and result["machine"]["cores"] >= 1
    sections = result["sections"]
    assert set(sections) == {"peak", "train", "decode", "bert"}
    assert "qkv" in sections["train"]["rows"] and "qkv" in sections["decode"]["rows"]
    qkv_train = sections["train"]["rows"]["qkv"]
    assert qkv_train["tiny_tok_s"] > 0 and 0 < qkv_train["tiny_mfu"]
    # The three decoders run the same weights: greedy outputs agree wherever a baseline ran.
    for system, row in sections["decode"]["rows"].items():
        if system != "qkv":
            assert row["agree"] == 1.0, system


def test_only_rejects_an_unknown_section() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--only", "train,nonsense"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "nonsense" in done.stderr
