"""Source id lists made ready for a model, the same way for every decoder (autoregressive and not).

Empty sources (no ids, or only </s>) are set aside: they translate to nothing without running the model.
A source longer than the model's positions is truncated, with a warning, keeping its final </s>. The
rest are sorted longest first and cut into batches, so sentences of similar length share a batch and
little of it is padding.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


def pad_batch(sources: Sequence[Sequence[int]], pad_id: int, device: torch.device | None = None) -> Tensor:
    """Stack id lists into one tensor, padded on the right. Shapes: -> (len(sources), longest)."""
    longest = max((len(s) for s in sources), default=0)
    ids = torch.full((len(sources), longest), pad_id, dtype=torch.long)
    for row, source in enumerate(sources):
        ids[row, : len(source)] = torch.tensor(list(source), dtype=torch.long)
    return ids.to(device) if device is not None else ids


@dataclass(frozen=True)
class SourceBatch:
    """Sources decoded together: where each was in the input, and its ids (longest first, truncated)."""

    indices: list[int]
    ids: list[list[int]]

    def padded(self, pad_id: int, device: torch.device | None = None) -> Tensor:
        """The ids as one tensor padded on the right. Shapes: -> (len(indices), longest)."""
        return pad_batch(self.ids, pad_id, device)


def prepare_sources(
    sources: Sequence[Sequence[int]],
    *,
    eos_id: int,
    max_positions: int,
    batch_size: int,
    keep_empty: Collection[int] = (),
) -> list[SourceBatch]:
    """The batches of ``batch_size`` sentences to decode, longest sources first; empty sources are in none,
    except those whose index is in ``keep_empty``: they are decoded from ``[eos_id]`` (e.g. an empty
    source with a forced prefix).

    ``sources`` are id lists as the model saw them in training (ending with </s>). One longer than
    ``max_positions`` is cut to its first ``max_positions - 1`` ids and its </s> (or its first
    ``max_positions`` ids where it has no </s>), with a warning that names the line calling this
    function's caller (:func:`qkv.decode.decode` or :func:`qkv.decode.nat.translate_ids`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    prepared: dict[int, list[int]] = {}
    for index, source in enumerate(sources):
        ids = list(source)
        if not ids or ids == [eos_id]:
            if index not in keep_empty:
                continue  # empty in, empty out: nothing to encode
            ids = [eos_id]
        if len(ids) > max_positions:
            warnings.warn(
                f"source {index} has {len(ids)} tokens, more than the model's {max_positions} "
                f"positions; truncated to {max_positions}",
                stacklevel=3,
            )
            ends = ids[-1] == eos_id
            ids = ids[: max_positions - 1] + [eos_id] if ends else ids[:max_positions]
        prepared[index] = ids
    order = sorted(prepared, key=lambda i: len(prepared[i]), reverse=True)  # stable: ties keep input order
    return [
        SourceBatch(indices, [prepared[i] for i in indices])
        for indices in (order[start : start + batch_size] for start in range(0, len(order), batch_size))
    ]
