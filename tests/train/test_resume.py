"""Exact resume: runs killed (SIGKILL), stopped (SIGTERM, SIGINT) or killed while writing a checkpoint, then
resumed, end bit-identical to an uninterrupted run (the session's reference run, same arguments).

The reference is an independent computation: one process that never stopped. The runs use dropout (the tiny
preset's 0.1), so the dropout masks must be reproduced too, and the same thread count (FINDINGS.md).
"""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest

from qkv import checkpoint
from qkv.models import saved
from tests.train import runs
from tests.train.runs import (
    SAVE_EVERY,
    STEPS,
    assert_bit_identical,
    assert_same_checkpoint,
    assert_same_losses,
    checkpoint_dir,
    latest_step,
    logged_steps,
    step_records,
    tensors,
    train_args,
)


def leftovers(run_dir: Path) -> list[str]:
    """Names a killed writer leaves behind (temporary and old copies: they start with a dot)."""
    folders = (run_dir, run_dir / checkpoint.CHECKPOINTS_DIR)
    return sorted(
        entry.name for folder in folders for entry in folder.iterdir() if entry.name.startswith(".")
    )


def test_reference_run_uses_dropout(reference_run: Path) -> None:
    config = checkpoint.load_json(checkpoint_dir(reference_run, STEPS) / checkpoint.CONFIG_FILE)
    assert config["model"]["dropout"] > 0  # else exactness would not cover the dropout RNG
    state = checkpoint.load_json(checkpoint_dir(reference_run, STEPS) / checkpoint.TRAINER_STATE_FILE)
    assert state["train_config"]["batch_window"] == runs.BATCH_WINDOW
    assert state["epoch"] >= 1  # the runs cross an epoch: both epochs' windows are reproduced
    assert sorted(step_records(reference_run)) == list(range(1, STEPS + 1))


@pytest.mark.parametrize("data", ["text", "prepared"])
def test_sigkill_at_a_random_step_then_resume_is_bit_exact(
    corpus: dict[str, Path],
    prepared_corpus: dict[str, Path],
    reference_run: Path,
    tmp_path: Path,
    data: str,
) -> None:
    # On a prepared corpus (qkv prepare) the run reads its pairs from the shards; it must still end
    # bit-identical to the reference run, which read the same pairs from the TSV in memory.
    if data == "prepared":
        corpus = prepared_corpus
    out = tmp_path / "run"
    kill_after = random.Random().randint(SAVE_EVERY + 1, STEPS - 2 * SAVE_EVERY)
    # The writer blocks after committing the last checkpoint but one (step 35), so the kill surely lands
    # before the run ends.
    last_but_one = STEPS // SAVE_EVERY - 1
    process = runs.start(
        runs.child("pointer_replaced", last_but_one, "block", train_args(corpus, out, steps=STEPS))
    )
    runs.wait_until(
        lambda: logged_steps(out) >= kill_after and latest_step(out) is not None,
        process,
        f"step {kill_after} and a checkpoint",
    )
    process.send_signal(signal.SIGKILL)
    runs.finish(process, expect=-signal.SIGKILL)
    resumed_from = latest_step(out)
    killed_at = logged_steps(out)
    assert resumed_from is not None and resumed_from < STEPS, (kill_after, killed_at, resumed_from)

    runs.train_here(train_args(corpus, out, steps=STEPS, resume=True))

    where = f"killed after step {killed_at} (aimed at {kill_after}), resumed from step {resumed_from}"
    final, want = checkpoint_dir(out, STEPS), checkpoint_dir(reference_run, STEPS)
    assert_same_checkpoint(final, want)
    # The whole trainer state: position, counts, validation history and best loss, configs (the data's
    # path aside: the prepared run names its directory).
    got_state = checkpoint.load_json(final / checkpoint.TRAINER_STATE_FILE)
    want_state = checkpoint.load_json(want / checkpoint.TRAINER_STATE_FILE)
    if data == "prepared":
        assert got_state.pop("data_config")["train"] == str(prepared_corpus["train"])
        want_state.pop("data_config")
    assert got_state == want_state, where
    assert_bit_identical(
        tensors(out / "best" / checkpoint.MODEL_FILE),
        tensors(reference_run / "best" / checkpoint.MODEL_FILE),
        f"best model, {where}",
    )
    # Every step's loss and learning rate, those logged after the resume point by the resumed process too.
    assert_same_losses(out, reference_run, range(1, STEPS + 1))
    resumed_lines = [r["step"] for r in runs.metrics(out) if "loss" in r][killed_at:]
    assert resumed_lines == list(range(resumed_from + 1, STEPS + 1)), where


