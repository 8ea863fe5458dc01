"""How to train: :class:`TrainConfig`, the settings of a run, validated when built (also under
``python -O``), and saved in every checkpoint's trainer_state.json so that a resumed run is the same run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from qkv.data.batching import WINDOW
from qkv.storage import CheckpointError
from qkv.train.schedule import DECAYING, SCHEDULES, Schedule

Precision = Literal["fp32", "bf16", "fp16"]

# The validation metrics that can pick the best model, and whether lower or higher is better. valid_bleu
# comes from a validation hook (qkv train --valid-bleu N): a non-autoregressive model's validation loss
# (on random masks of the references) rose while its BLEU improved (README, cmn-eng).
BEST_BY = {"valid_nll": "lower", "valid_bleu": "higher"}


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Defaults follow the paper (section 5) where it says, fairseq where it does not."""

    max_tokens: int = 4096  # padded tokens per batch (the larger of source and target)
    accumulate: int = 1  # batches per optimizer step
    batch_window: int = WINDOW  # pairs sorted into batches together (qkv.data.batching.EpochBatches)
    max_steps: int | None = None
    max_epochs: int | None = None
    max_minutes: float | None = None
    lr: float = 7e-4  # peak learning rate (the paper's base: 512^-0.5 * 4000^-0.5 = 7.0e-4)
    schedule: Schedule = "inverse_sqrt"
    warmup: int = 4000
    betas: tuple[float, float] = (0.9, 0.98)
    adam_eps: float = 1e-9
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    clip_norm: float = 0.0  # 0 = no clipping
    precision: Precision = "fp32"
    seed: int = 0
    save_every: int = 1000  # steps between checkpoints (one is also written at the end)
    keep_last: int = 2
    valid_every: int = 1000  # steps between validations (one also runs at the end)
    patience: int | None = None  # stop after this many validations without improvement
    best_by: str = "valid_nll"  # the validation metric that picks best/ (and that patience watches)
    log_every: int = 10
    max_bad_steps: int = 0  # steps with a non-finite loss to skip before stopping

    def __post_init__(self) -> None:
        def positive(name: str) -> None:
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name}={value!r} must be positive")

        for name in (
            "max_tokens",
            "accumulate",
            "batch_window",
            "max_steps",
            "max_epochs",
            "max_minutes",
            "lr",
            "save_every",
            "keep_last",
            "valid_every",
            "patience",
            "log_every",
        ):
            positive(name)
        if self.max_steps is None and self.max_epochs is None and self.max_minutes is None:
            raise ValueError("give at least one of max_steps, max_epochs, max_minutes (when to stop)")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={self.label_smoothing} must be in [0, 1)")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r} must be one of {SCHEDULES}")
        if self.schedule in DECAYING and self.max_steps is None and self.max_minutes is None:
            raise ValueError(
                f"schedule={self.schedule!r} decays to 0 at max_steps or at the end of the max_minutes budget:"
                " give one of them"
            )
        if self.best_by not in BEST_BY:
            raise ValueError(f"best_by={self.best_by!r} must be one of {sorted(BEST_BY)}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision={self.precision!r} must be fp32, bf16 or fp16")
        if self.warmup < 0 or self.clip_norm < 0 or self.weight_decay < 0 or self.max_bad_steps < 0:
            raise ValueError("warmup, clip_norm, weight_decay and max_bad_steps must not be negative")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, *, source: str | None = None) -> TrainConfig:
        """The config saved in ``data`` (unknown keys are ignored: they may come from a newer qkv).

        With ``source`` (the file it was read from) a value of the wrong type or out of range is a
        :class:`~qkv.storage.CheckpointError` naming the file and the key; without, a ValueError.
        """
        where = f"{source}: " if source else ""
        if not isinstance(data, dict):
            raise _error(f"{where}train_config is {_short(data)}, expected an object", source)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for f in fields(cls):
            if f.name in known and not _has_type(known[f.name], str(f.type)):
                raise _error(
                    f"{where}train_config.{f.name} is {_short(known[f.name])}, expected {_TYPE_NAMES[str(f.type)]}",
                    source,
                )
        if "betas" in known:
            known["betas"] = tuple(known["betas"])
        try:
            return cls(**known)
        except ValueError as error:
            raise _error(f"{where}train_config: {error}", source) from None


# How each annotation of TrainConfig reads in a message; _has_type checks a JSON value against it.
_TYPE_NAMES = {
    "int": "a whole number",
    "int | None": "a whole number or null",
    "float": "a number",
    "float | None": "a number or null",
    "tuple[float, float]": "a pair of numbers",
    "Schedule": f"one of {', '.join(SCHEDULES)}",
    "Precision": "fp32, bf16 or fp16",
    "str": "a string",
}


def _has_type(value: Any, annotation: str) -> bool:
    is_int = isinstance(value, int) and not isinstance(value, bool)
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation.endswith(" | None") and value is None:
        return True
    base = annotation.removesuffix(" | None")
    if base == "int":
        return is_int
    if base == "float":
        return is_number
    if base == "tuple[float, float]":
        return (
            isinstance(value, (list, tuple)) and len(value) == 2 and all(_has_type(v, "float") for v in value)
        )
    return isinstance(value, str)  # Schedule, Precision, str: __post_init__ checks the choice


def _error(message: str, source: str | None) -> ValueError:
    return CheckpointError(message) if source else ValueError(message)


def _short(value: Any, limit: int = 50) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
