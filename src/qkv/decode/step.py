"""The decoding step: the one protocol every search strategy (greedy, beam, sampling) uses.

A strategy sees a model only through a :class:`Stepper`::

    state = stepper.encode(src_ids)                  # src_ids (batch, src_len) -> a state of batch rows
    log_probs, state = stepper.step(tokens, state)   # tokens (rows, 1), the newest token of each row
                                                     #   -> log_probs (rows, vocab) of the token after it
    state = state.select(indices)                    # keep, reorder or repeat rows (beam search)
    state = state.repeat_each(beam)                  # row i -> rows i*beam .. i*beam+beam-1 (beam start)

The first token fed is <s>; each later one is the token the strategy chose. :class:`CachedStepper` runs
one decoder position per step with the key/value cache (the prefix is never re-run);
:class:`UncachedStepper` re-runs the whole prefix every step and exists as the reference that proves the
cached path right (tests) and shows what the cache buys (``benchmarks/decode_scaling.py``). Because the
protocol is structural, a test can script a model whose output distribution is set by hand.

A state is consumed by ``step``: the cached stepper appends to the cache in place, so keep only the state
that ``step`` hands back.

:func:`constrain` holds the rules every strategy applies to a step's log-probs: never <pad> or <s>, no
</s> before ``min_len`` tokens, only </s> once a row has reached its maximum length.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Protocol, TypeVar

import torch
from torch import Tensor

from qkv import infer
from qkv.decode.wide import log_softmax_
from qkv.infer.stacks import StepDecoder, passes, step_decoder
from qkv.models.seq2seq import Encoded, Transformer
from qkv.nn.cache import KVCache

_Self = TypeVar("_Self", bound="DecodeState")


class DecodeState(Protocol):
    """Whatever a stepper carries from step to step for a batch of rows (encoder output, cache, prefix)."""

    def select(self: _Self, indices: Tensor, *, same_sources: bool = False, in_place: bool = False) -> _Self:
        """Keep rows ``indices`` (batch,) in that order; an index may repeat (one row per beam).

        ``same_sources=True`` promises that new row i decodes the same source sentence as old row i (beam
        search reordering the beams of each sentence, no sentence leaving): what depends only on the
        source (encoder output, cross-attention keys and values) may then stay where it is.
        ``in_place=True`` (with ``same_sources``) lets the state reuse and overwrite its own buffers,
        copying only the rows that move: the caller hands this state over and never reads it again.
        """
        ...

    def repeat_each(self: _Self, times: int) -> _Self:
        """Each row ``times`` times in a row: row i becomes rows ``i * times`` to ``i * times + times - 1``,
        all decoding source i (beam search's start: one row per beam). The same as
        ``select(arange(rows).repeat_interleave(times))``; a state may store what depends only on the
        source once per source instead of once per row.
        """
        ...


S = TypeVar("S", bound=DecodeState)


class Stepper(Protocol[S]):
    """A model seen one output token at a time.

    ``vocab_size`` is the target vocabulary; ``max_len`` the most output tokens (before </s>) the model
    can produce, e.g. the number of positions it knows minus one for <s>.
    """

    pad_id: int
    bos_id: int
    eos_id: int
    vocab_size: int
    max_len: int

    def encode(self, src_ids: Tensor) -> S:
        """Shapes: src_ids (batch, src_len), padded with ``pad_id`` -> a state of ``batch`` rows."""
        ...

    def step(self, tokens: Tensor, state: S) -> tuple[Tensor, S]:
        """Feed each row's newest token; return the log-probabilities of the next one and the new state.

        Shapes: tokens (rows, 1) -> log_probs (rows, vocab_size) float32, state of ``rows`` rows.
        The log-probs are a new tensor that the caller owns: strategies write the decoding rules into it.
        """
        ...


# -- the model behind the protocol ---------------------------------------------------------------


@dataclass
class CachedState:
    """The encoder output and the decoder's key/value cache for the rows being decoded.

    ``beams`` consecutive rows decode one source (beam search, after :meth:`repeat_each`): the encoder
    output and the cross-attention keys and values then hold one row per source, not per beam, and the
    fast decoder step lets a source's beams attend to them together (``rows / beams`` sources).
    """

    encoded: Encoded
    cache: KVCache
    beams: int = 1

    def select(self, indices: Tensor, *, same_sources: bool = False, in_place: bool = False) -> CachedState:
        if same_sources:
            cache = self.cache.select(indices, same_sources=True, in_place=in_place)
            return CachedState(self.encoded, cache, self.beams)
        if self.beams == 1:
            return CachedState(self.encoded.select(indices), self.cache.select(indices))
        sources = _sources_of(indices, self.beams)
        return CachedState(
            self.encoded.select(sources), self.cache.select(indices, sources=sources), self.beams
        )

    def repeat_each(self, times: int) -> CachedState:
        if self.beams != 1 or self.cache.length:
            # Only a fresh, ungrouped state is grouped; anything else repeats rows plainly.
            rows = torch.arange(self.cache_rows(), device=self.encoded.memory.device)
            return self.ungrouped().select(rows.repeat_interleave(times))
        return CachedState(self.encoded, self.cache, times)

    def cache_rows(self) -> int:
        """The number of decoder rows (sources times beams)."""
        return int(self.encoded.memory.shape[0]) * self.beams

    def ungrouped(self) -> CachedState:
        """The same state with one encoder row per decoder row (what ``Transformer.decode`` reads)."""
        if self.beams == 1:
            return self
        rows = torch.arange(self.cache_rows(), device=self.encoded.memory.device)
        sources = rows // self.beams
        return CachedState(self.encoded.select(sources), self.cache.select(rows, sources=sources))


def _sources_of(indices: Tensor, beams: int) -> Tensor:
    """The source of each group of ``beams`` new rows, for a selection that keeps groups whole.

    Shapes: indices (rows,) -> (rows / beams,). Beam search only reorders beams within a sentence or drops
    whole sentences; a selection that splits a group is a bug and raises.
    """
    if indices.numel() % beams:
        raise ValueError(f"selecting {indices.numel()} rows from groups of {beams} beams")
    groups = torch.div(indices.view(-1, beams), beams, rounding_mode="floor")  # (sources, beams)
    if not bool((groups == groups[:, :1]).all()):
        raise ValueError("a selection mixes beams of different sources")
    return groups[:, 0]


@dataclass
class UncachedState:
    """The encoder output and every token fed so far: prefix (rows, steps), starting with <s>."""

    encoded: Encoded
    prefix: Tensor

    def select(self, indices: Tensor, *, same_sources: bool = False, in_place: bool = False) -> UncachedState:
        encoded = self.encoded if same_sources else self.encoded.select(indices)
        return UncachedState(encoded, self.prefix.index_select(0, indices))

    def repeat_each(self, times: int) -> UncachedState:
        rows = self.prefix.shape[0]
        return self.select(torch.arange(rows, device=self.prefix.device).repeat_interleave(times))


class _ModelStepper:
    """The ids and limits a :class:`~qkv.models.seq2seq.Transformer` gives every stepper.

    The model should be in eval mode (dropout off); :func:`qkv.decode.decode` takes care of that.
    """

    def __init__(self, model: Transformer) -> None:
        config = model.config
        self.model = model
        self.pad_id = config.pad_id
        self.bos_id = config.bos_id
        self.eos_id = config.eos_id
        self.vocab_size = config.tgt_vocab_size
        self.max_len = config.max_positions - 1  # position 0 holds <s>

    @staticmethod
    def _log_probs(logits: Tensor) -> Tensor:
        """Shapes: logits (rows, tgt_len, vocab) -> log-probs (rows, vocab) of the last position.

        In float32 whatever the model's dtype, so scores add up the same way in bf16/fp16 runs.
        """
        return torch.log_softmax(logits[:, -1].float(), dim=-1)


class CachedStepper(_ModelStepper):
    """Incremental decoding: one decoder position per step, earlier keys and values from the cache.

    Where :func:`qkv.infer.backend` picks prepared weights (a CPU, float32, no gradients), the encoder runs
    as :class:`~qkv.infer.stacks.Passes` and the steps as :class:`~qkv.infer.stacks.StepDecoder` (the same
    layer functions, weights prepared once, for the rows of each batch's first step); ``fast=False``
    always takes the model's modules, the reference. ``int8=True`` runs the steps with int8 products (an
    approximation: ``qkv evaluate --int8`` measures what it costs in BLEU; the encoder stays float32).
    """

    def __init__(self, model: Transformer, *, fast: bool = True, int8: bool = False) -> None:
        super().__init__(model)
        if int8 and not fast:
            raise ValueError("int8 decoding is a mode of the fast step: it needs fast=True")
        self.fast = fast
        self.int8 = int8
        self._step_decoder: StepDecoder | None = None

    def encode(self, src_ids: Tensor) -> CachedState:
        if infer.backend(self.model, self.model.src_embed.weight, fast=self.fast) is not None:
            encoded = passes(self.model).encode(src_ids)
        else:
            encoded = self.model.encode(src_ids)
        return CachedState(encoded, self.model.new_cache())

    def step(self, tokens: Tensor, state: CachedState) -> tuple[Tensor, CachedState]:
        memory = state.encoded.memory
        if tokens.shape[1] == 1 and infer.backend(self.model, memory, fast=self.fast, int8=self.int8):
            if self._step_decoder is None or state.cache.length == 0:  # a new batch: prepared for its rows
                self._step_decoder = step_decoder(self.model, tokens.shape[0], int8=self.int8)
            logits = self._step_decoder.step(tokens, state.encoded, state.cache, beams=state.beams)
            return log_softmax_(logits), state  # (rows, vocab), in the step's own fresh logits
        if self.int8:
            raise ValueError("int8 decoding feeds one token per step")
        state = state.ungrouped()  # the reference reads one encoder row per decoder row
        decoded = self.model.decode(tokens, state.encoded, cache=state.cache)  # logits (rows, 1, vocab)
        if decoded.cache is None:
            raise RuntimeError("model.decode(..., cache=cache) must hand the cache back")
        return self._log_probs(decoded.logits), CachedState(state.encoded, decoded.cache)


class UncachedStepper(_ModelStepper):
    """The reference: every step re-runs the decoder over the whole prefix (quadratic in its length)."""

    def encode(self, src_ids: Tensor) -> UncachedState:
        empty = torch.empty(src_ids.shape[0], 0, dtype=torch.long, device=src_ids.device)
        return UncachedState(self.model.encode(src_ids), empty)

    def step(self, tokens: Tensor, state: UncachedState) -> tuple[Tensor, UncachedState]:
        prefix = torch.cat([state.prefix, tokens], dim=1)  # (rows, steps + 1)
        logits = self.model.decode(prefix, state.encoded).logits  # (rows, steps + 1, vocab)
        return self._log_probs(logits), UncachedState(state.encoded, prefix)


# -- rules shared by every strategy ------------------------------------------------------------------


def max_output_lengths(
    src_ids: Tensor, pad_id: int, *, max_len_a: float, max_len_b: int, max_len: int
) -> Tensor:
    """The most output tokens (before </s>) each sentence may get: ``a * src_len + b``, capped (fairseq).

    ``src_len`` counts the non-pad source tokens; the result is floored and clipped to [0, max_len].
    Shapes: src_ids (batch, src_len) -> (batch,) long.
    """
    src_len = (src_ids != pad_id).sum(dim=1).double()
    limit = torch.floor(max_len_a * src_len + max_len_b).long()
    return limit.clamp(min=0, max=max(max_len, 0))


@functools.lru_cache(maxsize=64)
def token_ids(ids: tuple[int, ...], device: torch.device) -> Tensor:
    """The ids as a long tensor on ``device``, made once (the rules apply them at every step); a normal
    tensor even when first asked for under ``torch.inference_mode()``, so autograd may use it later."""
    with torch.inference_mode(False):
        return torch.tensor(ids, dtype=torch.long, device=device)


def constrain(
    log_probs: Tensor,
    steps_done: int,
    max_lens: Tensor,
    *,
    min_len: int,
    pad_id: int,
    bos_id: int,
    eos_id: int,
    inplace: bool = False,
    some_at_max: bool | None = None,
) -> Tensor:
    """Apply the decoding rules to one step's log-probs; banned tokens get -inf.

    * <pad> and <s> are never produced (a <pad> in the prefix would also be masked out by an uncached
      decoder, so cached and uncached decoding would part ways);
    * </s> is banned while fewer than ``min_len`` tokens have been produced;
    * a row that has produced ``max_lens`` tokens may only end: every token but </s> is banned and </s>
      keeps its log-prob, so the hypothesis is scored like any other finished one (fairseq). This wins
      over ``min_len``.

    The allowed log-probs are not renormalised. ``steps_done`` is the number of tokens produced before
    this step (the same for every row). ``inplace=True`` writes into ``log_probs`` (the strategies own
    the step's log-probs; a (rows, vocab) copy per step is not free) and returns it. ``some_at_max=False``
    says the caller knows no row is at its limit (e.g. ``steps_done`` is below the smallest of
    ``max_lens``), which saves the check; None works it out.

    Shapes: log_probs (rows, vocab); max_lens (rows,) -> (rows, vocab).
    """
    banned = (pad_id, bos_id, eos_id) if steps_done < min_len else (pad_id, bos_id)
    at_max = None
    if some_at_max is None:
        at_max = steps_done >= max_lens  # (rows,)
        some_at_max = bool(at_max.any())
    eos_log_prob = log_probs[:, eos_id].clone() if some_at_max else None  # (rows,), before any ban
    constrained = log_probs if inplace else log_probs.clone()
    constrained.index_fill_(1, token_ids(banned, log_probs.device), float("-inf"))
    if eos_log_prob is not None:
        at_max = steps_done >= max_lens if at_max is None else at_max
        constrained.masked_fill_(at_max[:, None], float("-inf"))
        constrained[:, eos_id] = torch.where(at_max, eos_log_prob, constrained[:, eos_id])
    return constrained
