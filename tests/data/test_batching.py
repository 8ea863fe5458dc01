"""Token-budget batching: complete, within budget, seeded, windowed, shardable and resumable; collate pads by
hand."""

from __future__ import annotations

import itertools
import random
import tracemalloc

import numpy as np
import pytest
import torch

from qkv.data.batching import (
    ArrayLengths,
    BatchPosition,
    EpochBatches,
    MappedLengths,
    Permutation,
    collate,
    iter_batches,
    make_batches,
)


def lengths(seed: int, count: int = 500) -> tuple[list[int], list[int]]:
    rng = random.Random(seed)
    src = [rng.randint(1, 60) for _ in range(count)]
    tgt = [max(1, s + rng.randint(-10, 10)) for s in src]
    return src, tgt


def as_lists(batches: list[np.ndarray]) -> list[list[int]]:
    return [batch.tolist() for batch in batches]


def padded_size(batch: list[int], src: list[int], tgt: list[int]) -> int:
    """The budget's measure, computed here directly: the larger of the two padded sides."""
    return len(batch) * max(max(max(src[i], 1) for i in batch), max(max(tgt[i], 1) for i in batch))


@pytest.mark.parametrize(("seed", "max_tokens"), [(0, 64), (1, 200), (2, 1000), (3, 7)])
def test_every_index_once_and_budget_kept(seed: int, max_tokens: int) -> None:
    src, tgt = lengths(seed)
    for epoch in range(3):
        batches = as_lists(make_batches(src, tgt, max_tokens, seed=seed, epoch=epoch))
        assert sorted(itertools.chain.from_iterable(batches)) == list(range(len(src)))
        for batch in batches:
            assert batch, "no empty batches"
            assert padded_size(batch, src, tgt) <= max_tokens or len(batch) == 1


def test_over_long_example_forms_its_own_batch() -> None:
    src, tgt = [3, 50, 3, 3], [3, 2, 3, 3]
    batches = as_lists(make_batches(src, tgt, 12, seed=0, epoch=0))
    assert [1] in batches
    assert sorted(map(sorted, batches)) == [[0, 2, 3], [1]]


def test_target_side_counts_too() -> None:
    # Sources are short, but target 2 is long: 2 examples padded to 9 target tokens exceed 16.
    batches = as_lists(make_batches([2, 2, 2], [2, 2, 9], 16, seed=0, epoch=0, shuffle=False))
    assert batches == [[0, 1], [2]]


def test_max_sentences_caps_the_batch() -> None:
    batches = make_batches([1] * 10, [1] * 10, 1000, seed=0, epoch=0, max_sentences=4)
    assert sorted(len(b) for b in batches) == [2, 4, 4]


def test_batches_group_similar_lengths() -> None:
    # With bucketing, padding is a small share of the batch; random grouping of the same data pads far more.
    src, tgt = lengths(5, 2000)
    batches = as_lists(make_batches(src, tgt, 400, seed=0, epoch=0))
    real = sum(max(src[i], tgt[i]) for i in range(len(src)))
    padded = sum(padded_size(b, src, tgt) for b in batches)
    assert padded < 1.3 * real


def test_deterministic_per_seed_and_epoch() -> None:
    src, tgt = lengths(0)
    first = as_lists(make_batches(src, tgt, 256, seed=7, epoch=0))
    assert as_lists(make_batches(src, tgt, 256, seed=7, epoch=0)) == first
    assert as_lists(make_batches(src, tgt, 256, seed=7, epoch=1)) != first
    assert as_lists(make_batches(src, tgt, 256, seed=8, epoch=0)) != first


def test_unshuffled_batches_come_in_length_order() -> None:
    src, tgt = [5, 1, 3, 1], [1, 1, 1, 1]
    assert as_lists(make_batches(src, tgt, 2, seed=0, epoch=0, shuffle=False)) == [[1, 3], [2], [0]]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="one per example"):
        make_batches([1, 2], [1], 10, seed=0, epoch=0)
    with pytest.raises(ValueError, match="max_tokens"):
        make_batches([1], [1], 0, seed=0, epoch=0)
    with pytest.raises(ValueError, match=r"tgt_lens\[1\] is -1"):
        make_batches([1, 1], [1, -1], 10, seed=0, epoch=0)


