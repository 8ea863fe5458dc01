"""Token-budget batches: examples of similar length grouped so that padding stays small.

A batch is an array of example indices. Its cost is its padded size, ``max(length) * count``, taken on the
source and the target side and the larger of the two kept; :func:`make_batches` keeps every batch within
``max_tokens`` (an example longer than the budget alone forms a batch of its own).

The order of an epoch is a pure function of ``(seed, epoch)``: examples are sorted by length with a random
tie-break and the batches are then shuffled, both from a numpy ``Generator`` seeded with the pair (never
numpy's or torch's global state). So a :class:`BatchPosition` — the epoch and how many of its batches were
already used — is all that training state needs to resume on the very same batch.

A corpus of more than :data:`WINDOW` examples is batched a window at a time (:class:`EpochBatches`), as
Marian batches a maxi-batch at a time: a pseudo-random permutation of the whole corpus, computed on the fly
(:class:`Permutation`), deals the examples into windows of at most :data:`WINDOW`, and each window is sorted
and packed as above. What batching holds is one window's index arrays, whatever the size of the corpus, and
a corpus of one window is batched exactly as :func:`make_batches` batches it. Lengths come from a
:class:`LengthIndex`, which reads the lengths of a window's examples when asked (:mod:`qkv.data.prepared`
reads them from its shard files).

Masks are not built here: :func:`collate` pads token ids with the pad id, and the model builds its masks
from the ids and the pad id.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, overload

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

Lengths = Sequence[int] | npt.NDArray[np.integer]
Batch = npt.NDArray[np.signedinteger]  # example indices (int32, or int64 past 2**31 examples)

# Mixed into every epoch's seed, so that the batch order never shares a random stream with another use of
# the same (seed, epoch) pair.
_STREAM = 0x716B762E62617463  # "qkv.batc"


_PERMUTATION_STREAM = 0x716B762E7065726D  # "qkv.perm"
WINDOW = 2**19  # examples batched together, at most: a window's index arrays take a few MB
IntArray = npt.NDArray[np.int64]


def _epoch_rng(seed: int, epoch: int, window: int = 0) -> np.random.Generator:
    # Window 0 draws from the stream of a one-window epoch, so a corpus that fits one window is batched as
    # make_batches batches it.
    entropy = [_STREAM, seed, epoch] if window == 0 else [_STREAM, seed, epoch, window]
    return np.random.default_rng(np.random.SeedSequence(entropy))


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
    window: int = 0,
) -> list[Batch]:
    """Group example indices into batches whose padded size stays within ``max_tokens``.

    ``src_lens[i]`` and ``tgt_lens[i]`` are the lengths of example i as the model will see them (count any
    BOS/EOS you add): lists or numpy arrays. Examples are sorted by (source length, target length); with
    ``shuffle`` ties are broken at random and the batch order is shuffled, both determined by ``(seed,
    epoch)``. Without ``shuffle`` the batches come in length order with ties in index order (for
    translating or scoring a file: the indices say where each output goes). ``max_sentences`` optionally
    caps the examples per batch as well. Each batch is a numpy array of indices (a view of one array).
    ``window`` (of :class:`EpochBatches`) picks another random stream for each window of an epoch.

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

    rng = _epoch_rng(seed, epoch, window)
    count = len(src)
    index_type: type[np.signedinteger] = np.int32 if count < 2**31 else np.int64  # 4 bytes an example
    order: Batch
    # One sort of the examples given (in training, a window of the corpus): the temporaries here, about 16
    # bytes an example at their peak, are the largest memory batching needs.
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


class LengthIndex(Protocol):
    """The lengths of a dataset's examples as batching counts them, read for the examples asked about."""

    def __len__(self) -> int: ...

    def lengths_of(self, indices: IntArray) -> tuple[npt.NDArray[np.integer], npt.NDArray[np.integer]]:
        """(source lengths, target lengths) of the examples ``indices``, in their order."""
        ...


