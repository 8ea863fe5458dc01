"""Helpers for tests that run ``qkv train`` and compare what the runs left on disk.

The reference run and the runs that are killed or signalled run in subprocesses; resumed runs run in this
process (``train_here``), which spares the seconds a fresh process needs to import torch: they still
resume in another process than the one that wrote the checkpoint, and must match the reference's bits.

Every run uses the same thread count (one: ``--threads 1`` and OMP_NUM_THREADS=1, as torchrun sets it),
because the bits of a CPU run depend on it (FINDINGS.md), and the same small setting: the tiny preset
(dropout 0.1) on a few hundred pairs of the demo corpus, a checkpoint every 5 steps, a log line every step.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor

from qkv import checkpoint, cli

PYTHON = sys.executable
CHILD = str(Path(__file__).with_name("child.py"))
HANG_GUARD_S = 120  # a run that takes longer has hung; it is no time limit on the code under test
STEPS = 40  # the reference run's length
SAVE_EVERY = 5


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


# Pairs batched together: the 600 training pairs are dealt into 3 windows each epoch, so the resumed runs
# cover windowed batching (a corpus larger than one window) from the text file and the prepared shards.
BATCH_WINDOW = 200


def train_args(
    corpus: dict[str, Path], out: Path, *, steps: int, valid: bool = True, resume: bool = False
) -> list[str]:
    """``qkv train`` arguments of the runs compared with the reference run (all but the stop and the run)."""
    args = [
        "--data", str(corpus["train"]), "--src-col", "2", "--tgt-col", "1",
        "--preset", "tiny", "--vocab-size", "300", "--max-tokens", "256",
        "--lr", "2e-3", "--warmup", "10", "--seed", "3",
        "--save-every", str(SAVE_EVERY), "--keep-last", "100", "--log-every", "1",
        "--max-steps", str(steps), "--threads", "1", "--quiet",
        "--batch-window", str(BATCH_WINDOW),
    ]  # fmt: skip
    if valid:
        args += ["--valid", str(corpus["valid"]), "--valid-every", "5"]
    args += ["--resume" if resume else "--out", str(out)]
    return args


def qkv_train(args: Sequence[str]) -> list[str]:
    return [PYTHON, "-m", "qkv", "train", *args]


def child(stage: str, occurrence: int, action: str, args: Sequence[str], go: Path | None = None) -> list[str]:
    """A ``qkv train`` command that stops at ``stage`` of the checkpoint writer (see child.py)."""
    return [PYTHON, CHILD, stage, str(occurrence), action, *([str(go)] if go else []), "--", *args]


def run(command: Sequence[str], *, expect: int = 0) -> subprocess.CompletedProcess[str]:
    """Run ``command`` to its end; fail with its output unless it exits with ``expect``."""
    done = subprocess.run(command, env=env(), capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.returncode == expect, (
        f"exit {done.returncode}, expected {expect}: {' '.join(command)}\n{done.stdout}\n{done.stderr}"
    )
    return done


def train_here(args: Sequence[str], *, expect: int = 0) -> str:
    """Run ``qkv train ARGS`` in this process; fail unless it exits with ``expect``; return its output.

    The thread count it sets (``--threads``) is put back afterwards.
    """
    threads = torch.get_num_threads()
    output = io.StringIO()
    try:
        with redirect_stdout(output), redirect_stderr(output):
            code = cli.main(["train", *args])
    finally:
        torch.set_num_threads(threads)
    assert code == expect, f"exit {code}, expected {expect}: qkv train {' '.join(args)}\n{output.getvalue()}"
    return output.getvalue()


def start(command: Sequence[str], **extra_env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command, env={**env(), **extra_env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_until(condition: Callable[[], bool], process: subprocess.Popen[str], what: str) -> None:
    """Poll ``condition`` while ``process`` runs; fail (with its output) if it ends first or hangs."""
    deadline = time.monotonic() + HANG_GUARD_S
    while not condition():
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"the run ended (exit {process.returncode}) before {what}\n{out}\n{err}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.005)


def finish(process: subprocess.Popen[str], *, expect: int) -> str:
    """Wait for ``process``; fail unless it exits with ``expect``; return its stderr."""
    try:
        out, err = process.communicate(timeout=HANG_GUARD_S)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        out, err = process.communicate()
        raise AssertionError(f"the run did not end\n{out}\n{err}") from None
    assert process.returncode == expect, f"exit {process.returncode}, expected {expect}\n{out}\n{err}"
    return err


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    # Split on "\n" only, and leave out the text after the last one: a line the writer is still writing.
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]
    return [json.loads(line) for line in lines if line.strip()]


def step_records(run_dir: Path) -> dict[int, dict[str, Any]]:
    """Training log lines by step; where a step was logged twice (before a kill and after the resume),
    the later line."""
    return {record["step"]: record for record in metrics(run_dir) if "loss" in record}


def logged_steps(run_dir: Path) -> int:
    return max(step_records(run_dir), default=0)


def latest_step(run_dir: Path) -> int | None:
    latest = checkpoint.latest_checkpoint(run_dir)
    return None if latest is None else int(latest.name.removeprefix("step-"))


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / checkpoint.CHECKPOINTS_DIR / f"step-{step:08d}"


def tensors(path: Path) -> dict[str, Tensor]:
    return safetensors.torch.load_file(str(path))


def assert_bit_identical(a: dict[str, Tensor], b: dict[str, Tensor], what: str) -> None:
    assert a.keys() == b.keys(), f"{what}: different tensors {sorted(a.keys() ^ b.keys())}"
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), f"{what}: {name} differs"


def assert_same_checkpoint(got: Path, want: Path) -> None:
    """Model and optimizer tensors bit-identical, and the same position in the data and the same counts."""
    for file in (checkpoint.MODEL_FILE, checkpoint.OPTIMIZER_FILE):
        assert_bit_identical(tensors(got / file), tensors(want / file), f"{got / file} vs {want / file}")
    got_state = checkpoint.load_json(got / checkpoint.TRAINER_STATE_FILE)
    want_state = checkpoint.load_json(want / checkpoint.TRAINER_STATE_FILE)
    for key in ("step", "epoch", "batch_in_epoch", "tokens", "skipped_steps", "optimizer"):
        assert got_state[key] == want_state[key], f"{got}: trainer state {key!r} differs"


def assert_same_losses(got: Path, want: Path, steps: range) -> None:
    """The per-step loss, NLL and learning rate of the log are exactly equal over ``steps``."""
    got_records, want_records = step_records(got), step_records(want)
    for step in steps:
        for key in ("loss", "nll", "lr", "epoch"):
            assert got_records[step][key] == want_records[step][key], f"step {step}: {key} differs"
