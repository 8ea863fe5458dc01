"""Token-budget batching: complete, within budget, seeded, shardable and resumable; collate pads by hand."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch

from qkv.data.batching import BatchPosition, collate, iter_batches, make_batches, shard


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


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_shards_equal_sized_and_disjoint(world_size: int) -> None:
    batches = [[i] for i in range(11)]
    shards = [shard(batches, rank, world_size) for rank in range(world_size)]
    assert len({len(s) for s in shards}) == 1
    assert len(shards[0]) == 11 // world_size
    used = [b[0] for s in shards for b in s]
    assert len(used) == len(set(used))
    assert sorted(used) == list(range(11 // world_size * world_size))
    assert shards[-1] == batches[world_size - 1 : 11 // world_size * world_size : world_size]


def test_shard_refuses_bad_ranks_and_too_few_batches() -> None:
    with pytest.raises(ValueError, match="rank"):
        shard([[0]], 2, 2)
    with pytest.raises(ValueError, match="only 1 batches for 2 ranks"):
        shard([[0]], 0, 2)


def test_resume_from_a_position_continues_the_same_stream() -> None:
    src, tgt = lengths(3, 200)
    stream = iter_batches(src, tgt, 300, seed=1, rank=1, world_size=2)
    straight = list(itertools.islice(stream, 40))  # crosses at least one epoch boundary
    batches_per_epoch = len(shard(make_batches(src, tgt, 300, seed=1, epoch=0), 1, 2))
    assert batches_per_epoch < 40
    assert straight[batches_per_epoch - 1][1] == BatchPosition(0, batches_per_epoch)
    for stop in (0, 5, batches_per_epoch - 1, batches_per_epoch, 33):
        saved = BatchPosition.from_dict(straight[stop][1].to_dict())
        resumed = iter_batches(src, tgt, 300, seed=1, rank=1, world_size=2, start=saved)
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
