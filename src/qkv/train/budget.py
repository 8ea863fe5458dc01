"""Fitting a decaying learning rate to a time budget: ``qkv train --max-minutes M --schedule linear``.

A schedule that decays to 0 must know where the run ends. Under a time budget that is a number of steps
nobody knows in advance: it depends on the machine. Wall time cannot drive the learning rate directly, or a
resumed run would follow another curve than the run it continues. So the step rate is measured once, over
a calibration window early in the run, and turned into a step count (``TrainerState.planned_steps``) that
the schedule decays to and the run stops at. It is saved with every checkpoint, so a killed and resumed run
keeps the same curve and ends bit-identical to an uninterrupted one with the same plan. Budgeted training
(Li, Yumer & Ramanan, ICLR 2020) found decaying to zero exactly at the budget's end the best use of a
budget; an inverse-square-root tail never anneals.

Until the plan exists the learning rate warms up and then holds its peak (the decay starts from the peak).
The budget stays a hard limit too: a run that the machine slows down after planning still stops in time.
"""

from __future__ import annotations

import math

# The first steps of a process are not timed (memory pools and caches fill, the first batches are made),
# then this many steps are: about two minutes of a two-core run of the small preset, long enough that a
# burst of other work on the machine (a test suite, an evaluation) moves the estimate by a few per cent.
CALIBRATION_SKIP = 10
CALIBRATION_STEPS = 100
# The share of the time left that is planned for steps; the rest is for the validations and checkpoints
# that fall after the calibration window, the last ones at the end, and for steps that run slower than
# those timed (on a 2-core AMD EPYC the small preset's steps averaged 5% above the calibration's figure
# over a 44-minute run: docs/real-data.md).
RESERVE = 0.95


def plan_steps(*, step: int, seconds_per_step: float, seconds_left: float, reserve: float = RESERVE) -> int:
    """The step a budget ends at: ``step`` (done) plus the steps that fit into ``reserve`` of ``seconds_left``
    at ``seconds_per_step``; at least one more."""
    if not seconds_per_step > 0:
        raise ValueError(f"seconds_per_step={seconds_per_step!r} must be positive")
    return step + max(1, math.floor(max(seconds_left, 0.0) * reserve / seconds_per_step))


class Calibration:
    """Times this process's steps: call :meth:`step_done` after each step; it returns the seconds a step
    takes once the window is over (then None again), else None.

    ``first_step`` is the step the process started from (a resumed run calibrates anew).
    """

    def __init__(self, first_step: int) -> None:
        self.begin = first_step + CALIBRATION_SKIP
        self.end = self.begin + CALIBRATION_STEPS
        self.begin_time: float | None = None

    def step_done(self, step: int, now: float) -> float | None:
        if step == self.begin:
            self.begin_time = now
        elif step == self.end and self.begin_time is not None:
            return (now - self.begin_time) / CALIBRATION_STEPS
        return None
