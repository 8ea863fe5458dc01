"""The length limits: each bad value is a ValueError naming its field; the limits worked out by hand."""

from __future__ import annotations

import math

import pytest

from qkv.decode import Lengths, pad_batch
from tests.decode.scripted import ScriptedStepper, random_script


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_len_a": -0.5}, "max_len_a=-0.5 must be a finite number >= 0"),
        ({"max_len_a": math.nan}, "max_len_a=nan must be a finite number >= 0"),
        ({"max_len_a": math.inf}, "max_len_a=inf must be a finite number >= 0"),
        ({"max_len_b": -1}, "max_len_b=-1 must be a finite number >= 0"),
        ({"max_len": -1}, "max_len=-1 must be a finite number >= 0"),
        ({"min_len": -2}, "min_len=-2 must be a finite number >= 0"),
    ],
)
def test_each_bad_value_is_an_error_naming_its_field(options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Lengths(**options)  # type: ignore[arg-type]


def test_limits_by_hand() -> None:
    """floor(a * src_len + b), src_len counting the real tokens with </s>, capped by max_len and by the
    stepper's own maximum."""
    src = pad_batch([[5, 6, 7, 2], [5, 2], [5, 6, 7, 8, 9, 10, 11, 12, 13, 2]], 0)  # 4, 2, 10 tokens
    stepper = ScriptedStepper(random_script(8), vocab_size=8, max_len=12)
    assert Lengths(max_len_a=1.5, max_len_b=1).limits(stepper, src).tolist() == [7, 4, 12]  # 16 > 12
    assert Lengths(max_len_a=0.5, max_len_b=0, max_len=4).limits(stepper, src).tolist() == [2, 1, 4]
    assert Lengths(max_len_a=0, max_len_b=0).limits(stepper, src).tolist() == [0, 0, 0]