class ArrayLengths:
    """A :class:`LengthIndex` over two sequences of lengths, one entry per example (lists become arrays)."""

    def __init__(self, src_lens: Lengths, tgt_lens: Lengths) -> None:
        self.src = _checked_lengths("src_lens", src_lens)
        self.tgt = _checked_lengths("tgt_lens", tgt_lens)
        if len(self.src) != len(self.tgt):
            raise ValueError(
                f"src_lens has {len(self.src)} entries but tgt_lens has {len(self.tgt)}; one per example"
            )

    def __len__(self) -> int:
        return len(self.src)

    def lengths_of(self, indices: IntArray) -> tuple[npt.NDArray[np.integer], npt.NDArray[np.integer]]:
        return self.src[indices], self.tgt[indices]


LengthChange = Callable[
    [npt.NDArray[np.integer], npt.NDArray[np.integer]],
    tuple[npt.NDArray[np.integer], npt.NDArray[np.integer]],
]


class MappedLengths:
    """The lengths of ``base`` passed through ``change``, a vectorised function of (source, target) lengths:
    what a task adds to the pairs' own lengths (a <s>, a decoder bound)."""

    def __init__(self, base: LengthIndex, change: LengthChange) -> None:
        self.base, self.change = base, change

    def __len__(self) -> int:
        return len(self.base)

    def lengths_of(self, indices: IntArray) -> tuple[npt.NDArray[np.integer], npt.NDArray[np.integer]]:
        return self.change(*self.base.lengths_of(indices))


_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)  # SplitMix64's finaliser


