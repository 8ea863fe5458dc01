"""Sampling: draw each next token from the model's (reshaped) distribution.

The filters are pure functions of the logits (unnormalised log-probs work the same, softmax being
shift-invariant); each returns logits with the removed tokens at -inf:

* temperature T: logits / T (T < 1 sharpens, T > 1 flattens);
* top-k (Fan et al., 2018): keep the k largest logits of each row;
* top-p, nucleus (Holtzman et al., 2020): keep the smallest set of most probable tokens whose total
  probability reaches p.

:func:`sample` draws with ``torch.Generator`` objects. Given one per sentence, each sentence draws from
its own stream, so its output depends on its generator's seed and its source only, not on the batch it
is decoded in (:func:`qkv.decode.decode` seeds sentence ``i``'s generator from ``(seed, i)``). Given one
generator, the rows share its stream: cheaper per step, but another batch composition draws differently.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from qkv.decode.constraints import TokenRules
from qkv.decode.greedy import left_to_right
from qkv.decode.hypothesis import DEFAULT_ALPHA, Hypothesis
from qkv.decode.lengths import DEFAULT_LENGTHS, Lengths
from qkv.decode.step import S, Stepper


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """logits / temperature. Shapes: (..., vocab) -> (..., vocab)."""
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be > 0 (use greedy decoding for temperature 0)")
    return logits / temperature


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest logits of each row, set the others to -inf; ``k <= 0`` keeps all.

    Tokens tied with the k-th largest are kept too, so a row may keep more than k.
    Shapes: (..., vocab) -> (..., vocab).
    """
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth_largest = logits.topk(k, dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filtering: keep the most probable tokens until their probability adds up to ``p``.

    A token is kept when the probability of the tokens ranked before it is still below ``p``, so the
    most probable token is always kept and the kept set is the smallest whose total reaches ``p``.
    ``p >= 1`` keeps all. Shapes: (..., vocab) -> (..., vocab).
    """
    if not 0.0 < p:
        raise ValueError(f"top_p={p} must be in (0, 1]")
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the better-ranked tokens
    is_removed_sorted = mass_before >= p
    is_removed = is_removed_sorted.scatter(-1, order, is_removed_sorted)  # back to vocabulary order
    return logits.masked_fill(is_removed, float("-inf"))


def filter_logits(logits: Tensor, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Temperature, then top-k, then top-p (the order of Hugging Face and fairseq). Shapes: (..., vocab)."""
    return top_p_filter(top_k_filter(apply_temperature(logits, temperature), top_k), top_p)


def sample(
    stepper: Stepper[S],
    src_ids: Tensor,
    *,
    generator: torch.Generator | Sequence[torch.Generator],
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    alpha: float = DEFAULT_ALPHA,
    lengths: Lengths = DEFAULT_LENGTHS,
    rules: TokenRules | None = None,
) -> list[Hypothesis]:
    """Draw one output per sentence, each token from the filtered distribution of the step.

    ``generator``: one for the batch, or one per sentence (batch-invariant draws; module docstring).
    The hypotheses' ``log_prob`` is under the model's own distribution (temperature 1, no filter), so
    samples can be compared with beam search outputs. ``lengths`` as in greedy decoding; ``rules`` force
    prefixes (a forced token is drawn with probability 1). Lexical constraints need beam search: they
    raise ValueError here (a sample that must hold given phrases is not a sample of the model).

    Shapes: src_ids (batch, src_len), padded with ``stepper.pad_id`` -> ``batch`` hypotheses, in order.
    """
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be > 0 (use greedy decoding for temperature 0)")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p} must be in (0, 1]")
    if rules is not None and rules.has_constraints:
        raise ValueError("lexical constraints need beam search; sampling cannot guarantee them")
    if not isinstance(generator, torch.Generator) and len(generator) != src_ids.shape[0]:
        raise ValueError(
            f"{len(generator)} generators for {src_ids.shape[0]} sentences: give one per sentence"
        )

    def draw(log_probs: Tensor, sentence: Tensor) -> Tensor:
        """log_probs (rows, vocab), each row's sentence (rows,) -> sampled tokens (rows,)."""
        filtered = filter_logits(log_probs, temperature=temperature, top_k=top_k, top_p=top_p)
        probs = torch.softmax(filtered, dim=-1)
        if isinstance(generator, torch.Generator):
            return torch.multinomial(probs, 1, generator=generator).squeeze(1)
        drawn = [
            torch.multinomial(row_probs, 1, generator=generator[s])
            for row_probs, s in zip(probs, sentence.tolist(), strict=True)
        ]
        return torch.cat(drawn)

    return left_to_right(stepper, src_ids, draw, alpha=alpha, lengths=lengths, rules=rules)