@pytest.mark.parametrize("window", [10**6, 60])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_ranks_take_turns_and_share_the_epoch_evenly(world_size: int, window: int) -> None:
    src, tgt = lengths(4, 300)
    index = ArrayLengths(src, tgt)
    epoch = as_lists(list(EpochBatches(index, 200, seed=2, epoch=1, window=window)))
    ranks = [
        as_lists(
            list(EpochBatches(index, 200, seed=2, epoch=1, rank=r, world_size=world_size, window=window))
        )
        for r in range(world_size)
    ]
    per_rank = len(epoch) // world_size
    assert [len(mine) for mine in ranks] == [per_rank] * world_size  # the tail is dropped
    for rank, mine in enumerate(ranks):  # batch g of the epoch is rank g % world_size's
        assert mine == epoch[rank : per_rank * world_size : world_size]


def test_epoch_batches_refuse_bad_ranks_and_too_few_batches() -> None:
    index = ArrayLengths([1], [1])
    with pytest.raises(ValueError, match="rank"):
        EpochBatches(index, 10, seed=0, epoch=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="only 1 batches for 2 ranks"):
        EpochBatches(index, 10, seed=0, epoch=0, rank=0, world_size=2)
    with pytest.raises(ValueError, match="no examples"):
        EpochBatches(ArrayLengths([], []), 10, seed=0, epoch=0)
    with pytest.raises(IndexError, match="batch 1 of an epoch of 1"):
        EpochBatches(index, 10, seed=0, epoch=0)[1]


