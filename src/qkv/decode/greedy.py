"""Greedy decoding: at every step each sentence takes its most probable allowed token.

:func:`left_to_right` is the loop shared with sampling: one path per sentence, a ``pick`` function
chooses each next token. Sentences that produce </s> leave the batch at once (their rows are dropped
from the state with ``select``), so a long sentence never makes the short ones pay for its steps.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import count

import torch
from torch import Tensor

from qkv.decode.constraints import TokenRules
from qkv.decode.hypothesis import DEFAULT_ALPHA, Hypothesis, length_penalty
from qkv.decode.lengths import DEFAULT_LENGTHS, Lengths
from qkv.decode.step import S, Stepper, constrain
from qkv.decode.wide import row_max

Pick = Callable[[Tensor, Tensor], Tensor]
"""Chooses the next tokens: log_probs (rows, vocab), banned tokens at -inf, and the batch sentence of
each row (rows,) -> token ids (rows,)."""


def left_to_right(
    stepper: Stepper[S],
    src_ids: Tensor,
    pick: Pick | None,
    *,
    alpha: float = DEFAULT_ALPHA,
    lengths: Lengths = DEFAULT_LENGTHS,
    rules: TokenRules | None = None,
) -> list[Hypothesis]:
    """Decode one hypothesis per sentence, token by token, choosing each with ``pick`` (None: the most
    probable allowed token, greedy).

    Each sentence stops at </s>, or at its limit under ``lengths``
    (:class:`~qkv.decode.lengths.Lengths`), where it must take </s>. ``rules`` (one row per sentence)
    force prefixes and constraints (:mod:`qkv.decode.constraints`).

    What each row needs (its limit, its log-prob so far, its tokens) is kept per row and rebuilt only
    when rows leave, not indexed out of per-sentence tensors at every step: for one sentence a step is
    bound by the number of operations it runs, not by their size.

    Shapes: src_ids (batch, src_len), padded with ``stepper.pad_id`` -> ``batch`` hypotheses, in order.
    """
    batch = src_ids.shape[0]
    device = src_ids.device
    if batch == 0:
        return []
    max_lens = lengths.limits(stepper, src_ids)  # (batch,)
    if rules is not None:
        max_lens = rules.limits(max_lens, stepper.max_len)
    min_len = lengths.min_len
    out = torch.full((batch, int(max_lens.max()) + 1), stepper.pad_id, dtype=torch.long, device=device)
    log_prob = torch.zeros(batch, device=device)  # float32, summed per step
    score = torch.zeros(batch, device=device)
    length = torch.zeros(batch, dtype=torch.long, device=device)  # tokens including </s>

    state = stepper.encode(src_ids)
    alive = torch.arange(batch, device=device)  # sentence index of each row still decoding, (rows,)
    row_max_lens, row_log_prob = max_lens, log_prob.clone()  # per row, (rows,)
    shortest = int(row_max_lens.min())  # no row is at its limit before this many steps
    chosen: list[Tensor] = []  # the rows' tokens since ``first_step``, one (rows,) tensor per step
    first_step = 0
    tokens = torch.full((batch, 1), stepper.bos_id, dtype=torch.long, device=device)
    for steps_done in count():
        log_probs, state = stepper.step(tokens, state)  # (rows, vocab)
        log_probs = constrain(
            log_probs,
            steps_done,
            row_max_lens,
            min_len=min_len,
            pad_id=stepper.pad_id,
            bos_id=stepper.bos_id,
            eos_id=stepper.eos_id,
            inplace=True,
            some_at_max=None if steps_done >= shortest else False,
        )
        if rules is not None:
            rules.restrict(log_probs, steps_done, row_max_lens, stepper.eos_id)
        # A row with no allowed token (only a scripted model can do that) ends, with log-prob -inf.
        if pick is None:  # the most probable token and its log-prob, from one pass
            # max(dim)'s values and first-maximum columns, searched chunk by chunk (qkv.decode.wide).
            best, choice = row_max(log_probs)  # (rows,) each
            stuck = best == float("-inf")
            if bool(stuck.any()):
                choice = torch.where(stuck, stepper.eos_id, choice)
        else:
            stuck = log_probs.amax(dim=-1) == float("-inf")  # (rows,); one pass, not isfinite + any
            if bool(stuck.any()):
                choice = pick(log_probs.masked_fill(stuck[:, None], 0.0), alive)  # (rows,)
                choice = torch.where(stuck, stepper.eos_id, choice)
            else:
                choice = pick(log_probs, alive)
            best = log_probs.gather(1, choice[:, None]).squeeze(1)
        row_log_prob += best
        chosen.append(choice)
        if rules is not None:
            rules = rules.advance(choice)

        is_finished = choice == stepper.eos_id  # (rows,)
        if bool(is_finished.any()):
            out[alive, first_step : steps_done + 1] = torch.stack(chosen, dim=1)
            chosen, first_step = [], steps_done + 1
            done = alive[is_finished]
            length[done] = steps_done + 1
            log_prob[done] = row_log_prob[is_finished]
            # The same float32 operation as beam search, so beam=1 reproduces these scores to the bit.
            score[done] = log_prob[done] / length_penalty(steps_done + 1, alpha)
            keep = (~is_finished).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            state = state.select(keep)
            if rules is not None:
                rules = rules.select(keep)
            alive, choice = alive[keep], choice[keep]
            row_max_lens, row_log_prob = row_max_lens[keep], row_log_prob[keep]
            shortest = int(row_max_lens.min())
        tokens = choice[:, None]

    return [
        Hypothesis(row[: n - 1], lp, sc)
        for row, n, lp, sc in zip(
            out.tolist(), length.tolist(), log_prob.tolist(), score.tolist(), strict=True
        )
    ]


def greedy_search(
    stepper: Stepper[S],
    src_ids: Tensor,
    *,
    alpha: float = DEFAULT_ALPHA,
    lengths: Lengths = DEFAULT_LENGTHS,
    rules: TokenRules | None = None,
) -> list[Hypothesis]:
    """Greedy decoding of a batch: the most probable allowed token at every step, until </s>.

    Equal to beam search with ``beam=1`` (tokens and scores). ``alpha`` only sets the reported
    ``score``; the tokens do not depend on it. ``rules`` force prefixes; lexical constraints need beam
    search (:func:`~qkv.decode.beam.beam_search`, a beam of 1 is allowed) and raise ValueError here.

    Shapes: src_ids (batch, src_len), padded -> ``batch`` hypotheses, in input order.
    """
    if rules is not None and rules.has_constraints:
        raise ValueError("lexical constraints need beam search: use beam_search (beam=1 is allowed)")
    return left_to_right(stepper, src_ids, None, alpha=alpha, lengths=lengths, rules=rules)
