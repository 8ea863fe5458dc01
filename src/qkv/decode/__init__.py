"""Decoding: turn source ids into target ids with a trained encoder-decoder.

step       the protocol every strategy uses (state in, log-probs out, cache handed back); the cached
           stepper and the uncached reference; the length and token rules
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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from qkv.decode.beam import beam_search
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
) -> list[list[Hypothesis]]:
    """Translate source id lists; for each, its best hypotheses (best first; one unless beam search with
    ``n_best`` > 1).

    ``sources`` are id lists as the model saw them in training (qkv's training appends </s>); lengths
    may differ. They are made ready by :func:`~qkv.decode.sources.prepare_sources`: sorted by length,
    cut into batches of ``batch_size`` sentences and padded with the model's pad id, and the results
    come back in input order. An empty source (no ids, or only </s>) gives one empty hypothesis without
    running the model. A source longer than the model's ``max_positions`` is truncated, with a warning.

    ``search`` picks the strategy and its options (:class:`~qkv.decode.search.SearchConfig`; the
    default is beam search with 4 beams). Sampling draws from one generator seeded with
    ``search.seed`` per call: the same seed, inputs and ``batch_size`` draw the same outputs. Outputs
    have at most ``min(max_len_a * src_len + max_len_b, max_len, max_positions - 1)`` tokens and at
    least ``min_len`` (``search.lengths``). ``cached=False`` uses the uncached reference stepper (slow;
    for tests and benchmarks). ``int8=True`` decodes with int8 weights and dynamically quantised
    activations (CPU, float32 models; faster, approximately the same outputs).

    Runs under ``torch.inference_mode()`` with the model in eval mode (its mode is restored after).
    """
    config = model.config
    batches = prepare_sources(
        sources, eos_id=config.eos_id, max_positions=config.max_positions, batch_size=batch_size
    )
    device = next(model.parameters()).device
    generator = search.new_generator(device)
    if int8 and not cached:
        raise ValueError("int8=True needs the cached stepper (cached=True)")
    stepper: Stepper[Any] = CachedStepper(model, int8=int8) if cached else UncachedStepper(model)

    results: list[list[Hypothesis]] = [[Hypothesis([], 0.0, 0.0)] for _ in sources]
    with eval_mode(model), torch.inference_mode():
        for batch in batches:
            found = search.run(stepper, batch.padded(config.pad_id, device), generator)
            for index, hyps in zip(batch.indices, found, strict=True):
                results[index] = hyps
    return results


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
