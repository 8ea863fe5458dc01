"""Token-budget batches: examples of similar length grouped so that padding stays small.

A batch is an array of example indices. Its cost is its padded size, ``max(length) * count``, taken on the
source and the target side and the larger of the two kept; :func:`make_batches` keeps every batch within
``max_tokens`` (an example longer than the budget alone forms a batch of its own).

The order of an epoch is a pure function of ``(seed, epoch)``: examples are sorted by length with a random
tie-break and the batches are then shuffled, both from a numpy ``Generator`` seeded with the pair (never
numpy's or torch's global state). So a :class:`BatchPosition` — the epoch and how many of its batches were
already used — is all that training state needs to resume on the very same batch.

Lengths are numpy arrays and batches are slices of one index array, so an epoch of millions of examples
costs a few bytes per example (:mod:`qkv.data.prepared` keeps the lengths of a corpus on disk that way).

Masks are not built here: :func:`collate` pads token ids with the pad id, and the model builds its masks
from the ids and the pad id.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

Lengths = Sequence[int] | npt.NDArray[np.integer]
Batch = npt.NDArray[np.signedinteger]  # example indices (int32, or int64 past 2**31 examples)

# Mixed into every epoch's seed, so that the batch order never shares a random stream with another use of
# the same (seed, epoch) pair.
_STREAM = 0x716B762E62617463  # "qkv.batc"


def _epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([_STREAM, seed, epoch]))


def _checked_lengths(name: str, lens: Lengths) -> npt.NDArray[np.integer]:
    array = np.asarray(lens)
    if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise ValueError(
            f"{name} must be one whole number per example, got shape {array.shape} {array.dtype}"
        )
    if not np.issubdtype(array.dtype, np.signedinteger):
        return array  # unsigned (a prepared corpus's index): nothing to look for
    negative = np.flatnonzero(array < 0)
    if negative.size:
        raise ValueError(f"{name}[{negative[0]}] is {array[negative[0]]}; lengths cannot be negative")
    return array


def make_batches(
    src_lens: Lengths,
    tgt_lens: Lengths,
    max_tokens: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    max_sentences: int | None = None,
) -> list[Batch]:
    """Group example indices into batches whose padded size stays within ``max_tokens``.

    ``src_lens[i]`` and ``tgt_lens[i]`` are the lengths of example i as the model will see them (count any
    BOS/EOS you add): lists or numpy arrays. Examples are sorted by (source length, target length); with
    ``shuffle`` ties are broken at random and the batch order is shuffled, both determined by ``(seed,
    epoch)``. Without ``shuffle`` the batches come in length order with ties in index order (for
    translating or scoring a file: the indices say where each output goes). ``max_sentences`` optionally
    caps the examples per batch as well. Each batch is a numpy array of indices (a view of one array).

    Every index appears in exactly one batch. A batch of n examples satisfies
    ``n * max(max src len, max tgt len) <= max_tokens`` unless n == 1 and that one example is longer than
    the budget on its own. A length of 0 counts as 1 so that empty sequences cannot make a batch unbounded.
    """
    src = _checked_lengths("src_lens", src_lens)
    tgt = _checked_lengths("tgt_lens", tgt_lens)
    if len(src) != len(tgt):
        raise ValueError(f"src_lens has {len(src)} entries but tgt_lens has {len(tgt)}; one per example")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    if max_sentences is not None and max_sentences < 1:
        raise ValueError(f"max_sentences must be at least 1 (or None), got {max_sentences}")

    rng = _epoch_rng(seed, epoch)
    count = len(src)
    index_type: type[np.signedinteger] = np.int32 if count < 2**31 else np.int64  # 4 bytes an example
    order: Batch
    # One sort of the whole index: the temporaries here (about 16 bytes an example at their peak) are
    # the largest memory batching needs; what stays is the order, 4 bytes an example.
    if shuffle:
        tie_break = rng.integers(0, 2**32, size=count, dtype=np.uint32)
        sorted_at = np.lexsort((tie_break, tgt, src))  # the last key sorts first
        del tie_break
    else:
        sorted_at = np.lexsort((tgt, src))  # stable: ties stay in index order
    order = sorted_at.astype(index_type)
    del sorted_at
    widths = np.maximum(src, tgt)
    np.maximum(widths, 1, out=widths)
    widths = widths[order]  # max(src, tgt, 1) of each example, in sorted order

    # Greedy packing, a batch at a time: the longest prefix of what is left whose k-th example keeps
    # k * (widest of the first k) within the budget. That product only grows with k, so the prefix ends at
    # its first example over the budget (always keeping the first example).
    cap = max_tokens if max_sentences is None else min(max_tokens, max_sentences)
    batches: list[Batch] = []
    start = 0
    while start < count:
        room = min(max(max_tokens // int(widths[start]), 1), cap, count - start)
        widest = np.maximum.accumulate(widths[start : start + room])
        over = np.arange(1, room + 1) * widest > max_tokens
        size = max(int(np.argmax(over)) if over.any() else room, 1)
        batches.append(order[start : start + size])
        start += size
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def shard(batches: Sequence[Batch], rank: int, world_size: int) -> list[Batch]:
    """The batches of one rank out of ``world_size``: every ``world_size``-th batch, starting at ``rank``.

    The tail that cannot be shared out evenly (fewer than ``world_size`` batches) is dropped, so every rank
    has the same number of batches and data-parallel steps stay in lockstep. The ranks' shards are disjoint.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    per_rank = len(batches) // world_size
    if per_rank == 0 and batches:
        raise ValueError(
            f"only {len(batches)} batches for {world_size} ranks; lower max_tokens or use fewer processes"
        )
    return list(batches[rank : per_rank * world_size : world_size])


