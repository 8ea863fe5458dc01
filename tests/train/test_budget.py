"""A learning rate that decays to the end of a time budget (qkv.train.budget): the plan's arithmetic, the
curve a budgeted run follows, and exact resume with the plan kept in the trainer state.

The resumed run is compared with an independent reference: an uninterrupted run with ``--schedule linear
--max-steps P``, where P is the step count the budgeted run planned. With the warm-up longer than the
calibration window both follow the same curve from the first step, so their weights must be the same bits.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from qkv import checkpoint
from qkv.cli.train_options import resolved_schedule
from qkv.storage import CheckpointError
from qkv.train.budget import CALIBRATION_SKIP, CALIBRATION_STEPS, Calibration, plan_steps
from qkv.train.schedule import learning_rate
from qkv.train.state import TrainerState
from qkv.train.train_config import TrainConfig
from tests.train import runs
from tests.train.runs import assert_same_checkpoint, assert_same_losses, checkpoint_dir, metrics, train_args

PLANNED_AT = CALIBRATION_SKIP + CALIBRATION_STEPS  # the step a fresh run plans at
PEAK = 2e-3  # train_args' --lr


def budget_args(
    corpus: dict[str, Path], out: Path, *, minutes: float, warmup: int, resume: bool = False
) -> list[str]:
    """train_args with a time budget instead of a step count, and a checkpoint every 20 steps."""
    args = train_args(corpus, out, steps=1, valid=False, resume=resume)
    del args[args.index("--max-steps") : args.index("--max-steps") + 2]
    args[args.index("--warmup") + 1] = str(warmup)
    args[args.index("--save-every") + 1] = "20"
    args[args.index("--keep-last") + 1] = "3"
    return [*args, "--max-minutes", str(minutes)]


def plan_record(run_dir: Path) -> dict[str, float]:
    (record,) = [r for r in metrics(run_dir) if "planned_steps" in r]
    return record


def learning_rates(run_dir: Path) -> dict[int, float]:
    return {step: record["lr"] for step, record in runs.step_records(run_dir).items()}


def test_plan_steps_by_hand() -> None:
    # 600 s left at 0.5 s a step: 1,200 steps, 95% of them planned (1,140), after the 60 done.
    assert plan_steps(step=60, seconds_per_step=0.5, seconds_left=600.0) == 60 + 1140
    assert plan_steps(step=60, seconds_per_step=0.5, seconds_left=600.0, reserve=1.0) == 1260
    # No time left still plans one more step; a step rate of zero is an error, not a division by zero.
    assert plan_steps(step=60, seconds_per_step=0.5, seconds_left=-3.0) == 61
    with pytest.raises(ValueError, match="seconds_per_step"):
        plan_steps(step=60, seconds_per_step=0.0, seconds_left=600.0)


def test_calibration_times_the_window_after_the_skipped_steps() -> None:
    calibration = Calibration(first_step=100)  # a resumed run calibrates from where it starts
    begin, end = 100 + CALIBRATION_SKIP, 100 + CALIBRATION_SKIP + CALIBRATION_STEPS
    seen = [calibration.step_done(step, now=2.0 * step) for step in range(101, end + 5)]
    assert seen[end - 101] == pytest.approx(2.0)  # (2 * end - 2 * begin) / CALIBRATION_STEPS
    assert [s for i, s in enumerate(seen) if i != end - 101] == [None] * (len(seen) - 1)
    assert begin < end


def test_the_plan_is_part_of_the_saved_state() -> None:
    state = TrainerState(step=70, planned_steps=1234)
    assert TrainerState.from_dict(state.to_dict()).planned_steps == 1234
    old = state.to_dict()
    del old["planned_steps"]  # a state saved before budgets existed
    assert TrainerState.from_dict(old).planned_steps is None
    with pytest.raises(CheckpointError, match="planned_steps.*whole number > 0 or null"):
        TrainerState.from_dict({**state.to_dict(), "planned_steps": -5}, source="trainer_state.json")


def test_decaying_schedules_need_steps_or_minutes() -> None:
    TrainConfig(schedule="linear", max_minutes=10)  # decays to the budget's plan
    TrainConfig(schedule="cosine", max_steps=10)
    with pytest.raises(ValueError, match="max_steps or at the end of the max_minutes budget"):
        TrainConfig(schedule="linear", max_epochs=3)


def test_auto_schedule_decays_to_a_budget_given_alone() -> None:
    assert resolved_schedule("auto", max_steps=None, max_epochs=None, max_minutes=44.0) == "linear"
    assert resolved_schedule("auto", max_steps=500, max_epochs=None, max_minutes=8.0) == "inverse_sqrt"
    assert resolved_schedule("auto", max_steps=None, max_epochs=3, max_minutes=8.0) == "inverse_sqrt"
    assert resolved_schedule("auto", max_steps=None, max_epochs=None, max_minutes=None) == "inverse_sqrt"
    assert resolved_schedule("cosine", max_steps=None, max_epochs=None, max_minutes=None) == "cosine"


def test_budgeted_run_holds_the_peak_until_it_plans_then_decays_to_zero_at_the_plan(
    corpus: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    output = runs.train_here(budget_args(corpus, out, minutes=0.2, warmup=5))
    plan = plan_record(out)
    planned = int(plan["planned_steps"])
    assert plan["step"] == PLANNED_AT and plan["budget_minutes"] == 0.2 and plan["seconds_per_step"] > 0
    assert planned > PLANNED_AT
    assert "stopped (max_minutes)" in output
    if max(learning_rates(out)) < planned:
        # The budget is also a hard stop: a machine that slowed down after the plan (another job on its
        # cores) ends the run a little early. A resumed run with time to spare finishes the plan.
        runs.train_here(budget_args(corpus, out, minutes=5, warmup=5, resume=True))
    rates = learning_rates(out)
    assert max(rates) == planned
    assert [rates[s] for s in range(1, 6)] == pytest.approx([PEAK * s / 5 for s in range(1, 6)], rel=1e-12)
    assert {rates[s] for s in range(5, PLANNED_AT + 1)} == {PEAK}  # warm-up done, no plan yet: the peak
    for step in range(PLANNED_AT + 1, planned + 1):  # then linear from the peak at step 5 to 0 at the plan
        want = learning_rate(step, schedule="linear", peak=PEAK, warmup=5, total_steps=planned)
        assert rates[step] == pytest.approx(want, rel=1e-12, abs=1e-15), step
    assert rates[planned] == 0.0
    state = checkpoint.load_json(checkpoint_dir(out, planned) / checkpoint.TRAINER_STATE_FILE)
    assert state["planned_steps"] == planned and state["train_config"]["schedule"] == "linear"


def test_sigkill_after_the_plan_then_resume_equals_a_run_of_the_planned_steps(
    corpus: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    warmup = PLANNED_AT + 20  # longer than the calibration: the reference follows the same curve throughout
    args = budget_args(corpus, out, minutes=0.25, warmup=warmup)
    process = runs.start(runs.qkv_train(args))
    runs.wait_until(
        lambda: any("planned_steps" in r for r in metrics(out)) and (runs.latest_step(out) or 0) > PLANNED_AT,
        process,
        "the plan and a checkpoint after it",
    )
    process.send_signal(signal.SIGKILL)
    runs.finish(process, expect=-signal.SIGKILL)
    resumed_from = runs.latest_step(out)
    planned = int(plan_record(out)["planned_steps"])
    assert resumed_from is not None and PLANNED_AT < resumed_from < planned

    # With time to spare (the budget is only the hard stop once the plan is made, so a slow machine
    # cannot end the run early): the resumed process follows the saved plan, it does not calibrate anew.
    runs.train_here(budget_args(corpus, out, minutes=5, warmup=warmup, resume=True))
    assert runs.latest_step(out) == planned
    assert len([r for r in metrics(out) if "planned_steps" in r]) == 1

    reference = tmp_path / "reference"
    reference_args = train_args(corpus, reference, steps=planned, valid=False)
    for flag, value in (("--warmup", warmup), ("--save-every", 20), ("--keep-last", 3)):
        reference_args[reference_args.index(flag) + 1] = str(value)
    runs.run(runs.qkv_train([*reference_args, "--schedule", "linear"]))
    assert_same_checkpoint(checkpoint_dir(out, planned), checkpoint_dir(reference, planned))
    assert_same_losses(out, reference, range(1, planned + 1))
