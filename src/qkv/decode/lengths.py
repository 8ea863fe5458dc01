"""How long an output may be: the length limits every search applies (fairseq's ``max_len_a``/``max_len_b``).

An output has at most ``min(floor(max_len_a * src_len + max_len_b), max_len, stepper.max_len)`` tokens
before </s> (``src_len`` counts the non-pad source tokens, </s> included), where it must take </s>; and
</s> no earlier than ``min_len`` tokens (see :func:`~qkv.decode.step.constrain`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from qkv.decode.step import Stepper, max_output_lengths

# fairseq's default is a = 0, b = 200; for translation an output a little longer than its source,
# plus slack for very short sources, is a common choice (e.g. a = 1.2, b = 10).
DEFAULT_MAX_LEN_A = 1.2
DEFAULT_MAX_LEN_B = 10
DEFAULT_MAX_LEN = 256


@dataclass(frozen=True)
class Lengths:
    """The length limits of a search: ``max_len_a * src_len + max_len_b`` tokens, at most ``max_len``,
    at least ``min_len`` (the module docstring gives the rule)."""

    max_len_a: float = DEFAULT_MAX_LEN_A
    max_len_b: int = DEFAULT_MAX_LEN_B
    max_len: int = DEFAULT_MAX_LEN
    min_len: int = 0

    def __post_init__(self) -> None:
        for name in ("max_len_a", "max_len_b", "max_len", "min_len"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}={value} must be a finite number >= 0")

    def limits(self, stepper: Stepper[Any], src_ids: Tensor) -> Tensor:
        """The most output tokens (before </s>) each sentence may get, capped by the stepper's positions.

        Shapes: src_ids (batch, src_len), padded with ``stepper.pad_id`` -> (batch,) long.
        """
        return max_output_lengths(
            src_ids,
            stepper.pad_id,
            max_len_a=self.max_len_a,
            max_len_b=self.max_len_b,
            max_len=min(self.max_len, stepper.max_len),
        )


DEFAULT_LENGTHS = Lengths()
