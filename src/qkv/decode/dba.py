"""Dynamic beam allocation (Post & Vilar, 2018): beam search's candidates when outputs must hold phrases.

Plain beam search keeps the ``2 * beam`` best extensions of a sentence's live hypotheses. Under
lexical constraints those are mostly hypotheses that have met none of the phrases yet, and a phrase
started late has no room left to finish well. Dynamic beam allocation keeps the beam size fixed and
shares it among *banks*: a hypothesis's bank is how many constraint tokens it has met (the total
constraint tokens less :meth:`~qkv.decode.constraints.Phrases.needed`). One step, per sentence, as
fairseq's ``LexicallyConstrainedBeamSearch`` does (Hu et al., 2019, vectorised there, not here):

1. Candidates: the ``2 * beam`` best extensions over the whole beam, the best extension of each
   hypothesis, and, for each hypothesis, every token that carries an unmet phrase on (even if unlikely).
2. Each candidate's bank is worked out from its hypothesis's progress and its token; duplicates go.
3. Sorted by bank (highest first) then score, the candidates are dealt round robin: the best of every
   bank (highest bank first), then the second best of every bank, and so on; the first ``2 * beam``
   are returned in that order.

Beam search then treats them as it treats plain candidates, *in this order*: those among the first
``beam`` that end with </s> finish (only hypotheses with every phrase met may end), the first ``beam``
that do not end live on. The cost of a step does not grow with the number of phrases beyond the Python
bookkeeping of step 1 and 2, and the beam never grows (grid beam search, Hokamp & Liu 2017, keeps one
beam per number of met constraint tokens: its cost grows with the constraints).
"""

from __future__ import annotations

import torch
from torch import Tensor

from qkv.decode.constraints import TokenRules

NEG_INF = float("-inf")


def allocate(candidates: Tensor, rules: TokenRules, beam: int, eos_id: int) -> tuple[Tensor, Tensor]:
    """The ``2 * beam`` candidates of each sentence in dynamic-beam-allocation order.

    ``candidates`` holds each live hypothesis's score plus each token's log-prob (after the rules),
    sentence-major as in beam search; ``rules`` the progress of each of the ``n * beam`` hypotheses.
    Sentences without phrases get plain beam search's candidates (the best first).

    Shapes: candidates (n, beam * vocab) -> scores (n, 2 * beam), columns (n, 2 * beam) long
    (``column = beam_index * vocab + token``).
    """
    n, width = candidates.shape
    vocab, count = width // beam, 2 * beam
    top_score, top_index = candidates.topk(count, dim=1)  # (n, 2 * beam)
    row_best_score, row_best_token = candidates.view(n * beam, vocab).max(dim=1)  # (n * beam,)

    sentences = rules.sentence.tolist()
    # Tokens that carry a phrase on, per hypothesis, and their scores, gathered in one operation.
    carry_rows: list[int] = []
    carry_tokens: list[int] = []
    for row, (s, progress) in enumerate(zip(sentences, rules.progress, strict=True)):
        for token in sorted(rules.phrases[s].next_tokens(progress)):
            carry_rows.append(row)
            carry_tokens.append(token)
    flat = candidates.view(n * beam, vocab)
    carry_scores = flat[
        torch.tensor(carry_rows, dtype=torch.long), torch.tensor(carry_tokens, dtype=torch.long)
    ].tolist()

    out_score = top_score.clone()
    out_index = top_index.clone()
    top_scores, top_indices = top_score.tolist(), top_index.tolist()
    best_scores, best_tokens = row_best_score.tolist(), row_best_token.tolist()
    carried: list[list[tuple[float, int]]] = [[] for _ in range(n)]
    for row, token, score in zip(carry_rows, carry_tokens, carry_scores, strict=True):
        carried[row // beam].append((score, (row % beam) * vocab + token))
    for i in range(n):
        phrases = rules.phrases[sentences[i * beam]]
        if not phrases.phrases:
            continue  # plain beam search's candidates
        found: dict[int, float] = {}  # column -> score; the three sources overlap
        for score, column in zip(top_scores[i], top_indices[i], strict=True):
            found[column] = score
        for b in range(beam):
            found[b * vocab + best_tokens[i * beam + b]] = best_scores[i * beam + b]
        for score, column in carried[i]:
            found[column] = score
        banked = []
        dead = []
        for column, score in found.items():
            if score == NEG_INF:
                dead.append(column)
                continue
            b, token = divmod(column, vocab)
            progress = rules.progress[i * beam + b]
            after = progress if token == eos_id else phrases.advance(progress, token)
            banked.append((phrases.total - phrases.needed(after), score, column))
        banked.sort(key=lambda c: (-c[0], -c[1]))  # highest bank first, best first within a bank
        dealt = []
        rank, previous_bank = -1, None
        for bank, score, column in banked:
            rank = rank + 1 if bank == previous_bank else 0
            previous_bank = bank
            dealt.append((rank, -bank, score, column))
        dealt.sort(key=lambda c: (c[0], c[1]))  # round robin over the banks, stable within
        chosen = [(score, column) for _, _, score, column in dealt[:count]]
        chosen += [(NEG_INF, column) for column in dead[: count - len(chosen)]]
        if len(chosen) < count:  # fewer distinct candidates than slots: pad with dead ones
            used = {column for _, column in chosen}
            spare = (c for c in range(width) if c not in used)
            chosen += [(NEG_INF, next(spare)) for _ in range(count - len(chosen))]
        out_score[i] = torch.tensor([s for s, _ in chosen], dtype=out_score.dtype)
        out_index[i] = torch.tensor([c for _, c in chosen], dtype=torch.long)
    return out_score, out_index
