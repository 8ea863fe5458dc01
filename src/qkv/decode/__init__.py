"""Decoding: turn source ids into target ids with a trained encoder-decoder.

step       the protocol every strategy uses (state in, log-probs out, cache handed back); the cached
           stepper and the uncached reference; the length and token rules
constraints forced target prefixes and lexical constraints: per-hypothesis token rules
dba        dynamic beam allocation: beam search's candidates under lexical constraints
hypothesis what a search returns; the GNMT length penalty
lengths    the output length limits every search applies
greedy     greedy decoding, batched, finished sentences leave the batch
beam       beam search, batched over sentences and beams, cache reordered by select
sampling   temperature, top-k and top-p filters; seeded sampling
search     one search configuration (strategy and options), checked when made, run on a batch
sources    source id lists made ready for a model: empties set aside, over-long ones cut, batched
nat        decoding a non-autoregressive model (mask-predict)

:func:`decode` is the convenience entry: variable-length id lists in, hypotheses out, in input order::

    hyps = decode(model, [[5, 9, 2], [7, 2]], SearchConfig(beam=4))   # sources end with </s>, as in training
    best = [h[0].tokens for h in hyps]                                 # without <s> and </s>
    hyps = decode(model, sources, prefixes=[[8], []], constraints=[[[11, 12]], [[9], [13]]])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from qkv.decode.beam import beam_search
from qkv.decode.constraints import Phrase, TokenRules, check_constraints, check_prefixes, room_problem
from qkv.decode.greedy import greedy_search
from qkv.decode.hypothesis import Hypothesis, length_penalty
from qkv.decode.lengths import Lengths
from qkv.decode.sampling import apply_temperature, filter_logits, sample, top_k_filter, top_p_filter
from qkv.decode.search import DEFAULT_SEARCH, Method, SearchConfig
from qkv.decode.sources import pad_batch, prepare_sources
from qkv.decode.step import (
    CachedStepper,
    DecodeState,
    Stepper,
    UncachedStepper,
    constrain,
    max_output_lengths,
)
from qkv.models.seq2seq import Transformer
from qkv.nn.modes import eval_mode

__all__ = [
    "CachedStepper",
    "DecodeState",
    "Hypothesis",
    "Lengths",
    "Method",
    "SearchConfig",
    "Stepper",
    "TokenRules",
    "UncachedStepper",
    "apply_temperature",
    "beam_search",
    "constrain",
    "decode",
    "filter_logits",
    "greedy_search",
    "length_penalty",
    "max_output_lengths",
    "pad_batch",
    "prepare_sources",
    "sample",
    "top_k_filter",
    "top_p_filter",
    "translate_ids",
]


def decode(
    model: Transformer,
    sources: Sequence[Sequence[int]],
    search: SearchConfig = DEFAULT_SEARCH,
    *,
    batch_size: int = 32,
    cached: bool = True,
    int8: bool = False,
    prefixes: Sequence[Sequence[int]] | None = None,
    constraints: Sequence[Sequence[Sequence[int]]] | None = None,
    first_index: int = 0,
) -> list[list[Hypothesis]]:
    """Translate source id lists; for each, its best hypotheses (best first; one unless beam search with
    ``n_best`` > 1).

    ``sources`` are id lists as the model saw them in training (qkv's training appends </s>); lengths
    may differ. They are made ready by :func:`~qkv.decode.sources.prepare_sources`: sorted by length,
    cut into batches of ``batch_size`` sentences and padded with the model's pad id, and the results
    come back in input order. An empty source (no ids, or only </s>) gives one empty hypothesis without
    running the model. A source longer than the model's ``max_positions`` is truncated, with a warning.

    ``search`` picks the strategy and its options (:class:`~qkv.decode.search.SearchConfig`; the
    default is beam search with 4 beams). Sampling draws each sentence from its own generator, seeded
    from ``(search.seed, first_index + index in sources)``: the same seed and inputs draw the same
    outputs, whatever ``batch_size``; a caller that decodes a stream in pieces gives each piece the index
    of its first sentence in the stream (``first_index``), so a sentence's sample depends on its place in
    the stream, not on where the pieces were cut. Outputs have at most ``min(max_len_a * src_len + max_len_b, max_len,
    max_positions - 1)`` tokens and at least ``min_len`` (``search.lengths``).

    ``prefixes`` (one id list per source, [] for none) are forced right after <s>: every hypothesis of
    the sentence starts with its prefix, verbatim, and the prefix's log-probs count in ``log_prob`` and
    ``score``, as with fairseq's ``--prefix-size`` (greedy, beam and sampling). ``constraints`` (per
    source a list of phrases, each a non-empty id list; [] for none) must each appear contiguously in
    every hypothesis returned. A sentence is first searched without them: if its hypotheses already hold
    every phrase they are returned unchanged; if not, it is searched again by beam search with dynamic
    beam allocation (Post & Vilar, 2018); "greedy" runs that with one beam, "sample" raises ValueError
    (docs/decoding.md). The length limit of a sentence is raised to
    ``len(prefix) + sum(len(phrase))`` where that is more, so the guarantee always holds; ValueError
    if the model's positions cannot hold that many (:mod:`qkv.decode.constraints` has the rules and
    the checks on the ids; errors name the sentence and the phrase). An empty source with a prefix or
    constraints is decoded from ``[</s>]`` (so its output keeps them); without, it gives one empty
    hypothesis as before.

    ``cached=False`` uses the uncached reference stepper (slow;
    for tests and benchmarks). ``int8=True`` decodes with int8 weights and dynamically quantised
    activations (CPU, float32 models; faster, approximately the same outputs).

    Runs under ``torch.inference_mode()`` with the model in eval mode (its mode is restored after).
    """
    config = model.config
    special = {"<pad>": config.pad_id, "<s>": config.bos_id, "</s>": config.eos_id}
    vocab = config.tgt_vocab_size
    forced = (
        None
        if prefixes is None
        else check_prefixes(prefixes, len(sources), vocab_size=vocab, special=special)
    )
    phrases = None
    if constraints is not None:
        phrases = check_constraints(constraints, len(sources), vocab_size=vocab, special=special)
        for index, sentence_phrases in enumerate(phrases):
            if sentence_phrases and search.method == "sample":
                raise ValueError(
                    f"sentence {index}: lexical constraints need beam search (method='beam' or 'greedy'), "
                    "not sampling: a sample that must hold given phrases is not a sample of the model"
                )
    _check_room(forced, phrases, most=config.max_positions - 1)
    keep_empty = {i for i in range(len(sources)) if (forced and forced[i]) or (phrases and phrases[i])}
    batches = prepare_sources(
        sources,
        eos_id=config.eos_id,
        max_positions=config.max_positions,
        batch_size=batch_size,
        keep_empty=keep_empty,
    )
    device = next(model.parameters()).device
    if int8 and not cached:
        raise ValueError("int8=True needs the cached stepper (cached=True)")
    stepper: Stepper[Any] = CachedStepper(model, int8=int8) if cached else UncachedStepper(model)

    results: list[list[Hypothesis]] = [[Hypothesis([], 0.0, 0.0)] for _ in sources]
    with eval_mode(model), torch.inference_mode():
        for batch in batches:
            generators = None
            if search.method == "sample":
                generators = [search.sentence_generator(first_index + i, device) for i in batch.indices]
            rules = _rules_for(batch.indices, forced, phrases, device)
            found = search.run(stepper, batch.padded(config.pad_id, device), generators, rules=rules)
            for index, hyps in zip(batch.indices, found, strict=True):
                results[index] = hyps
    return results


def _check_room(
    prefixes: list[list[int]] | None, constraints: list[list[Phrase]] | None, *, most: int
) -> None:
    """ValueError naming the first sentence whose prefix and phrases need more than ``most`` tokens (the
    length limit is raised to fit them, but not past what the model's positions hold)."""
    count = len(prefixes if prefixes is not None else constraints or [])
    for index in range(count):
        needed = len(prefixes[index]) if prefixes is not None else 0
        needed += sum(len(p) for p in constraints[index]) if constraints is not None else 0
        problem = room_problem(needed, most)
        if problem:
            raise ValueError(f"sentence {index}: {problem}")


def _rules_for(
    indices: Sequence[int],
    prefixes: list[list[int]] | None,
    constraints: list[list[Phrase]] | None,
    device: torch.device,
) -> TokenRules | None:
    """The token rules of one batch (its sentences' input ``indices``); None when it has none to apply,
    so the search does no extra work."""
    batch_prefixes = None if prefixes is None else [prefixes[i] for i in indices]
    batch_constraints = None if constraints is None else [constraints[i] for i in indices]
    if not any(batch_prefixes or ()) and not any(batch_constraints or ()):
        return None
    return TokenRules.create(
        len(indices), prefixes=batch_prefixes, constraints=batch_constraints, device=device
    )


def translate_ids(
    model: Transformer,
    sources: Sequence[Sequence[int]],
    search: SearchConfig = DEFAULT_SEARCH,
    *,
    batch_size: int = 32,
    int8: bool = False,
) -> list[list[int]]:
    """The best output ids of each source (without <s>/</s>), in input order; [] for an empty source.

    A shortcut for :func:`decode` with the cached stepper.
    """
    found = decode(model, sources, search, batch_size=batch_size, int8=int8)
    return [hyps[0].tokens if hyps else [] for hyps in found]
