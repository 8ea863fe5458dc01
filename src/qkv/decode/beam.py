"""Beam search, batched over sentences and beams: one decoder step per output position for all of them.

The rows of the state are (sentence, beam) pairs, ``n * beam`` of them for ``n`` sentences still
searching. One step, for every sentence at once (the standard fairseq procedure):

1. Each live hypothesis is extended by every allowed token: ``live_score + log p(token)``, giving
   ``beam * vocab`` candidates per sentence; the best ``2 * beam`` are kept (at most ``beam`` of them end
   with </s>, one per live hypothesis, so at least ``beam`` do not).
2. Candidates ending with </s> that rank among the best ``beam`` are *finished*: they are scored with the
   length penalty, ``log_prob / lp(length)``, and merged into the sentence's finished list, which keeps
   the best ``beam``.
3. The best ``beam`` candidates that do not end become the live hypotheses of the next step; the cache
   rows are reordered with ``select`` to follow them.
4. A sentence is done, and leaves the batch, when it has no live hypothesis left (a hypothesis at its
   maximum length may only take </s>, so this always happens), or when it has ``beam`` finished ones and

   * ``early_stopping=True`` (the default; fairseq's behaviour): nothing more is needed;
   * ``early_stopping=False``: no live hypothesis can beat the worst finished one any more. Log-probs
     only fall as tokens are added, so a live hypothesis with log-prob ``s <= 0`` and ``t`` tokens can at
     best end with ``s / lp(n)`` for some final length ``n`` in ``[t + 1, max_len + 1]``; ``lp`` is
     monotone, so the best of the two ends of that range is a true upper bound. With this rule, beam
     search keeps going while the length penalty could still reward a longer live hypothesis.

At the start every sentence has one live hypothesis (<s>); the other beams score -inf, so the first step
does not pick ``beam`` copies of the same token. Candidates at -inf (a tiny vocabulary, banned tokens) are
never finished and never win; they ride along as dead rows.
"""

from __future__ import annotations

from itertools import count

import torch
from torch import Tensor

from qkv.decode.constraints import TokenRules
from qkv.decode.dba import allocate
from qkv.decode.hypothesis import DEFAULT_ALPHA, Hypothesis, length_penalty
from qkv.decode.lengths import DEFAULT_LENGTHS, Lengths
from qkv.decode.step import S, Stepper, constrain
from qkv.decode.wide import top_candidates

NEG_INF = float("-inf")


def _gather_beams(x: Tensor, beams: Tensor) -> Tensor:
    """Pick per-sentence beams. Shapes: x (n, beam, length), beams (n, k) -> (n, k, length)."""
    return x.gather(1, beams[:, :, None].expand(-1, -1, x.shape[2]))