@pytest.mark.parametrize(
    ("signum", "exit_code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"]
)
def test_sigterm_and_sigint_save_at_the_next_step_boundary(
    corpus: dict[str, Path], reference_run: Path, tmp_path: Path, signum: int, exit_code: int
) -> None:
    out, go = tmp_path / "run", tmp_path / "go"
    # The signal arrives while the first checkpoint (step 5) is being committed: the step in flight is
    # step 6, and the run must save and stop when it ends.
    process = runs.start(runs.child("pointer_replaced", 1, "wait", train_args(corpus, out, steps=STEPS), go))
    runs.wait_until(lambda: latest_step(out) == SAVE_EVERY, process, "the first checkpoint")
    process.send_signal(signum)
    go.touch()
    stopped_at = SAVE_EVERY + 1
    message = runs.finish(process, expect=exit_code)
    name = signal.Signals(signum).name
    assert f"{name} at step {stopped_at}; checkpoint saved to {checkpoint_dir(out, stopped_at)}" in message
    assert f"qkv train --resume {out}" in message

    assert latest_step(out) == stopped_at
    assert logged_steps(out) == stopped_at
    loaded = saved.load(checkpoint_dir(out, stopped_at))
    assert_bit_identical(
        loaded.model.state_dict(),
        tensors(checkpoint_dir(out, stopped_at) / checkpoint.MODEL_FILE),
        "loaded model",
    )
    state = checkpoint.load_json(checkpoint_dir(out, stopped_at) / checkpoint.TRAINER_STATE_FILE)
    assert state["step"] == stopped_at

    resume_to = 2 * SAVE_EVERY
    runs.train_here(train_args(corpus, out, steps=resume_to, resume=True))
    assert_same_checkpoint(checkpoint_dir(out, resume_to), checkpoint_dir(reference_run, resume_to))
    assert_same_losses(out, reference_run, range(1, resume_to + 1))


# (stage of the writer, its occurrence, with validation): the second checkpoint (step 10) half-written;
# written but LATEST not yet switched to it (the resumed run writes step 10 again, over it); the second
# best/ (step 10, with validation) between its two renames, when no best/ exists.
KILL_STAGES = [
    ("partial:optimizer.safetensors", 2, False),
    ("pointer_written", 2, False),
    ("old_moved", 1, True),
]


@pytest.mark.parametrize(("stage", "occurrence", "valid"), KILL_STAGES, ids=[s for s, _, _ in KILL_STAGES])
def test_kill_while_writing_a_checkpoint_keeps_the_previous_one(
    corpus: dict[str, Path], reference_run: Path, tmp_path: Path, stage: str, occurrence: int, valid: bool
) -> None:
    out = tmp_path / "run"
    steps = 3 * SAVE_EVERY
    args = train_args(corpus, out, steps=steps, valid=valid)
    runs.run(runs.child(stage, occurrence, "kill", args), expect=-signal.SIGKILL)
    assert leftovers(out), "the killed writer left nothing behind: was it killed in the middle?"

    previous = checkpoint.latest_checkpoint(out)
    assert previous == checkpoint_dir(out, SAVE_EVERY)
    loaded = saved.load(previous)
    assert_bit_identical(
        loaded.model.state_dict(),
        tensors(checkpoint_dir(reference_run, SAVE_EVERY) / checkpoint.MODEL_FILE),
        f"{previous} against the reference",
    )
    if stage == "old_moved":
        # best/ was renamed away and its successor not yet renamed in: reading it restores the old copy.
        assert not (out / "best").exists()
        assert_bit_identical(saved.load(out / "best").model.state_dict(), loaded.model.state_dict(), "best/")

    runs.train_here(train_args(corpus, out, steps=steps, valid=valid, resume=True))
    assert leftovers(out) == [], "stale temporary files were not cleaned"
    assert_same_checkpoint(checkpoint_dir(out, steps), checkpoint_dir(reference_run, steps))
    assert_same_losses(out, reference_run, range(1, steps + 1))


def test_kill_during_the_first_checkpoint_then_start_afresh(
    corpus: dict[str, Path], reference_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    steps = 2 * SAVE_EVERY
    args = train_args(corpus, out, steps=steps, valid=False)
    runs.run(runs.child("tmp_created", 1, "kill", args), expect=-signal.SIGKILL)
    assert leftovers(out) and checkpoint.latest_checkpoint(out) is None

    message = runs.train_here(train_args(corpus, out, steps=steps, valid=False, resume=True), expect=2)
    assert f"{out}: no checkpoint to resume from" in message
    # No checkpoint was ever committed, so this is no run yet: starting afresh is allowed and cleans up.
    runs.train_here(args)
    assert leftovers(out) == [], "stale temporary files were not cleaned"
    assert_same_checkpoint(checkpoint_dir(out, steps), checkpoint_dir(reference_run, steps))
