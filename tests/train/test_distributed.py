"""Two processes under torchrun (gloo) equal one process with the same global batch (--accumulate 2).

Rank r reads batches r, r+2, ... of the epoch; one process accumulating 2 batches reads the same pairs per
step, and the loss is normalised by the global target-token count, so the updates agree. Validation, the
best model and early stopping (rank 0 decides, every rank follows) must agree as well.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch

from qkv import checkpoint
from tests.train import runs
from tests.train.runs import (
    SAVE_EVERY,
    assert_same_checkpoint,
    assert_same_losses,
    checkpoint_dir,
    latest_step,
    step_records,
    tensors,
    train_args,
)

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
STEPS = 10
PARAMETER_ATOL = 1e-5  # the tolerance; fp32 sums in another order differ by far less
PATIENCE = 3


def evals_since_best(nll: list[float]) -> int:
    """What the early-stopping counter must hold after these validations (an independent recount)."""
    best, since = float("inf"), 0
    for value in nll:
        best, since = (value, 0) if value < best else (best, since + 1)
    return since


def test_two_processes_equal_one_with_the_same_global_batch(corpus: dict[str, Path], tmp_path: Path) -> None:
    # No dropout (ranks draw different masks); a constant, large learning rate so that the weights move
    # far and the validation loss rises now and then, which exercises the early-stopping counter.
    args = [
        "--data", str(corpus["train"]), "--valid", str(corpus["valid"]), "--src-col", "2", "--tgt-col", "1",
        "--preset", "tiny", "--dropout", "0", "--vocab-size", "300", "--max-tokens", "256", "--seed", "3",
        "--schedule", "constant", "--warmup", "0", "--lr", "0.03", "--max-steps", str(STEPS),
        "--valid-every", "1", "--patience", str(PATIENCE), "--save-every", "5", "--keep-last", "10",
        "--log-every", "1", "--quiet",
    ]  # fmt: skip
    two, one = tmp_path / "two", tmp_path / "one"
    runs.run([TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "qkv", "train", *args, "--out", str(two)])
    runs.train_here([*args, "--accumulate", "2", "--threads", "1", "--out", str(one)])

    one_state = checkpoint.load_json(checkpoint.latest_checkpoint(one) / checkpoint.TRAINER_STATE_FILE)
    two_state = checkpoint.load_json(checkpoint.latest_checkpoint(two) / checkpoint.TRAINER_STATE_FILE)
    assert (two_state["world_size"], one_state["world_size"]) == (2, 1)
    for key in ("step", "epoch", "tokens", "evals_without_improvement"):
        assert two_state[key] == one_state[key], key
    assert 2 * two_state["batch_in_epoch"] == one_state["batch_in_epoch"]  # counted in each rank's shard
    nll = [record["valid_nll"] for record in one_state["history"]]
    assert one_state["evals_without_improvement"] == evals_since_best(nll)
    # A miscounted patience shows once a validation without improvement is followed by another one.
    assert any(evals_since_best(nll[:i]) for i in range(1, len(nll))), (
        f"validation NLL {nll} always improved: the early-stopping counter is not exercised; "
        "choose other settings"
    )
    torch.testing.assert_close(
        [record["valid_nll"] for record in two_state["history"]], nll, rtol=1e-6, atol=0
    )

    final = f"step-{one_state['step']:08d}"
    # The same tokenizer: rank 0 trained it and the other rank loaded it, from the same data.
    tokenizer = "tokenizer.json"
    assert (two / "checkpoints" / final / tokenizer).read_bytes() == (
        one / "checkpoints" / final / tokenizer
    ).read_bytes()
    for file in (checkpoint.MODEL_FILE, checkpoint.OPTIMIZER_FILE):
        got, want = tensors(two / "checkpoints" / final / file), tensors(one / "checkpoints" / final / file)
        assert got.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(
                got[name], want[name], rtol=0, atol=PARAMETER_ATOL, msg=f"{file}: {name}"
            )
    first = tensors(checkpoint_dir(one, 5) / checkpoint.MODEL_FILE)
    moved = max(
        float((first[k] - want_k).abs().max())
        for k, want_k in tensors(one / "checkpoints" / final / checkpoint.MODEL_FILE).items()
    )
    assert moved > 100 * PARAMETER_ATOL  # the comparison is not vacuous: the weights did move

    # Per-step losses (summed over ranks) agree; only rank 0 wrote the log: one line per step.
    one_steps, two_steps = step_records(one), step_records(two)
    assert sorted(two_steps) == sorted(one_steps) == list(range(1, one_state["step"] + 1))
    for step, record in one_steps.items():
        assert abs(two_steps[step]["loss"] - record["loss"]) <= 1e-6 * record["loss"], step
        assert two_steps[step]["lr"] == record["lr"]
    lines = [r["step"] for r in runs.metrics(two) if "loss" in r]
    assert lines == sorted(set(lines)), "a step was logged twice: did another rank write the log?"


def torchrun(*command: str) -> list[str]:
    return [TORCHRUN, "--standalone", "--nproc_per_node=2", *command]


def test_sigkill_under_torchrun_on_prepared_data_then_resume_is_bit_exact(
    prepared_corpus: dict[str, Path], tmp_path: Path
) -> None:
    """Both ranks (and torchrun) killed at once mid-run on a prepared corpus, then resumed: the end is the
    uninterrupted 2-process run's, bit for bit (the same world size: the same dropout masks per rank)."""
    steps = 4 * SAVE_EVERY
    reference, out, pids = tmp_path / "reference", tmp_path / "run", tmp_path / "pids"
    runs.run(torchrun("-m", "qkv", "train", *train_args(prepared_corpus, reference, steps=steps)))

    pids.mkdir()
    # Rank 0 stops inside the writer once the second checkpoint (step 10) is committed; rank 1 waits for it.
    killed = runs.child("pointer_replaced", 2, "block", train_args(prepared_corpus, out, steps=steps))
    process = runs.start(torchrun(*killed[1:]), QKV_TEST_PIDS=str(pids))
    runs.wait_until(
        lambda: latest_step(out) == 2 * SAVE_EVERY and len(list(pids.iterdir())) == 2,
        process,
        "the second checkpoint",
    )
    process.send_signal(signal.SIGKILL)
    for rank in pids.iterdir():
        os.kill(int(rank.read_text()), signal.SIGKILL)
    runs.finish(process, expect=-signal.SIGKILL)
    assert latest_step(out) == 2 * SAVE_EVERY

    runs.run(torchrun("-m", "qkv", "train", *train_args(prepared_corpus, out, steps=steps, resume=True)))
    state = checkpoint.load_json(checkpoint_dir(out, steps) / checkpoint.TRAINER_STATE_FILE)
    assert state["world_size"] == 2
    assert_same_checkpoint(checkpoint_dir(out, steps), checkpoint_dir(reference, steps))
    assert_same_losses(out, reference, range(1, steps + 1))
    assert (out / "best" / checkpoint.MODEL_FILE).read_bytes() == (
        reference / "best" / checkpoint.MODEL_FILE
    ).read_bytes()
