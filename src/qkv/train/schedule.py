"""Learning-rate schedules: pure functions of the step (no scheduler state to save or restore).

The paper's schedule (section 5.3), "inverse_sqrt" here:

    lr = factor * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)

rises linearly for ``warmup`` steps, then decays with the inverse square root of the step.
"""

from __future__ import annotations

import math
from typing import Literal

Schedule = Literal["inverse_sqrt", "linear", "cosine", "constant"]
SCHEDULES: tuple[Schedule, ...] = ("inverse_sqrt", "linear", "cosine", "constant")
DECAYING: tuple[Schedule, ...] = ("linear", "cosine")  # those that reach 0 at total_steps


def inverse_sqrt(step: int, *, d_model: int, warmup: int, factor: float = 1.0) -> float:
    """The paper's warm-up then inverse-square-root schedule (``step`` counts from 1)."""
    step = max(step, 1)
    return factor * d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


def learning_rate(
    step: int,
    *,
    schedule: Schedule,
    peak: float,
    warmup: int,
    total_steps: int | None = None,
) -> float:
    """The learning rate for optimizer step ``step`` (1-based).

    ``inverse_sqrt``: the paper's formula scaled so that it peaks at ``peak`` after ``warmup`` steps
    (the paper's formula with factor = peak * sqrt(d_model * warmup)); ``linear`` and ``cosine``: linear warm-up to
    ``peak`` then decay to 0 at ``total_steps``; ``constant``: warm-up then ``peak``.
    """
    step = max(step, 1)
    if schedule == "inverse_sqrt":
        # = inverse_sqrt(step, d_model=d, warmup=w, factor=peak * sqrt(d * w)): d_model cancels out.
        w = max(warmup, 1)
        return peak * min(step / w, math.sqrt(w / step))
    if warmup > 0 and step <= warmup:
        return peak * step / warmup
    if schedule == "constant":
        return peak
    if total_steps is None:
        raise ValueError(f"schedule {schedule!r} needs total_steps (use --max-steps)")
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if schedule == "linear":
        return peak * (1.0 - progress)
    if schedule == "cosine":
        return peak * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
