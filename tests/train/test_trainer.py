"""The trainer in this process on a synthetic task: non-finite losses, and runs resumed after their end."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from qkv import checkpoint
from qkv.config import preset
from qkv.models.seq2seq import Transformer
from qkv.train import task as task_module
from qkv.train.trainer import Example, NonFiniteLoss, TrainConfig, Trainer

VOCAB = 24


def examples(count: int = 200) -> list[Example]:
    """Random pairs of ids (4..VOCAB-1): the source ends with </s> (2), the target is bare."""
    rng = random.Random(0)
    return [
        (
            [rng.randrange(4, VOCAB) for _ in range(rng.randint(2, 6))] + [2],
            [rng.randrange(4, VOCAB) for _ in range(rng.randint(2, 6))],
        )
        for _ in range(count)
    ]


def make_trainer(run_dir: Path, **overrides: Any) -> Trainer:
    torch.manual_seed(0)
    model = Transformer(preset("tiny", VOCAB))
    settings: dict[str, Any] = dict(max_steps=6, max_tokens=48, save_every=2, log_every=1, warmup=2, lr=1e-3)
    config = TrainConfig(**{**settings, **overrides})
    return Trainer(model, config, run_dir, train=examples(), progress=False)


def files(directory: Path) -> dict[str, bytes]:
    return {entry.name: entry.read_bytes() for entry in sorted(directory.iterdir())}


@pytest.fixture
def snapshots(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], dict[str, dict[str, bytes]]]:
    """The bytes of every checkpoint as it was committed (taken by the writer's stage hook)."""
    taken: dict[str, dict[str, bytes]] = {}
    runs: list[Path] = []

    def hook(stage: str) -> None:
        if stage == "pointer_replaced":
            latest = checkpoint.latest_checkpoint(runs[0])
            assert latest is not None
            taken[latest.name] = files(latest)

    monkeypatch.setattr(checkpoint, "_stage_hook", hook)

    def start(run_dir: Path) -> dict[str, dict[str, bytes]]:
        runs.append(run_dir)
        return taken

    return start


def nan_at(
    monkeypatch: pytest.MonkeyPatch, bad_calls: set[int], seen: list[dict[str, Tensor]], model: Transformer
) -> None:
    """Make the trainer's loss NaN at the given (1-based) calls; record the weights at every call."""
    real = task_module.label_smoothed_loss
    calls = 0

    def loss(logits: Tensor, target: Tensor, *, smoothing: float, pad_id: int) -> tuple[Tensor, Tensor]:
        nonlocal calls
        calls += 1
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        value, nll = real(logits, target, smoothing=smoothing, pad_id=pad_id)
        return (value + math.nan, nll) if calls in bad_calls else (value, nll)

    monkeypatch.setattr(task_module, "label_smoothed_loss", loss)


def test_non_finite_loss_stops_and_leaves_the_last_checkpoint_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, snapshots: Any, one_thread: None
) -> None:
    taken = snapshots(tmp_path)
    trainer = make_trainer(tmp_path)
    nan_at(monkeypatch, {5}, [], trainer.model)
    with pytest.raises(
        NonFiniteLoss, match=r"non-finite loss at step 5 \(last checkpoint: .*step-00000004\)"
    ):
        trainer.fit()
    last = checkpoint.latest_checkpoint(tmp_path)
    assert last is not None and last.name == "step-00000004"
    assert files(last) == taken["step-00000004"]  # byte for byte
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "LATEST",
        "step-00000002",
        "step-00000004",
    ]


def test_bad_steps_within_the_budget_are_skipped_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    trainer = make_trainer(tmp_path, max_bad_steps=1)
    weights: list[dict[str, Tensor]] = []
    nan_at(monkeypatch, {3}, weights, trainer.model)
    result = trainer.fit()
    assert result.stopped_because == "max_steps"
    assert (result.state.step, result.state.skipped_steps) == (6, 1)
    assert result.state.batch_in_epoch == 7  # the bad step's batch was used up, not trained on again
    # The skipped step changed no weight: the weights seen by the call after it are those seen by it.
    for name, value in weights[2].items():
        assert torch.equal(value, weights[3][name]), name
    assert not all(torch.equal(weights[1][k], weights[2][k]) for k in weights[1])  # good steps do change them
    saved = checkpoint.load_json(tmp_path / "checkpoints" / "step-00000006" / checkpoint.TRAINER_STATE_FILE)
    assert saved["skipped_steps"] == 1
    assert [r["step"] for r in result.log] == [1, 2, 3, 4, 5, 6]


def test_a_bad_step_past_the_budget_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    trainer = make_trainer(tmp_path, max_bad_steps=1)
    nan_at(monkeypatch, {3, 5}, [], trainer.model)  # the 2nd bad call would have been step 4
    with pytest.raises(NonFiniteLoss, match="non-finite loss at step 4 "):
        trainer.fit()


@pytest.mark.parametrize("stop", [{"max_steps": 4}, {"max_steps": None, "max_epochs": 1}])
def test_resuming_a_finished_run_trains_no_further_step(
    tmp_path: Path, stop: dict[str, Any], one_thread: None
) -> None:
    first = make_trainer(tmp_path, **stop).fit()
    assert first.stopped_because in ("max_steps", "max_epochs")
    before = files(first.last_checkpoint) if first.last_checkpoint else {}

    again = make_trainer(tmp_path, **stop)
    assert again.resume() == first.last_checkpoint
    result = again.fit()
    assert result.state.step == first.state.step
    assert result.stopped_because == first.stopped_because
    assert result.last_checkpoint == first.last_checkpoint
    assert files(first.last_checkpoint) == before
    assert checkpoint.latest_checkpoint(tmp_path) == first.last_checkpoint