def _mix(z: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    z = (z ^ (z >> np.uint64(30))) * _M1  # uint64 arithmetic wraps around, as the finaliser wants
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


class Permutation:
    """A pseudo-random permutation of ``range(count)``, computed for any positions without being stored.

    A Feistel network (:data:`ROUNDS` rounds of SplitMix64's mixing function under random keys) permutes
    the numbers of 2h bits, the fewest even number of bits that covers ``count``; a number it sends to
    ``count`` or beyond is sent on until it lands below ``count`` ("cycle walking"), which keeps the map a
    permutation of ``range(count)``. The keys are drawn from ``seed``.
    """

    ROUNDS = 6

    def __init__(self, count: int, seed: np.random.SeedSequence) -> None:
        if count < 1:
            raise ValueError(f"a permutation needs at least one element, got count={count}")
        self.count = count
        self._half = (max((count - 1).bit_length(), 2) + 1) // 2
        self._mask = np.uint64((1 << self._half) - 1)
        self._keys = np.random.default_rng(seed).integers(
            0, np.iinfo(np.uint64).max, size=self.ROUNDS, dtype=np.uint64, endpoint=True
        )

    def _network(self, x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
        half = np.uint64(self._half)
        left, right = x >> half, x & self._mask
        for key in self._keys:
            left, right = right, left ^ (_mix(right ^ key) & self._mask)
        return (left << half) | right

    def __call__(self, positions: IntArray) -> IntArray:
        """Where each of ``positions`` (in ``range(count)``) goes. Shapes: (n,) -> (n,) int64."""
        x = self._network(np.asarray(positions, dtype=np.uint64))
        outside = np.flatnonzero(x >= self.count)
        while outside.size:
            x[outside] = self._network(x[outside])
            outside = outside[x[outside] >= self.count]
        return x.astype(np.int64)


class EpochBatches(Sequence[Batch]):
    """The batches of one rank in one epoch, made a window of the corpus at a time, when asked for.

    The corpus's examples are dealt into ``ceil(count / window)`` windows of (nearly) equal size by a
    :class:`Permutation` drawn from ``(seed, epoch)``; each window's examples, in index order, are batched by
    :func:`make_batches`, and the epoch's batches are those of window 0, then window 1, and so on. A corpus
    of one window is batched exactly as ``make_batches`` batches it.

    Batch g of the epoch belongs to rank ``g % world_size``; the tail that cannot be shared out evenly
    (fewer than ``world_size`` batches) is dropped, so every rank has the same number of batches and
    data-parallel steps stay in lockstep. ``batches[i]`` is this rank's i-th batch.

    Making the object counts the batches of every window (lengths are read, no pair is); a window's
    batches are made again when they are asked for, and the last window made is kept.
    """

    def __init__(
        self,
        lengths: LengthIndex,
        max_tokens: int,
        *,
        seed: int,
        epoch: int,
        rank: int = 0,
        world_size: int = 1,
        max_sentences: int | None = None,
        window: int = WINDOW,
    ) -> None:
        if world_size < 1:
            raise ValueError(f"world_size must be at least 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.examples = len(lengths)
        if self.examples == 0:
            raise ValueError("no examples to batch")
        self.lengths, self.max_tokens, self.max_sentences = lengths, max_tokens, max_sentences
        self.seed, self.epoch, self.rank, self.world_size = seed, epoch, rank, world_size
        self.windows = math.ceil(self.examples / window)
        self._permutation = (
            Permutation(self.examples, np.random.SeedSequence([_PERMUTATION_STREAM, seed, epoch]))
            if self.windows > 1
            else None
        )
        self._made: tuple[int, list[Batch]] | None = None
        counts = [len(self._window_batches(w)) for w in range(self.windows)]
        self._first = np.cumsum([0, *counts])  # the epoch's first batch of each window, and the total
        total = int(self._first[-1])
        self._length = total // world_size
        if self._length == 0:
            raise ValueError(
                f"only {total} batches for {world_size} ranks; lower max_tokens or use fewer processes"
            )

    def members(self, window: int) -> IntArray:
        """The examples of ``window``, in index order."""
        if self._permutation is None:
            return np.arange(self.examples)
        positions = np.arange(
            window * self.examples // self.windows, (window + 1) * self.examples // self.windows
        )
        return np.sort(self._permutation(positions))

    def _window_batches(self, window: int) -> list[Batch]:
        if self._made is not None and self._made[0] == window:
            return self._made[1]
        self._made = None  # let the previous window's arrays go before the next are made
        members = self.members(window)
        src, tgt = self.lengths.lengths_of(members)
        batches = make_batches(
            src,
            tgt,
            self.max_tokens,
            seed=self.seed,
            epoch=self.epoch,
            max_sentences=self.max_sentences,
            window=window,
        )
        if self._permutation is not None:  # positions within the window -> examples of the corpus
            index_type = np.int32 if self.examples < 2**31 else np.int64
            members = members.astype(index_type)
            batches = [members[batch] for batch in batches]
        self._made = (window, batches)
        return batches

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> Batch: ...
    @overload
    def __getitem__(self, index: slice) -> list[Batch]: ...
    def __getitem__(self, index: int | slice) -> Batch | list[Batch]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i = index + len(self) if index < 0 else index
        if not 0 <= i < len(self):
            raise IndexError(f"batch {index} of an epoch of {len(self)}")
        g = self.rank + i * self.world_size
        window = int(np.searchsorted(self._first, g, side="right")) - 1
        return self._window_batches(window)[g - int(self._first[window])]


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
    window: int = WINDOW,
) -> Iterator[tuple[Batch, BatchPosition]]:
    """Batches of this rank (:class:`EpochBatches`), epoch after epoch without end, from ``start``
    (default: the very beginning).

    Yields ``(batch, resume_at)``: ``resume_at`` is the position just after ``batch``, the one to save once
    the batch has been trained on. The caller stops the loop (after so many steps or epochs).
    """
    lengths = ArrayLengths(src_lens, tgt_lens)
    position = start or BatchPosition()
    epoch, index = position.epoch, position.index
    while True:
        mine = EpochBatches(
            lengths,
            max_tokens,
            seed=seed,
            epoch=epoch,
            rank=rank,
            world_size=world_size,
            max_sentences=max_sentences,
            window=window,
        )
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