# -- windows: a corpus batched a part at a time ---------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 3, 5, 100, 1000, 4097, 65_536, 100_003])
def test_the_permutation_is_one(count: int) -> None:
    permutation = Permutation(count, np.random.SeedSequence(count))
    image = permutation(np.arange(count))
    assert image.dtype == np.int64
    assert np.array_equal(np.sort(image), np.arange(count))
    # Any part of the positions gives the same images as the whole.
    part = np.arange(count // 3, count)
    assert np.array_equal(permutation(part), image[count // 3 :])


def test_the_permutation_shuffles_and_depends_on_its_seed() -> None:
    count = 10_000
    first = Permutation(count, np.random.SeedSequence(1))(np.arange(count))
    second = Permutation(count, np.random.SeedSequence(2))(np.arange(count))
    assert not np.array_equal(first, second)
    assert np.array_equal(first, Permutation(count, np.random.SeedSequence(1))(np.arange(count)))
    # No trace of the input order: a shuffled order's correlation with it is ~N(0, 1/count).
    assert abs(np.corrcoef(np.arange(count), first)[0, 1]) < 0.05
    fixed = int((first == np.arange(count)).sum())  # a random permutation fixes ~Poisson(1) points
    assert fixed < 8
    # Neighbours go far apart: in a uniform shuffle a step lands within 100 of the last 2% of the time.
    near = np.abs(np.diff(first)) < 100
    assert near.mean() < 0.05


def test_one_window_batches_as_make_batches_does() -> None:
    src, tgt = lengths(5, 400)
    for epoch in range(3):
        windowed = EpochBatches(ArrayLengths(src, tgt), 150, seed=7, epoch=epoch)
        assert windowed.windows == 1
        assert as_lists(list(windowed)) == as_lists(make_batches(src, tgt, 150, seed=7, epoch=epoch))


@pytest.mark.parametrize("window", [1, 37, 100, 399])
def test_windows_cover_every_example_once_within_budget(window: int) -> None:
    src, tgt = lengths(6, 400)
    for epoch in range(2):
        batches = EpochBatches(ArrayLengths(src, tgt), 150, seed=7, epoch=epoch, window=window)
        assert batches.windows == -(-400 // window)
        members = [batches.members(w).tolist() for w in range(batches.windows)]
        assert all(len(m) <= window and m == sorted(m) for m in members)
        assert sorted(itertools.chain.from_iterable(members)) == list(range(400))
        listed = as_lists(list(batches))
        assert sorted(itertools.chain.from_iterable(listed)) == list(range(400))
        assert all(padded_size(b, src, tgt) <= 150 or len(b) == 1 for b in listed)
        # The epoch is window 0's batches, then window 1's, ...: each batch lies in one window.
        window_of = {i: w for w, m in enumerate(members) for i in m}
        seen = [window_of[b[0]] for b in listed]
        assert seen == sorted(seen)
        assert all(len({window_of[i] for i in b}) == 1 for b in listed)


def test_windows_are_random_samples_that_change_every_epoch() -> None:
    count = 20_000
    src = np.arange(count) % 50 + 1  # the corpus in a telling order: its lengths cycle
    index = ArrayLengths(src, src)
    first = EpochBatches(index, 400, seed=0, epoch=0, window=5_000)
    again = EpochBatches(index, 400, seed=0, epoch=0, window=5_000)
    later = EpochBatches(index, 400, seed=0, epoch=1, window=5_000)
    assert first.windows == 4
    assert all(np.array_equal(first.members(w), again.members(w)) for w in range(4))
    assert not np.array_equal(first.members(0), later.members(0))
    for w in range(4):  # each window spans the corpus, not a quarter of it
        members = first.members(w)
        assert members[0] < count // 20 and members[-1] > count - count // 20
        assert abs(np.mean(src[members]) - np.mean(src)) < 1.0
    # Batches still group similar lengths within a window.
    spreads = [int(src[b].max() - src[b].min()) for b in first]
    assert np.median(spreads) <= 1


def test_a_window_is_made_when_asked_for_and_the_last_one_kept() -> None:
    class Counting(ArrayLengths):
        asked: list[int] = []

        def lengths_of(self, indices):  # type: ignore[no-untyped-def]
            self.asked.append(len(indices))
            return super().lengths_of(indices)

    src, tgt = lengths(8, 1000)
    index = Counting(src, tgt)
    batches = EpochBatches(index, 200, seed=1, epoch=0, window=250)
    assert index.asked == [250] * 4  # counting the epoch's batches read every window's lengths once
    first = batches[0]
    assert index.asked == [250] * 5  # window 0 again, when training reaches it
    assert set(batches[1].tolist()) <= set(batches.members(0).tolist())  # batch 1 is window 0's too
    assert np.array_equal(batches[0], first)
    assert len(index.asked) == 5  # asking within the window kept reads nothing again


class SyntheticLengths:
    """A corpus of ``count`` pairs whose lengths (1..97) are computed from their numbers: no memory of its own."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def lengths_of(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lengths = indices.astype(np.int64) * 2654435761 % 97 + 1
        return lengths, lengths


def peak_bytes_of_an_epoch(count: int, window: int) -> int:
    """Peak of numpy's and Python's allocations (tracemalloc) while an epoch's batches are counted and its
    first and last batch are made."""
    tracemalloc.start()
    try:
        batches = EpochBatches(SyntheticLengths(count), 4096, seed=0, epoch=0, window=window)
        assert batches.windows == -(-count // window)
        batches[0], batches[len(batches) - 1]
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_batching_memory_does_not_grow_with_the_corpus() -> None:
    window = 2**15
    small, large = peak_bytes_of_an_epoch(10 * window, window), peak_bytes_of_an_epoch(100 * window, window)
    # One window's index arrays and sort temporaries (tens of bytes a pair of the window), and per window
    # two numbers of bookkeeping: 10x the corpus changes the peak by no more than a few percent.
    assert small < 100 * window
    assert large < small * 1.1, (small, large)


def test_mapped_lengths_change_the_lengths_they_read() -> None:
    index = MappedLengths(ArrayLengths([3, 4, 5], [1, 2, 3]), lambda s, t: (s * 2, t + 1))
    src, tgt = index.lengths_of(np.array([2, 0]))
    assert len(index) == 3 and src.tolist() == [10, 6] and tgt.tolist() == [4, 2]


@pytest.mark.parametrize("window", [10**6, 60])
def test_resume_from_a_position_continues_the_same_stream(window: int) -> None:
    src, tgt = lengths(3, 200)
    stream = iter_batches(src, tgt, 300, seed=1, rank=1, world_size=2, window=window)
    straight = list(itertools.islice(stream, 40))  # crosses at least one epoch boundary
    index = ArrayLengths(src, tgt)
    batches_per_epoch = len(EpochBatches(index, 300, seed=1, epoch=0, rank=1, world_size=2, window=window))
    assert batches_per_epoch < 40
    assert straight[batches_per_epoch - 1][1] == BatchPosition(0, batches_per_epoch)
    for stop in (0, 5, batches_per_epoch - 1, batches_per_epoch, 33):
        saved = BatchPosition.from_dict(straight[stop][1].to_dict())
        resumed = iter_batches(src, tgt, 300, seed=1, rank=1, world_size=2, start=saved, window=window)
        rest = [batch.tolist() for batch, _ in itertools.islice(resumed, 40 - stop - 1)]
        assert rest == [batch.tolist() for batch, _ in straight[stop + 1 :]]


def test_resume_past_the_end_of_an_epoch_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot resume at batch 99"):
        next(iter_batches([1, 1], [1, 1], 10, seed=0, start=BatchPosition(0, 99)))


def test_collate_pads_on_the_right() -> None:
    ids = collate([[5, 6, 7], [8], []], pad_id=0)
    assert ids.dtype == torch.long
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]]
    assert collate([[1, 2]], pad_id=3).shape == (1, 2)
    with pytest.raises(ValueError, match="at least one"):
        collate([], pad_id=0)


def greedy_reference(
    src: list[int], tgt: list[int], max_tokens: int, max_sentences: int | None
) -> list[list[int]]:
    """Length-sorted greedy packing as a plain loop, one example at a time (ties in index order)."""
    order = sorted(range(len(src)), key=lambda i: (src[i], tgt[i], i))
    batches: list[list[int]] = []
    batch: list[int] = []
    widest = 0
    for i in order:
        width = max(src[i], tgt[i], 1)
        full = max_sentences is not None and len(batch) >= max_sentences
        if batch and (full or max(widest, width) * (len(batch) + 1) > max_tokens):
            batches.append(batch)
            batch, widest = [], 0
        batch.append(i)
        widest = max(widest, width)
    return [*batches, batch] if batch else batches


@pytest.mark.parametrize(
    ("seed", "max_tokens", "max_sentences"), [(0, 64, None), (1, 7, None), (2, 500, 9), (3, 3000, None)]
)
def test_packing_equals_a_plain_greedy_loop(seed: int, max_tokens: int, max_sentences: int | None) -> None:
    src, tgt = lengths(seed, 700)
    src[:5] = [0, 0, 200, 1, 0]  # empty and over-long examples too
    got = make_batches(src, tgt, max_tokens, seed=0, epoch=0, shuffle=False, max_sentences=max_sentences)
    assert as_lists(got) == greedy_reference(src, tgt, max_tokens, max_sentences)


def test_numpy_lengths_give_the_batches_lists_give() -> None:
    src, tgt = lengths(4, 300)
    as_arrays = make_batches(np.array(src, np.uint16), np.array(tgt, np.int32), 256, seed=3, epoch=2)
    assert as_lists(as_arrays) == as_lists(make_batches(src, tgt, 256, seed=3, epoch=2))


def test_shuffled_batches_hold_runs_of_the_length_order() -> None:
    # With shuffling only the tie-break and the batch order change: sorted back by length, the batches
    # are the greedy packing of some order of equal-length examples, so their lengths match the reference's.
    src, tgt = lengths(6, 800)
    shuffled = as_lists(make_batches(src, tgt, 300, seed=1, epoch=0))
    by_length = sorted(shuffled, key=lambda b: min((src[i], tgt[i]) for i in b))
    widths = [sorted((src[i], tgt[i]) for i in b) for b in by_length]
    want = [sorted((src[i], tgt[i]) for i in b) for b in greedy_reference(src, tgt, 300, None)]
    assert widths == want
