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

The length comes from the model's length predictor, or with the ``"cut"`` length method
(:class:`~qkv.config.NATConfig`) is the bound ``source length + max_length_offset``, every pass runs
over the bound's positions, and the output is what comes before the first </s> (the length beam then
has one length). A NAT output holds no </s> and no <s>: those (</s> only without the cut method),
<pad> and [MASK] are never produced. Hypotheses carry ``log_prob`` = the sum of the output tokens'
log-probabilities (with the cut method, the first </s>'s included) and ``score`` = their mean over the
output tokens (how the candidates of the length beam are ranked).

:func:`translate_ids` is the convenience entry, as :func:`qkv.decode.decode` is for the autoregressive
model: id lists in (sources end with </s>), hypotheses out, in input order, batched by length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from qkv import infer
from qkv.decode.hypothesis import Hypothesis
from qkv.decode.sources import pad_batch, prepare_sources
from qkv.decode.step import token_ids
from qkv.decode.wide import log_softmax_, row_max
from qkv.infer.stacks import Passes, passes
from qkv.models.nat import NATransformer
from qkv.models.seq2seq import Decoded, Encoded, EncoderDecoder, Transformer
from qkv.nn import masks
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


def _banned(model: NATransformer) -> list[int]:
    """The ids a NAT never outputs: <pad>, <s>, [MASK], and </s> unless the output is cut at it."""
    c = model.config
    ends = () if c.length_method == "cut" else (c.eos_id,)
    return sorted({c.pad_id, c.bos_id, c.mask_id, *ends})


def _cut_at(model: NATransformer, length_beam: int) -> int | None:
    """The id the outputs are cut at (</s>, the cut method) or None; ValueError for a length beam that
    the cut method cannot have (it has one length, the bound)."""
    c = model.config
    if c.length_method != "cut":
        return None
    if length_beam != 1:
        raise ValueError(
            f"length_beam={length_beam}: this NAT cuts its output at </s> (length method 'cut'), so it "
            "has one candidate length; use length_beam=1"
        )
    return c.eos_id


def banned_log_probs(model: NATransformer, logits: Tensor) -> Tensor:
    """log-softmax of the decoder's logits with the special tokens (<pad>, <s>, </s>, [MASK]) at -inf.

    Shapes: (rows, tgt_len, vocab) -> (rows, tgt_len, vocab) float32.
    """
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    log_probs[..., _banned(model)] = float("-inf")
    return log_probs


def _fast_passes_or_none(model: EncoderDecoder, *, fast: bool, int8: bool) -> Passes | None:
    """The model's prepared passes where :func:`qkv.infer.backend` picks them, else None (the modules run)."""
    chosen = infer.backend(model, model.src_embed.weight, fast=fast, int8=int8)
    return None if chosen is None else passes(model, int8=chosen == "int8")


class _Passes:
    """The encoder and the decoder passes of one batch: the model's modules (the reference, and the only
    way to get attention weights), or on a CPU at inference :class:`~qkv.infer.stacks.Passes`,
    which computes the cross-attention keys and values once for every pass and the logits of the
    [MASK] positions only."""

    def __init__(self, model: NATransformer, src_ids: Tensor, *, fast: bool, int8: bool = False) -> None:
        self.model = model
        self.fast = _fast_passes_or_none(model, fast=fast, int8=int8)
        self.encoded = self.fast.encode(src_ids) if self.fast is not None else model.encode(src_ids)
        self.cross: list[tuple[Tensor, Tensor]] | None = None
        # Whether no source token is padding (one sentence, or all of one length): checked once.
        self.unpadded = self.fast is not None and masks.none_if_all_allowed(self.encoded.may_attend) is None

    def select(self, rows: Tensor) -> None:
        """Keep the encoder output of batch rows ``rows`` (one per length candidate), before any pass."""
        self.encoded = self.encoded.select(rows)

    def lengths(self, src_ids: Tensor, beam: int) -> Tensor:
        """The ``beam`` most probable target lengths of each sentence, best first: what
        :func:`predict_lengths` gives, without the log-probabilities. Where nothing is padded (on the fast
        path) with fewer operators: the sum over every source position, the source length from the shape,
        the order of the logits (a log-softmax keeps it). With the cut method, the bound (``beam`` is 1).
        Shapes: src_ids (batch, src_len) -> (batch, beam).
        """
        if self.model.length_proj is None:
            return self.model.length_bounds(self.model.source_lengths(src_ids))[:, None]
        if not self.unpadded:
            return predict_lengths(self.model, self.encoded, src_ids, beam)[0]
        c, proj = self.model.config, self.model.length_proj
        logits = F.linear(self.encoded.memory.sum(dim=1), proj.weight, proj.bias)  # (batch, 2K + 1)
        if beam == 1:
            classes = logits.argmax(dim=1, keepdim=True)
        else:
            classes = logits.topk(min(beam, logits.shape[1]), dim=1).indices
        return classes.add_(src_ids.shape[1] - c.max_length_offset).clamp_(1, c.max_positions)

    def predict(
        self,
        inputs: Tensor,
        *,
        need_weights: bool = False,
        all_masked: bool = False,
        rows: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Decoded | None]:
        """One decoder pass: at every [MASK] of ``inputs``, the most probable allowed token and its
        log-probability (elsewhere: 0); and, from the reference path, the :class:`Decoded` (with the
        attention weights if asked for). ``all_masked``: the caller's word that ``inputs`` is [MASK]
        everywhere, without padding (a first pass), which saves checking. ``rows``: which rows of the
        batch ``inputs`` holds (default: all of them, in order).

        Shapes: inputs (rows, tgt_len) -> tokens (rows, tgt_len) long, log-probs (rows, tgt_len) float32.
        """
        if self.fast is None or need_weights:
            encoded = self.encoded if rows is None else self.encoded.select(rows)
            is_masked = inputs == self.model.config.mask_id  # (rows, tgt_len)
            decoded = self.model.decode(inputs, encoded, need_weights=need_weights)
            log_probs, tokens = banned_log_probs(self.model, decoded.logits).max(dim=-1)
            return tokens.masked_fill(~is_masked, 0), log_probs.masked_fill(~is_masked, 0.0), decoded
        if self.cross is None:
            self.cross = self.fast.cross_keys_values(self.encoded.memory)
        # The fast passes read the encoder only through these keys and values and the source mask.
        cross = self.cross if rows is None else [(k[rows], v[rows]) for k, v in self.cross]
        memory_may_attend = self.encoded.may_attend if rows is None else self.encoded.may_attend[rows]
        if all_masked:
            everywhere = True
        else:
            is_masked = inputs == self.model.config.mask_id
            everywhere = bool(is_masked.all())  # a first pass without padding: no gather, no scatter
        mask_id = self.model.config.mask_id if everywhere else None
        hidden = self.fast.decode_hidden(inputs, cross, memory_may_attend, causal=False, every_token=mask_id)
        logits = self.fast.logits(
            hidden.flatten(0, 1) if everywhere else hidden[is_masked]
        )  # (masked, vocab)
        # As the reference: log-softmax over every id, then the banned ids out. One fused kernel, not
        # logsumexp (a composite of several passes, about twice as slow).
        log_probs = log_softmax_(logits)
        banned = token_ids(tuple(_banned(self.model)), logits.device)
        best_log_probs, best = row_max(log_probs.index_fill_(1, banned, float("-inf")))
        if everywhere:
            return best.view(inputs.shape), best_log_probs.view(inputs.shape), None
        tokens = torch.zeros_like(inputs).masked_scatter_(is_masked, best)
        log_probs = torch.zeros(inputs.shape, device=inputs.device).masked_scatter_(is_masked, best_log_probs)
        return tokens, log_probs, None


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


def _masked_template(lengths: Tensor, mask_id: int, pad_id: int) -> tuple[Tensor, bool]:
    """All-[MASK] targets of the given lengths, and whether none is padded (all of one length).
    Shapes: lengths (rows,) -> (rows, max length), padded."""
    if lengths.shape[0] == 1:  # one candidate: its length, no padding, no comparisons
        return torch.full((1, int(lengths)), mask_id, device=lengths.device), True
    longest = int(lengths.max())
    if bool((lengths == longest).all()):  # all of one length: nothing to pad
        return torch.full((lengths.shape[0], longest), mask_id, device=lengths.device), True
    positions = torch.arange(longest, device=lengths.device)[None, :]  # (1, tgt_len)
    is_real = positions < lengths[:, None]  # (rows, tgt_len)
    return torch.where(is_real, mask_id, pad_id), False


def _candidates(
    tokens: Tensor,
    token_log_probs: Tensor,
    lengths: Tensor,
    batch: int,
    beam: int,
    cut_at: int | None = None,
) -> list[list[Hypothesis]]:
    """Hypotheses of each sentence from its ``beam`` rows, best average token log-prob first. With
    ``cut_at`` (the cut method's </s>), each row ends before its first ``cut_at``, whose log-prob counts
    in ``log_prob`` (as an autoregressive hypothesis's </s> does) but not in the per-token ``score``.

    Shapes: tokens, token_log_probs (batch * beam, tgt_len), lengths (batch * beam,).
    """
    # In Python from three host copies: a few dozen numbers per row, fewer calls than tensor arithmetic.
    rows_tokens, rows_log_probs, rows_lengths = tokens.tolist(), token_log_probs.tolist(), lengths.tolist()
    found: list[list[Hypothesis]] = []
    for i in range(batch):
        hyps = []
        for r in range(i * beam, (i + 1) * beam):
            row, n = rows_tokens[r], rows_lengths[r]
            ended = cut_at is not None and cut_at in row[:n]
            if ended:
                n = row.index(cut_at)
            summed = math.fsum(rows_log_probs[r][: n + 1 if ended else n])
            kept = summed - rows_log_probs[r][n] if ended else summed
            hyps.append(Hypothesis(row[:n], summed, kept / max(n, 1)))
        found.append(sorted(hyps, key=lambda h: -h.score))
    return found


def single_pass(
    model: NATransformer, src_ids: Tensor, *, length_beam: int = 1, fast: bool = True, int8: bool = False
) -> list[list[Hypothesis]]:
    """[MASK] at every position of each candidate length, one decoder pass, argmax at every position.

    ``fast=False`` runs the model's modules even where the fast CPU passes could (tests compare the two);
    ``int8=True`` runs the fast passes with int8 products (:mod:`qkv.infer.stacks`).

    Shapes: src_ids (batch, src_len), padded -> per sentence, its ``length_beam`` candidates, best first.
    """
    c = model.config
    cut_at = _cut_at(model, length_beam)
    batch = src_ids.shape[0]
    passes = _Passes(model, src_ids, fast=fast, int8=int8)
    lengths = passes.lengths(src_ids, length_beam)  # (batch, beam)
    beam = lengths.shape[1]
    lengths = lengths.reshape(-1)
    if beam > 1:  # one row per candidate length
        passes.select(torch.arange(batch, device=src_ids.device).repeat_interleave(beam))
    template, unpadded = _masked_template(lengths, c.mask_id, c.pad_id)
    tokens, token_log_probs, _ = passes.predict(template, all_masked=unpadded)
    return _candidates(tokens, token_log_probs, lengths, batch, beam, cut_at)


def mask_predict(
    model: NATransformer,
    src_ids: Tensor,
    *,
    iterations: int = 10,
    length_beam: int = 1,
    trace: list[NATIteration] | None = None,
    fast: bool = True,
    int8: bool = False,
    adaptive: bool = False,
) -> list[list[Hypothesis]]:
    """Mask-predict with ``iterations`` decoder passes per candidate length (Ghazvininejad et al., 2019).

    Pass 1 predicts every position from [MASK]s (the single pass). Pass t + 1 (t = 1 .. K - 1) re-masks
    the ``floor(T * (K - t) / K)`` tokens of lowest probability in each candidate of length T and predicts
    those again; the other tokens and their probabilities stay. With ``trace`` (a list), each pass is
    appended to it with its attention weights, for heat maps (the reference modules run then, as with
    ``fast=False``). ``int8=True``: the fast passes with int8 products.

    ``adaptive=True`` stops refining a candidate after the first pass that changes none of its tokens
    (the termination rule of DisCo's parallel easy-first decoding and of fairseq's adaptive iterative
    refinement, Kasai et al., 2020): K becomes a maximum. A stopped candidate keeps its tokens and their
    probabilities. Passes after the first run only over the candidates with a token to re-predict.

    Shapes: src_ids (batch, src_len), padded -> per sentence, its ``length_beam`` candidates, best first.
    """
    if iterations < 1:
        raise ValueError(f"iterations={iterations} must be at least 1")
    if length_beam < 1:
        raise ValueError(f"length_beam={length_beam} must be at least 1")
    c = model.config
    cut_at = _cut_at(model, length_beam)
    batch = src_ids.shape[0]
    need_weights = trace is not None
    passes = _Passes(model, src_ids, fast=fast and not need_weights, int8=int8)
    lengths = passes.lengths(src_ids, length_beam)
    beam = lengths.shape[1]
    passes.select(torch.arange(batch, device=src_ids.device).repeat_interleave(beam))
    lengths = lengths.reshape(-1)  # (rows,)
    inputs, unpadded = _masked_template(lengths, c.mask_id, c.pad_id)  # (rows, tgt_len)
    is_real = inputs != c.pad_id
    tokens = inputs.clone()
    token_log_probs = torch.zeros(inputs.shape, device=src_ids.device)  # (rows, tgt_len)
    changing = torch.ones_like(lengths, dtype=torch.bool)  # (rows,): adaptive stops the others
    for t in range(iterations):
        if t > 0:
            n_masked = (lengths * (iterations - t)) // iterations * changing  # (rows,)
            if not bool((n_masked > 0).any()):
                break
            # Rank each row's real positions by confidence, least confident first; padding goes last.
            confidence = token_log_probs.masked_fill(~is_real, float("inf"))
            ranks = confidence.argsort(dim=1, stable=True).argsort(dim=1)  # (rows, tgt_len)
            remask = (ranks < n_masked[:, None]) & is_real
            inputs = tokens.masked_fill(remask, c.mask_id)
        is_masked = inputs == c.mask_id  # (rows, tgt_len)
        # Later passes run only over the rows with a [MASK] (still changing, long enough to re-mask).
        rows = None if t == 0 or need_weights else is_masked.any(dim=1).nonzero().squeeze(1)
        if rows is None or rows.shape[0] == inputs.shape[0]:
            best, best_log_probs, decoded = passes.predict(
                inputs, need_weights=need_weights, all_masked=t == 0 and unpadded
            )
        else:  # cut to the longest of those rows
            width = int(lengths[rows].max())
            some, some_log_probs, decoded = passes.predict(inputs[rows, :width], rows=rows)
            best = torch.zeros_like(inputs)
            best[rows, :width] = some
            best_log_probs = torch.zeros(inputs.shape, device=inputs.device)
            best_log_probs[rows, :width] = some_log_probs
        if adaptive and t > 0:
            changing &= (is_masked & (best != tokens)).any(dim=1)  # stopped: no re-predicted token changed
        tokens = torch.where(is_masked, best, tokens)
        token_log_probs = torch.where(is_masked, best_log_probs, token_log_probs)
        if trace is not None and decoded is not None:
            if decoded.self_weights is not None and decoded.cross_weights is not None:
                trace.append(NATIteration(inputs, tokens, decoded.self_weights, decoded.cross_weights))
    return _candidates(tokens, token_log_probs, lengths, batch, beam, cut_at)


@torch.inference_mode()
def teacher_scores(
    teacher: Transformer,
    sources: Sequence[Sequence[int]],
    outputs: Sequence[Sequence[int]],
    *,
    fast: bool = True,
    int8: bool = False,
) -> list[float]:
    """Average log-probability per token (</s> included) of each output under an autoregressive model:
    how a length beam's candidates are rescored by the teacher (Gu et al., 2018, "noisy parallel decoding").

    ``sources`` end with </s>; ``outputs`` are bare target ids; both in the teacher's vocabulary. Each
    distinct source is encoded once (a length beam repeats it per candidate); one teacher-forced pass
    scores every output, through :mod:`qkv.infer.stacks` on a CPU unless ``fast=False``
    (``int8=True``: with int8 products).
    """
    c = teacher.config
    if len(sources) != len(outputs):
        raise ValueError(f"{len(sources)} sources but {len(outputs)} outputs to score")
    if not sources:
        return []
    device = next(teacher.parameters()).device

    def pad(seqs: Sequence[Sequence[int]]) -> Tensor:
        return pad_batch(seqs, c.pad_id, device)

    distinct: dict[tuple[int, ...], int] = {}
    source_row = [distinct.setdefault(tuple(s) or (c.eos_id,), len(distinct)) for s in sources]
    src = pad(list(distinct))  # (distinct sources, src_len)
    rows = torch.tensor(source_row, device=device)  # (outputs,): each output's source row
    tgt_in = pad([[c.bos_id, *o] for o in outputs])  # (outputs, tgt_len)
    tgt_out = pad([[*o, c.eos_id] for o in outputs])
    is_real = tgt_out != c.pad_id
    passes = _fast_passes_or_none(teacher, fast=fast, int8=int8)
    if passes is None:
        encoded = teacher.encode(src).select(rows)
        logits = teacher.decode(tgt_in, encoded, logits_at=is_real).logits.float()  # (real positions, vocab)
    else:
        encoded = passes.encode(src)
        cross = [(k[rows], v[rows]) for k, v in passes.cross_keys_values(encoded.memory)]
        hidden = passes.decode_hidden(tgt_in, cross, encoded.may_attend[rows], causal=True)
        logits = passes.logits(hidden[is_real])
    gold = torch.log_softmax(logits, dim=-1).gather(1, tgt_out[is_real][:, None]).squeeze(1)  # see predict
    per_token = torch.zeros(tgt_out.shape, device=device).masked_scatter_(is_real, gold)  # (outputs, tgt_len)
    return (per_token.sum(dim=1) / is_real.sum(dim=1)).tolist()  # type: ignore[no-any-return]


def translate_ids(
    model: NATransformer,
    sources: Sequence[Sequence[int]],
    *,
    iterations: int = 1,
    length_beam: int = 1,
    batch_size: int = 32,
    int8: bool = False,
    adaptive: bool = False,
) -> list[list[Hypothesis]]:
    """Translate source id lists with mask-predict (``iterations=1``: the single pass); for each, its
    ``length_beam`` candidates, best first, in input order. ``adaptive``: see :func:`mask_predict`.

    Sources are id lists as in training (ending in </s>), made ready as for the autoregressive model
    (:func:`~qkv.decode.sources.prepare_sources`): sorted by length and batched; an empty source (no ids,
    or only </s>) gives one empty hypothesis without running the model; one longer than
    ``max_positions`` is truncated with a warning. Runs under ``torch.inference_mode()`` in eval mode
    (the model's mode is restored after); ``int8=True`` with int8 products (CPU, float32 models only).
    """
    c = model.config
    batches = prepare_sources(sources, eos_id=c.eos_id, max_positions=c.max_positions, batch_size=batch_size)
    device = next(model.parameters()).device
    results: list[list[Hypothesis]] = [[Hypothesis([], 0.0, 0.0)] for _ in sources]
    with eval_mode(model), torch.inference_mode():
        for batch in batches:
            src_ids = batch.padded(c.pad_id, device)
            found = (
                single_pass(model, src_ids, length_beam=length_beam, int8=int8)
                if iterations == 1
                else mask_predict(
                    model,
                    src_ids,
                    iterations=iterations,
                    length_beam=length_beam,
                    int8=int8,
                    adaptive=adaptive,
                )
            )
            for index, hyps in zip(batch.indices, found, strict=True):
                results[index] = hyps
    return results