def beam_search(
    stepper: Stepper[S],
    src_ids: Tensor,
    *,
    beam: int = 4,
    alpha: float = DEFAULT_ALPHA,
    early_stopping: bool = True,
    n_best: int | None = None,
    lengths: Lengths = DEFAULT_LENGTHS,
    rules: TokenRules | None = None,
) -> list[list[Hypothesis]]:
    """Beam search for a batch of sentences; the n best finished hypotheses of each, best first.

    ``alpha`` is the length penalty exponent (:func:`~qkv.decode.hypothesis.length_penalty`);
    ``early_stopping`` picks the stopping rule described in the module docstring; ``n_best`` (default
    ``beam``) caps how many hypotheses are returned per sentence. ``lengths`` limits the outputs as in
    greedy decoding (:class:`~qkv.decode.lengths.Lengths`). ``beam=1`` is greedy decoding.

    ``rules`` (one row per sentence of the batch) force prefixes and enforce lexical constraints
    (:mod:`qkv.decode.constraints`); with constraints the candidates of each step are chosen by dynamic
    beam allocation (:mod:`qkv.decode.dba`), so the hypotheses of a sentence are no longer ranked by
    score while they search (the finished ones still are).

    Shapes: src_ids (batch, src_len), padded with ``stepper.pad_id`` -> ``batch`` lists of hypotheses.
    """
    if beam < 1:
        raise ValueError(f"beam={beam} must be at least 1")
    if n_best is not None and n_best < 1:
        raise ValueError(f"n_best={n_best} must be at least 1")
    n_best = beam if n_best is None else min(n_best, beam)
    k, vocab = beam, stepper.vocab_size
    batch, device = src_ids.shape[0], src_ids.device
    if batch == 0:
        return []
    max_lens = lengths.limits(stepper, src_ids)  # (batch,)
    if rules is not None:
        max_lens = rules.limits(max_lens, stepper.max_len)
        rules = rules.repeat_each(k)
    allocates = rules is not None and rules.has_constraints
    min_len = lengths.min_len
    width = int(max_lens.max()) + 1  # the longest finished hypothesis, </s> included
    # Before the shortest limit no row can be at its maximum: constrain skips that check (as greedy does).
    shortest_limit = int(max_lens.min())

    # Per active sentence; rows of the state are sentence-major: row = sentence * k + beam.
    sentence = torch.arange(batch, device=device)  # input index of each active sentence, (n,)
    live_score = torch.full((batch, k), NEG_INF, device=device)  # log-probs so far, (n, k)
    live_score[:, 0] = 0.0
    live_tokens = torch.empty(batch, k, 0, dtype=torch.long, device=device)  # (n, k, steps)
    fin_score = torch.full((batch, k), NEG_INF, device=device)  # penalised, best first, (n, k)
    fin_log_prob = torch.full((batch, k), NEG_INF, device=device)
    fin_tokens = torch.full((batch, k, width), stepper.pad_id, dtype=torch.long, device=device)
    fin_length = torch.zeros(batch, k, dtype=torch.long, device=device)  # tokens including </s>
    results: list[list[Hypothesis]] = [[] for _ in range(batch)]

    state = stepper.encode(src_ids).repeat_each(k)  # (batch * k) rows, sentence-major
    tokens = torch.full((batch * k, 1), stepper.bos_id, dtype=torch.long, device=device)
    row_max_lens = max_lens.repeat_interleave(k)  # (n * k,): worked out again when sentences leave
    for steps_done in count():
        n = sentence.numel()
        log_probs, state = stepper.step(tokens, state)  # (n * k, vocab)
        log_probs = constrain(
            log_probs,
            steps_done,
            row_max_lens,
            min_len=min_len,
            pad_id=stepper.pad_id,
            bos_id=stepper.bos_id,
            eos_id=stepper.eos_id,
            inplace=True,
            some_at_max=None if steps_done >= shortest_limit else False,
        )
        if rules is not None:
            rules.restrict(log_probs, steps_done, row_max_lens, stepper.eos_id)
        # 1. Extend every live hypothesis by every token; keep the best 2k per sentence (or, under
        # constraints, 2k in the order of dynamic beam allocation).
        # In place: the strategy owns the step's log-probs, and a (rows, vocab) sum per step is not free.
        candidates = log_probs.add_(live_score.view(n * k, 1)).view(n, k * vocab)
        if allocates:
            assert rules is not None
            top_score, top_index = allocate(candidates, rules, k, stepper.eos_id)  # (n, 2k)
        else:
            top_score, top_index = top_candidates(candidates, 2 * k)  # (n, 2k), best first
        from_beam, token = top_index // vocab, top_index % vocab  # (n, 2k)
        ends = token == stepper.eos_id

        # 2. Candidates ending with </s> among the best k are finished.
        finishing = ends[:, :k] & torch.isfinite(top_score[:, :k])  # (n, k)
        if bool(finishing.any()):
            new_log_prob = top_score[:, :k].masked_fill(~finishing, NEG_INF)
            new_score = new_log_prob / length_penalty(steps_done + 1, alpha)
            new_tokens = torch.full((n, k, width), stepper.pad_id, dtype=torch.long, device=device)
            new_tokens[:, :, :steps_done] = _gather_beams(live_tokens, from_beam[:, :k])
            new_tokens[:, :, steps_done] = stepper.eos_id
            new_length = torch.full((n, k), steps_done + 1, dtype=torch.long, device=device)
            # Merge with the finished list and keep the best k (ties: the earlier finished first).
            fin_score, best = torch.cat([fin_score, new_score], dim=1).topk(k, dim=1)  # (n, k)
            fin_log_prob = torch.cat([fin_log_prob, new_log_prob], dim=1).gather(1, best)
            fin_length = torch.cat([fin_length, new_length], dim=1).gather(1, best)
            fin_tokens = _gather_beams(torch.cat([fin_tokens, new_tokens], dim=1), best)

        # 3. The best k candidates that do not end live on (sort the ending ones behind the others).
        order = torch.arange(2 * k, device=device) + ends.long() * (2 * k)  # (n, 2k)
        keep = order.argsort(dim=1)[:, :k]  # (n, k)
        live_score = top_score.gather(1, keep)
        beams = from_beam.gather(1, keep)  # the hypothesis each new one extends
        next_token = token.gather(1, keep)
        live_tokens = torch.cat([_gather_beams(live_tokens, beams), next_token[:, :, None]], dim=2)
        rows = (torch.arange(n, device=device)[:, None] * k + beams).view(-1)  # (n * k,)

        # 4. Which sentences are done.
        has_live = torch.isfinite(live_score).any(dim=1)  # (n,)
        is_full = torch.isfinite(fin_score).all(dim=1)  # k finished hypotheses
        if early_stopping:
            is_done = is_full | ~has_live
        else:
            best_live = live_score.max(dim=1).values  # (n,), <= 0
            shortest = length_penalty(steps_done + 2, alpha)  # a live hypothesis needs one more token
            longest = length_penalty(max_lens[sentence] + 1, alpha)  # (n,)
            bound = torch.maximum(best_live / shortest, best_live / longest)
            is_done = (is_full & (bound <= fin_score[:, -1])) | ~has_live

        some_done = bool(is_done.any())
        if some_done:
            _collect(
                results,
                sentence[is_done],
                fin_tokens[is_done],
                fin_length[is_done],
                fin_log_prob[is_done],
                fin_score[is_done],
                n_best,
            )
            still = (~is_done).nonzero().squeeze(1)  # (n',)
            if still.numel() == 0:
                break
            sentence = sentence[still]
            live_score, live_tokens = live_score[still], live_tokens[still]
            fin_score, fin_log_prob = fin_score[still], fin_log_prob[still]
            fin_tokens, fin_length = fin_tokens[still], fin_length[still]
            rows = rows.view(n, k)[still].view(-1)
            row_max_lens = max_lens[sentence].repeat_interleave(k)
        # Rows only trade places within their sentence unless a sentence left: then the encoder output
        # and cross-attention keys/values (the same for all beams of a sentence) need not be copied, and
        # the cache may be reordered in place (the old state is not read again).
        state = state.select(rows, same_sources=not some_done, in_place=not some_done)
        tokens = live_tokens[:, :, -1].reshape(-1, 1)  # (n' * k, 1)
        if rules is not None:
            rules = rules.select(rows).advance(tokens.view(-1))
    return results


def _collect(
    results: list[list[Hypothesis]],
    sentence: Tensor,
    tokens: Tensor,
    length: Tensor,
    log_prob: Tensor,
    score: Tensor,
    n_best: int,
) -> None:
    """Store the finished hypotheses of done sentences (already best first), skipping empty slots.

    Shapes: sentence (d,); tokens (d, k, width); length, log_prob, score (d, k).
    """
    rows = zip(
        sentence.tolist(), tokens.tolist(), length.tolist(), log_prob.tolist(), score.tolist(), strict=True
    )
    for index, hyp_tokens, hyp_length, hyp_log_prob, hyp_score in rows:
        results[index] = [
            Hypothesis(t[: n - 1], lp, sc)
            for t, n, lp, sc in zip(hyp_tokens, hyp_length, hyp_log_prob, hyp_score, strict=True)
            if sc != NEG_INF
        ][:n_best]
