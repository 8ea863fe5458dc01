"""What a search returns, and how finished hypotheses of different lengths are compared.

The length penalty is GNMT's (Wu et al., 2016, section 7), also used by the Transformer paper (section
6.1, alpha = 0.6) and fairseq::

    lp(Y) = ((5 + |Y|) / 6) ** alpha,     score(Y) = log P(Y | X) / lp(Y)

``|Y|`` counts the output tokens *including* the closing </s> (the token whose probability ends the
sentence is scored like any other). alpha = 0 ranks by plain log-probability; larger alpha favours longer
outputs, since log P only falls as tokens are added.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import overload

from torch import Tensor

DEFAULT_ALPHA = 0.6  # the Transformer paper's beam search (section 6.1)


@overload
def length_penalty(length: int, alpha: float) -> float: ...


@overload
def length_penalty(length: Tensor, alpha: float) -> Tensor: ...


def length_penalty(length: int | Tensor, alpha: float) -> float | Tensor:
    """GNMT's lp = ((5 + length) / 6) ** alpha; ``length`` counts the tokens including </s>.

    Shapes: an int gives a float; a tensor of lengths (any shape) gives float32 penalties of that shape.
    """
    if isinstance(length, Tensor):
        return ((5.0 + length.float()) / 6.0) ** alpha
    return float(((5.0 + length) / 6.0) ** alpha)


@dataclass(frozen=True)
class Hypothesis:
    """One output sentence.

    tokens: the output ids, without <s> and </s>.
    log_prob: log P(tokens, </s> | source), summed over the tokens and the closing </s>, under the
        model's distribution after the decoding rules (:func:`qkv.decode.step.constrain`).
    score: ``log_prob / length_penalty(len(tokens) + 1, alpha)``, the value beam search ranks by.
    """

    tokens: list[int]
    log_prob: float
    score: float
