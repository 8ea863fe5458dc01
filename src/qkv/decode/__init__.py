"""Decoding: turn source ids into target ids with a trained encoder-decoder.

step       the protocol every strategy uses (state in, log-probs out, cache handed back); the cached
           stepper and the uncached reference; the length and token rules
hypothesis what a search returns; the GNMT length penalty
greedy     greedy decoding, batched, finished sentences leave the batch
beam       beam search, batched over sentences and beams, cache reordered by select
sampling   temperature, top-k and top-p filters; seeded sampling

:func:`decode` is the convenience entry: variable-length id lists in, hypotheses out, in input order::

    hyps = decode(model, [[5, 9, 2], [7, 2]], method="beam", beam=4)   # sources end with </s>, as in training
    best = [h[0].tokens for h in hyps]                                  # without <s> and </s>
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from qkv.decode.beam import beam_search
from qkv.decode.greedy import DEFAULT_MAX_LEN, DEFAULT_MAX_LEN_A, DEFAULT_MAX_LEN_B, greedy_search
from qkv.decode.hypothesis import DEFAULT_ALPHA, Hypothesis, length_penalty
from qkv.decode.sampling import apply_temperature, filter_logits, sample, top_k_filter, top_p_filter
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

Method = Literal["greedy", "beam", "sample"]

__all__ = [
    "CachedStepper",
    "DecodeState",
    "Hypothesis",
    "Method",
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
    "sample",
    "top_k_filter",
    "top_p_filter",
    "translate_ids",
]


def pad_batch(sources: Sequence[Sequence[int]], pad_id: int, device: torch.device | None = None) -> Tensor:
    """Stack id lists into one tensor, padded on the right. Shapes: -> (len(sources), longest)."""
    longest = max((len(s) for s in sources), default=0)
    ids = torch.full((len(sources), longest), pad_id, dtype=torch.long)
    for row, source in enumerate(sources):
        ids[row, : len(source)] = torch.tensor(list(source), dtype=torch.long)
    return ids.to(device) if device is not None else ids


def _search(
    stepper: Stepper[Any],
    src_ids: Tensor,
    *,
    method: Method,
    beam: int,
    n_best: int,
    alpha: float,
    early_stopping: bool,
    max_len_a: float,
    max_len_b: int,
    max_len: int,
    min_len: int,
    temperature: float,
    top_k: int,
    top_p: float,
    generator: torch.Generator,
) -> list[list[Hypothesis]]:
    """Run one strategy on one padded batch. Shapes: src_ids (batch, src_len) -> batch lists."""
    if method == "beam":
        return beam_search(
            stepper,
            src_ids,
            beam=beam,
            alpha=alpha,
            early_stopping=early_stopping,
            n_best=n_best,
            max_len_a=max_len_a,
            max_len_b=max_len_b,
            max_len=max_len,
            min_len=min_len,
        )
    if method == "greedy":
        found = greedy_search(
            stepper,
            src_ids,
            alpha=alpha,
            max_len_a=max_len_a,
            max_len_b=max_len_b,
            max_len=max_len,
            min_len=min_len,
        )
        return [[h] for h in found]
    if method == "sample":
        found = sample(
            stepper,
            src_ids,
            generator=generator,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            alpha=alpha,
            max_len_a=max_len_a,
            max_len_b=max_len_b,
            max_len=max_len,
            min_len=min_len,
        )
        return [[h] for h in found]
    raise ValueError(f"method={method!r} must be 'greedy', 'beam' or 'sample'")


def decode(
    model: Transformer,
    sources: Sequence[Sequence[int]],
    *,
    method: Method = "beam",
    beam: int = 4,
    n_best: int = 1,
    alpha: float = DEFAULT_ALPHA,
    early_stopping: bool = True,
    max_len_a: float = DEFAULT_MAX_LEN_A,
    max_len_b: int = DEFAULT_MAX_LEN_B,
    max_len: int = DEFAULT_MAX_LEN,
    min_len: int = 0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 32,
    cached: bool = True,
    int8: bool = False,
) -> list[list[Hypothesis]]:
    """Translate source id lists; for each, its best hypotheses (best first; one unless beam and n_best > 1).

    ``sources`` are id lists as the model saw them in training (qkv's training appends </s>); lengths
    may differ. They are sorted by length, cut into batches of ``batch_size`` sentences and padded with
    the model's pad id, and the results come back in input order. An empty source (no ids, or only
    </s>) gives one empty hypothesis without running the model. A source longer than the model's
    ``max_positions`` is truncated, with a warning.

    ``method`` picks greedy decoding, beam search (``beam``, ``alpha``, ``early_stopping``, ``n_best``)
    or sampling (``temperature``, ``top_k``, ``top_p``, ``seed``: the same seed, inputs and
    ``batch_size`` draw the same outputs). Outputs have at most ``min(max_len_a * src_len + max_len_b,
    max_len, max_positions - 1)`` tokens and at least ``min_len``. ``cached=False`` uses the uncached
    reference stepper (slow; for tests and benchmarks). ``int8=True`` decodes with int8 weights and
    dynamically quantised activations (CPU, float32 models; faster, approximately the same outputs).

    Runs under ``torch.inference_mode()`` with the model in eval mode (its mode is restored after).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    config = model.config
    device = next(model.parameters()).device
    results: list[list[Hypothesis]] = [[Hypothesis([], 0.0, 0.0)] for _ in sources]
    prepared: dict[int, list[int]] = {}
    for index, source in enumerate(sources):
        ids = list(source)
        if not ids or ids == [config.eos_id]:
            continue  # empty in, empty out: nothing to encode
        if len(ids) > config.max_positions:
            warnings.warn(
                f"source {index} has {len(ids)} tokens, more than the model's {config.max_positions} "
                f"positions; truncated to {config.max_positions}",
                stacklevel=2,
            )
            ends = ids[-1] == config.eos_id
            ids = ids[: config.max_positions - 1] + [config.eos_id] if ends else ids[: config.max_positions]
        prepared[index] = ids
    # Longest first: sentences of similar length share a batch, so little of it is padding.
    order = sorted(prepared, key=lambda i: len(prepared[i]), reverse=True)
    generator = torch.Generator(device=device).manual_seed(seed)
    if int8 and not cached:
        raise ValueError("int8=True needs the cached stepper (cached=True)")
    stepper: Stepper[Any] = CachedStepper(model, int8=int8) if cached else UncachedStepper(model)

    with eval_mode(model), torch.inference_mode():
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            src_ids = pad_batch([prepared[i] for i in indices], config.pad_id, device)
            found = _search(
                stepper,
                src_ids,
                method=method,
                beam=beam,
                n_best=n_best,
                alpha=alpha,
                early_stopping=early_stopping,
                max_len_a=max_len_a,
                max_len_b=max_len_b,
                max_len=max_len,
                min_len=min_len,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                generator=generator,
            )
            for index, hyps in zip(indices, found, strict=True):
                results[index] = hyps
    return results


def translate_ids(
    model: Transformer,
    sources: Sequence[Sequence[int]],
    *,
    method: Method = "beam",
    beam: int = 4,
    alpha: float = DEFAULT_ALPHA,
    max_len_a: float = DEFAULT_MAX_LEN_A,
    max_len_b: int = DEFAULT_MAX_LEN_B,
    max_len: int = DEFAULT_MAX_LEN,
    min_len: int = 0,
    seed: int = 0,
    batch_size: int = 32,
    int8: bool = False,
) -> list[list[int]]:
    """The best output ids of each source (without <s>/</s>), in input order; [] for an empty source.

    A shortcut for :func:`decode` with its defaults for the options not listed here.
    """
    found = decode(
        model,
        sources,
        method=method,
        beam=beam,
        alpha=alpha,
        max_len_a=max_len_a,
        max_len_b=max_len_b,
        max_len=max_len,
        min_len=min_len,
        seed=seed,
        batch_size=batch_size,
        int8=int8,
    )
    return [hyps[0].tokens if hyps else [] for hyps in found]
