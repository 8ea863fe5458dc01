"""How a run ends: a :class:`TrainResult`, or an exception saying why it stopped early."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qkv.train.state import TrainerState


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the checkpoints written before are untouched."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM arrived; a checkpoint was written at the step boundary."""

    def __init__(self, signum: int, step: int, saved: Path | None) -> None:
        self.signum = signum
        self.step = step
        self.saved = saved
        name = signal.Signals(signum).name
        super().__init__(
            f"{name} at step {step}; " + (f"checkpoint saved to {saved}" if saved else "nothing saved")
        )

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


@dataclass
class TrainResult:
    state: TrainerState
    run_dir: Path
    last_checkpoint: Path | None
    best_dir: Path | None
    stopped_because: str
    log: list[dict[str, Any]] = field(default_factory=list)
