"""Learning-rate schedules against the paper's formula (section 5.3) and values worked out by hand."""

from __future__ import annotations

import math

import pytest

from qkv.train.schedule import inverse_sqrt, learning_rate


def paper(step: int, d_model: int, warmup: int, factor: float = 1.0) -> float:
    """lrate = d_model^-0.5 * min(step_num^-0.5, step_num * warmup_steps^-1.5), times a factor."""
    return factor * d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


def test_inverse_sqrt_hand_values() -> None:
    # d = 512, warmup = 4000 (the paper's base): the peak at step 4000 is 512^-0.5 * 4000^-0.5.
    assert inverse_sqrt(4000, d_model=512, warmup=4000) == pytest.approx(1 / math.sqrt(512 * 4000), rel=1e-12)
    assert inverse_sqrt(4000, d_model=512, warmup=4000) == pytest.approx(6.987712429686844e-4, rel=1e-12)
    # Warm-up is linear: step 1 is 1/4000 of the peak; after it, the decay goes as step^-0.5.
    assert inverse_sqrt(1, d_model=512, warmup=4000) == pytest.approx(6.987712429686844e-4 / 4000, rel=1e-12)
    assert inverse_sqrt(16000, d_model=512, warmup=4000) == pytest.approx(6.987712429686844e-4 / 2, rel=1e-12)
    # d = 16, warmup = 4, factor 2: step 1 -> 2 * 1/4 * 1 * 4^-1.5 = 1/16; step 9 -> 2 * 1/4 * 1/3 = 1/6.
    assert inverse_sqrt(1, d_model=16, warmup=4, factor=2.0) == pytest.approx(1 / 16, rel=1e-12)
    assert inverse_sqrt(4, d_model=16, warmup=4, factor=2.0) == pytest.approx(1 / 4, rel=1e-12)
    assert inverse_sqrt(9, d_model=16, warmup=4, factor=2.0) == pytest.approx(1 / 6, rel=1e-12)


@pytest.mark.parametrize("step", [1, 2, 7, 100, 999, 4000, 4001, 10_000, 123_456])
def test_inverse_sqrt_is_the_paper_formula(step: int) -> None:
    assert inverse_sqrt(step, d_model=512, warmup=4000, factor=3.0) == pytest.approx(
        paper(step, 512, 4000, 3.0), rel=1e-12
    )


@pytest.mark.parametrize(("d_model", "warmup", "peak"), [(512, 4000, 7e-4), (32, 10, 3e-3), (1024, 1, 1e-3)])
def test_learning_rate_inverse_sqrt_peaks_at_peak(d_model: int, warmup: int, peak: float) -> None:
    def lr(step: int) -> float:
        return learning_rate(step, schedule="inverse_sqrt", peak=peak, warmup=warmup)

    assert lr(warmup) == pytest.approx(peak, rel=1e-12)
    steps = [1, 2, warmup // 2 + 1, warmup - 1, warmup, warmup + 1, 3 * warmup, 100 * warmup + 7]
    factor = peak * math.sqrt(d_model * warmup)  # the factor that makes the paper's formula peak at `peak`
    for step in (s for s in steps if s >= 1):
        assert lr(step) == pytest.approx(paper(step, d_model, warmup, factor), rel=1e-12), step
        assert lr(step) <= peak * (1 + 1e-12)
    assert max(lr(s) for s in range(1, 3 * warmup + 2)) == pytest.approx(peak, rel=1e-12)


def test_linear_cosine_constant_by_hand() -> None:
    # Warm-up of 4 steps to 1e-3, then to 0 at step 14 (10 steps of decay).
    def lr(step: int, schedule: str) -> float:
        return learning_rate(step, schedule=schedule, peak=1e-3, warmup=4, total_steps=14)  # type: ignore[arg-type]

    for schedule in ("linear", "cosine", "constant"):
        assert [lr(s, schedule) for s in (1, 2, 3, 4)] == pytest.approx(
            [2.5e-4, 5e-4, 7.5e-4, 1e-3], rel=1e-12
        )
    assert [lr(s, "linear") for s in (5, 9, 14, 20)] == pytest.approx([9e-4, 5e-4, 0.0, 0.0], abs=1e-15)
    # cosine: 1e-3 * (1 + cos(pi * p)) / 2 with p = 0.1, 0.5, 1: 9.755e-4, 5e-4, 0.
    assert lr(5, "cosine") == pytest.approx(1e-3 * (1 + math.cos(0.1 * math.pi)) / 2, rel=1e-12)
    assert lr(5, "cosine") == pytest.approx(9.755282581475768e-4, rel=1e-12)
    assert lr(9, "cosine") == pytest.approx(5e-4, rel=1e-12)
    assert lr(14, "cosine") == pytest.approx(0.0, abs=1e-15)
    assert [lr(s, "constant") for s in (5, 100, 10_000)] == [1e-3, 1e-3, 1e-3]
    # No warm-up: the first step already uses the peak.
    assert learning_rate(1, schedule="constant", peak=2e-3, warmup=0) == 2e-3
    assert learning_rate(1, schedule="linear", peak=2e-3, warmup=0, total_steps=5) == pytest.approx(1.6e-3)


def test_decaying_schedules_need_total_steps() -> None:
    with pytest.raises(ValueError, match="total_steps"):
        learning_rate(10, schedule="linear", peak=1e-3, warmup=4)