@dataclass(frozen=True)
class BatchPosition:
    """Where a run stands in its stream of batches: ``index`` batches of ``epoch`` were already used.

    Since the batches of an epoch are a pure function of ``(seed, epoch)`` (and rank and world size), this
    is enough to resume: :func:`iter_batches` started from it yields the very batch that came next.
    Stored in training state as ``to_dict()`` (plain JSON).
    """

    epoch: int = 0
    index: int = 0

    def __post_init__(self) -> None:
        if self.epoch < 0 or self.index < 0:
            raise ValueError(
                f"epoch and index must be non-negative, got epoch={self.epoch}, index={self.index}"
            )

    def to_dict(self) -> dict[str, int]:
        """``{"epoch": ..., "index": ...}``, for JSON training state."""
        return {"epoch": self.epoch, "index": self.index}

    @classmethod
    def from_dict(cls, state: dict[str, int]) -> BatchPosition:
        """The inverse of :meth:`to_dict`."""
        return cls(epoch=int(state["epoch"]), index=int(state["index"]))


def iter_batches(
    src_lens: Lengths,
    tgt_lens: Lengths,
    max_tokens: int,
    *,
    seed: int,
    start: BatchPosition | None = None,
    rank: int = 0,
    world_size: int = 1,
    max_sentences: int | None = None,
) -> Iterator[tuple[Batch, BatchPosition]]:
    """Batches of this rank, epoch after epoch without end, from ``start`` (default: the very beginning).

    Yields ``(batch, resume_at)``: ``resume_at`` is the position just after ``batch``, the one to save once
    the batch has been trained on. The caller stops the loop (after so many steps or epochs).
    """
    if len(src_lens) == 0:
        raise ValueError("no examples to batch")
    position = start or BatchPosition()
    epoch, index = position.epoch, position.index
    while True:
        batches = make_batches(
            src_lens, tgt_lens, max_tokens, seed=seed, epoch=epoch, max_sentences=max_sentences
        )
        mine = shard(batches, rank, world_size)
        if index > len(mine):
            raise ValueError(
                f"cannot resume at batch {index} of epoch {epoch}: this epoch has only {len(mine)} batches "
                "here (were the data, max_tokens or world size changed since the checkpoint?)"
            )
        for i in range(index, len(mine)):
            yield mine[i], BatchPosition(epoch, i + 1)
        epoch, index = epoch + 1, 0


def collate(examples: Sequence[Sequence[int]], pad_id: int) -> Tensor:
    """Stack token-id sequences into one LongTensor, padding on the right with ``pad_id``.

    Shapes: ``len(examples)`` sequences of lengths L_i -> ``(batch, max_len)``, ``max_len = max(L_i)``.
    """
    if len(examples) == 0:
        raise ValueError("collate needs at least one example")
    max_len = max(len(example) for example in examples)
    ids = torch.full((len(examples), max_len), pad_id, dtype=torch.long)  # (batch, max_len)
    for row, example in enumerate(examples):
        if len(example):
            ids[row, : len(example)] = torch.as_tensor(example, dtype=torch.long)
    return ids
