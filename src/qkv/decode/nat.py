"""Decoding a non-autoregressive model (:mod:`qkv.models.nat`): choose lengths, then predict every position.

single pass    predict the length, feed [MASK] at every position, take the argmax everywhere (Gu et al.,
               2018): one decoder pass, whatever the length.
length beam    the same for the ``length_beam`` most probable lengths of each sentence; the candidate with
               the best average token log-probability wins (or the best under an autoregressive teacher,
               :func:`teacher_scores`).
mask-predict   (Ghazvininejad et al., 2019) iteration t = 1 .. K-1 re-masks the n = T (K - t) / K least
               confident tokens of each candidate (T its length) and predicts them again from the rest;
               a token's confidence is its probability when it was last predicted. One iteration is the
               single pass.

A NAT output has no </s> and no <s>: those, <pad> and [MASK] are never produced. Hypotheses carry
``log_prob`` = the sum of the output tokens' log-probabilities and ``score`` = their mean (how the
candidates of the length beam are ranked).

:func:`translate_ids` is the convenience entry, as :func:`qkv.decode.decode` is for the autoregressive
model: id lists in (sources end with </s>), hypotheses out, in input order, batched by length.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from qkv.decode.hypothesis import Hypothesis
from qkv.models.nat import NATransformer
from qkv.models.seq2seq import Encoded, Transformer
from qkv.nn.modes import eval_mode


@dataclass
class NATIteration:
    """One decoder pass of mask-predict, for heat maps: the inputs it saw (with [MASK]s), what it output,
    and its attention weights per layer.

    inputs, tokens: (rows, tgt_len); self_weights: (rows, heads, tgt_len, tgt_len);
    cross_weights: (rows, heads, tgt_len, src_len). Rows are sentence-major: sentence i's length-beam
    candidates are rows i * length_beam .. (i + 1) * length_beam - 1.
    """

    inputs: Tensor
    tokens: Tensor
    self_weights: list[Tensor]
    cross_weights: list[Tensor]


def banned_log_probs(model: NATransformer, logits: Tensor) -> Tensor:
    """log-softmax of the decoder's logits with the special tokens (<pad>, <s>, </s>, [MASK]) at -inf.

    Shapes: (rows, tgt_len, vocab) -> (rows, tgt_len, vocab) float32.
    """
    c = model.config
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    banned = sorted({c.pad_id, c.bos_id, c.eos_id, c.mask_id})
    log_probs[..., banned] = float("-inf")
    return log_probs


def predict_lengths(
    model: NATransformer, encoded: Encoded, src_ids: Tensor, beam: int
) -> tuple[Tensor, Tensor]:
    """The ``beam`` most probable target lengths of each sentence and their log-probabilities.

    Lengths whose offset class is clipped at the edges are clamped to [1, max_positions].
    Shapes: src_ids (batch, src_len) -> lengths (batch, beam) long, log-probs (batch, beam), best first.
    """
    length_log_probs = torch.log_softmax(model.length_logits(encoded).float(), dim=-1)  # (batch, 2K + 1)
    beam = min(beam, length_log_probs.shape[1])
    top_log_probs, classes = length_log_probs.topk(beam, dim=-1)  # (batch, beam)
    return model.lengths_of_classes(classes, model.source_lengths(src_ids)), top_log_probs


def _masked_template(lengths: Tensor, mask_id: int, pad_id: int) -> Tensor:
    """All-[MASK] targets of the given lengths. Shapes: lengths (rows,) -> (rows, max length), padded."""
    positions = torch.arange(int(lengths.max()), device=lengths.device)[None, :]  # (1, tgt_len)
    is_real = positions < lengths[:, None]  # (rows, tgt_len)
    return torch.where(is_real, mask_id, pad_id)


def _candidates(
    tokens: Tensor, token_log_probs: Tensor, lengths: Tensor, batch: int, beam: int
) -> list[list[Hypothesis]]:
    """Hypotheses of each sentence from its ``beam`` rows, best average token log-prob first.

    Shapes: tokens, token_log_probs (batch * beam, tgt_len), lengths (batch * beam,).
    """
    is_real = torch.arange(tokens.shape[1], device=tokens.device)[None, :] < lengths[:, None]
    summed = token_log_probs.masked_fill(~is_real, 0.0).sum(dim=1)  # (rows,)
    mean = summed / lengths.clamp(min=1)
    found: list[list[Hypothesis]] = []
    rows_tokens = tokens.tolist()
    rows_lengths, rows_summed, rows_mean = lengths.tolist(), summed.tolist(), mean.tolist()
    for i in range(batch):
        hyps = [
            Hypothesis(rows_tokens[r][: rows_lengths[r]], rows_summed[r], rows_mean[r])
            for r in range(i * beam, (i + 1) * beam)
        ]
        found.append(sorted(hyps, key=lambda h: -h.score))
    return found


def single_pass(model: NATransformer, src_ids: Tensor, *, length_beam: int = 1) -> list[list[Hypothesis]]:
    """[MASK] at every position of each candidate length, one decoder pass, argmax at every position.

    Shapes: src_ids (batch, src_len), padded -> per sentence, its ``length_beam`` candidates, best first.
    """
    c = model.config
    batch = src_ids.shape[0]
    encoded = model.encode(src_ids)
    lengths, _ = predict_lengths(model, encoded, src_ids, length_beam)  # (batch, beam)
    beam = lengths.shape[1]
    rows = torch.arange(batch, device=src_ids.device).repeat_interleave(beam)  # (batch * beam,)
    lengths = lengths.reshape(-1)
    if beam > 1:
        encoded = encoded.select(rows)  # one row per candidate length
    log_probs = banned_log_probs(
        model, model.decode(_masked_template(lengths, c.mask_id, c.pad_id), encoded).logits
    )
    token_log_probs, tokens = log_probs.max(dim=-1)  # (rows, tgt_len)
    return _candidates(tokens, token_log_probs, lengths, batch, beam)


def mask_predict(
    model: NATransformer,
    src_ids: Tensor,
    *,
    iterations: int = 10,
    length_beam: int = 1,
    trace: list[NATIteration] | None = None,
) -> list[list[Hypothesis]]:
    """Mask-predict with ``iterations`` decoder passes per candidate length (Ghazvininejad et al., 2019).

    Pass 1 predicts every position from [MASK]s (the single pass). Pass t + 1 (t = 1 .. K - 1) re-masks
    the ``floor(T * (K - t) / K)`` tokens of lowest probability in each candidate of length T and predicts
    those again; the other tokens and their probabilities stay. With ``trace`` (a list), each pass is
    appended to it with its attention weights, for heat maps.

    Shapes: src_ids (batch, src_len), padded -> per sentence, its ``length_beam`` candidates, best first.
    """
    if iterations < 1:
        raise ValueError(f"iterations={iterations} must be at least 1")
    if length_beam < 1:
        raise ValueError(f"length_beam={length_beam} must be at least 1")
    c = model.config
    batch = src_ids.shape[0]
    need_weights = trace is not None
    encoded = model.encode(src_ids)
    lengths, _ = predict_lengths(model, encoded, src_ids, length_beam)
    beam = lengths.shape[1]
    rows = torch.arange(batch, device=src_ids.device).repeat_interleave(beam)
    encoded = encoded.select(rows)
    lengths = lengths.reshape(-1)  # (rows,)
    inputs = _masked_template(lengths, c.mask_id, c.pad_id)  # (rows, tgt_len)
    is_real = inputs != c.pad_id
    tokens = inputs.clone()
    token_log_probs = torch.zeros(inputs.shape, device=src_ids.device)  # (rows, tgt_len)
    for t in range(iterations):
        if t > 0:
            n_masked = (lengths * (iterations - t)) // iterations  # (rows,)
            if not bool((n_masked > 0).any()):
                break
            # Rank each row's real positions by confidence, least confident first; padding goes last.
            confidence = token_log_probs.masked_fill(~is_real, float("inf"))
            ranks = confidence.argsort(dim=1, stable=True).argsort(dim=1)  # (rows, tgt_len)
            remask = (ranks < n_masked[:, None]) & is_real
            inputs = tokens.masked_fill(remask, c.mask_id)
        is_masked = inputs == c.mask_id  # (rows, tgt_len)
        decoded = model.decode(inputs, encoded, need_weights=need_weights)
        best_log_probs, best = banned_log_probs(model, decoded.logits).max(dim=-1)  # (rows, tgt_len)
        tokens = torch.where(is_masked, best, tokens)
        token_log_probs = torch.where(is_masked, best_log_probs, token_log_probs)
        if trace is not None and decoded.self_weights is not None and decoded.cross_weights is not None:
            trace.append(NATIteration(inputs, tokens, decoded.self_weights, decoded.cross_weights))
    return _candidates(tokens, token_log_probs, lengths, batch, beam)


@torch.inference_mode()
def teacher_scores(
    teacher: Transformer, sources: Sequence[Sequence[int]], outputs: Sequence[Sequence[int]]
) -> list[float]:
    """Average log-probability per token (</s> included) of each output under an autoregressive model:
    how a length beam's candidates are rescored by the teacher (Gu et al., 2018, "noisy parallel decoding").

    ``sources`` end with </s>; ``outputs`` are bare target ids; both in the teacher's vocabulary.
    """
    c = teacher.config
    if len(sources) != len(outputs):
        raise ValueError(f"{len(sources)} sources but {len(outputs)} outputs to score")
    if not sources:
        return []
    device = next(teacher.parameters()).device

    def pad(seqs: Sequence[Sequence[int]]) -> Tensor:
        longest = max(len(s) for s in seqs)
        return torch.tensor([[*s, *[c.pad_id] * (longest - len(s))] for s in seqs], device=device)

    src = pad([list(s) or [c.eos_id] for s in sources])
    tgt_in = pad([[c.bos_id, *o] for o in outputs])
    tgt_out = pad([[*o, c.eos_id] for o in outputs])
    log_probs = torch.log_softmax(teacher(src, tgt_in).float(), dim=-1)  # (rows, tgt_len, vocab)
    gold = log_probs.gather(2, tgt_out[:, :, None]).squeeze(2).masked_fill(tgt_out == c.pad_id, 0.0)
    return (gold.sum(dim=1) / (tgt_out != c.pad_id).sum(dim=1)).tolist()  # type: ignore[no-any-return]


def translate_ids(
    model: NATransformer,
    sources: Sequence[Sequence[int]],
    *,
    iterations: int = 1,
    length_beam: int = 1,
    batch_size: int = 32,
) -> list[list[Hypothesis]]:
    """Translate source id lists with mask-predict (``iterations=1``: the single pass); for each, its
    ``length_beam`` candidates, best first, in input order.

    Sources are id lists as in training (ending in </s>); they are sorted by length and batched. An empty
    source (no ids, or only </s>) gives one empty hypothesis without running the model; one longer than
    ``max_positions`` is truncated with a warning. Runs under ``torch.inference_mode()`` in eval mode
    (the model's mode is restored after).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    c = model.config
    device = next(model.parameters()).device
    results: list[list[Hypothesis]] = [[Hypothesis([], 0.0, 0.0)] for _ in sources]
    prepared: dict[int, list[int]] = {}
    for index, source in enumerate(sources):
        ids = list(source)
        if not ids or ids == [c.eos_id]:
            continue
        if len(ids) > c.max_positions:
            warnings.warn(
                f"source {index} has {len(ids)} tokens, more than the model's {c.max_positions} "
                f"positions; truncated to {c.max_positions}",
                stacklevel=2,
            )
            ids = ids[: c.max_positions - 1] + [c.eos_id] if ids[-1] == c.eos_id else ids[: c.max_positions]
        prepared[index] = ids
    order = sorted(prepared, key=lambda i: len(prepared[i]), reverse=True)
    with eval_mode(model), torch.inference_mode():
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            longest = max(len(prepared[i]) for i in indices)
            src_ids = torch.tensor(
                [[*prepared[i], *[c.pad_id] * (longest - len(prepared[i]))] for i in indices],
                device=device,
            )
            found = (
                single_pass(model, src_ids, length_beam=length_beam)
                if iterations == 1
                else mask_predict(model, src_ids, iterations=iterations, length_beam=length_beam)
            )
            for index, hyps in zip(indices, found, strict=True):
                results[index] = hyps
    return results
