"""The dynamic batcher on its own, with a recording runner: which items share a batch, in which order,
and where each result goes. Items are queued before the worker starts (or while a runner is held), so
what the worker finds in the queue is known and no test depends on timing."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Hashable
from typing import Any

import pytest

from qkv.serve.batcher import Batcher, Item, QueueFull, Stopped

FAR = 1e9  # a deadline that never passes


class Recorder:
    """A runner that records each batch (its key and payloads) and answers payload * 10; a payload of
    None makes it raise."""

    def __init__(self) -> None:
        self.batches: list[tuple[Hashable, list[Any]]] = []

    def __call__(self, key: Hashable, payloads: list[Any]) -> list[Any]:
        self.batches.append((key, list(payloads)))
        if None in payloads:
            raise RuntimeError("the runner failed")
        return [p * 10 for p in payloads]


def items(
    loop: asyncio.AbstractEventLoop,
    payloads: list[Any],
    *,
    key: Hashable = "k",
    tokens: int = 1,
    deadline: float = FAR,
) -> list[Item]:
    now = time.monotonic()
    return [Item(key, p, tokens, loop.create_future(), loop, now + deadline) for p in payloads]


def run_all(batcher: Batcher, groups: list[list[Item]]) -> list[Any]:
    """Queue the groups (each all or nothing), start the worker, await every future (results or errors)."""
    for group in groups:
        batcher.submit(group)
    batcher.start()

    async def wait() -> list[Any]:
        futures = [item.future for group in groups for item in group]
        return await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 60)

    loop = groups[0][0].loop
    try:
        return loop.run_until_complete(wait())
    finally:
        batcher.stop(60)


@pytest.fixture
def loop() -> Any:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def make(runner: Recorder, **overrides: Any) -> Batcher:
    options = {"max_batch": 64, "max_tokens": 4096, "max_wait_s": 0.0, "queue_size": 100, **overrides}
    return Batcher(runner, **options)


def test_each_result_goes_to_its_own_item_in_arrival_order(loop: asyncio.AbstractEventLoop) -> None:
    runner = Recorder()
    groups = [items(loop, [1, 2]), items(loop, [3]), items(loop, [4, 5, 6])]
    assert run_all(make(runner), groups) == [10, 20, 30, 40, 50, 60]
    assert runner.batches == [("k", [1, 2, 3, 4, 5, 6])]


def test_max_batch_splits_in_order(loop: asyncio.AbstractEventLoop) -> None:
    runner = Recorder()
    assert run_all(make(runner, max_batch=3), [items(loop, list(range(1, 8)))]) == [
        10 * i for i in range(1, 8)
    ]
    assert [payloads for _, payloads in runner.batches] == [[1, 2, 3], [4, 5, 6], [7]]


def test_max_tokens_counts_the_padded_batch(loop: asyncio.AbstractEventLoop) -> None:
    runner = Recorder()
    short = items(loop, [1, 2, 3], tokens=5)
    long = items(loop, [4], tokens=20)  # more than the budget alone: it still runs, by itself
    tail = items(loop, [5, 6], tokens=7)
    run_all(make(runner, max_tokens=15), [short, long, tail])
    # 3 x 5 = 15 fits; 4 x 20 does not; 20 alone; then 2 x 7 = 14.
    assert [payloads for _, payloads in runner.batches] == [[1, 2, 3], [4], [5, 6]]


def test_different_keys_never_share_a_batch(loop: asyncio.AbstractEventLoop) -> None:
    runner = Recorder()
    groups = [items(loop, [1], key="a"), items(loop, [2], key="b"), items(loop, [3], key="a")]
    assert run_all(make(runner), groups) == [10, 20, 30]
    assert runner.batches == [("a", [1, 3]), ("b", [2])]


def test_a_full_queue_refuses_a_request_whole(loop: asyncio.AbstractEventLoop) -> None:
    batcher = make(Recorder(), queue_size=3)
    batcher.submit(items(loop, [1, 2]))
    with pytest.raises(QueueFull, match=r"the queue is full \(2 of 3 texts waiting\)"):
        batcher.submit(items(loop, [3, 4]))
    assert batcher.depth == 2  # none of the refused request's texts
    batcher.submit(items(loop, [5]))
    assert batcher.depth == 3


def test_abandoned_items_are_dropped_before_they_run(loop: asyncio.AbstractEventLoop) -> None:
    runner = Recorder()
    live = items(loop, [1])
    expired = items(loop, [2], deadline=-1.0)
    cancelled = items(loop, [3])
    cancelled[0].future.cancel()  # its request went away
    batcher = make(runner)
    for group in (live, expired, cancelled):
        batcher.submit(group)
    batcher.start()
    assert loop.run_until_complete(asyncio.wait_for(live[0].future, 60)) == 10
    batcher.stop(60)
    assert runner.batches == [("k", [1])]
    assert not expired[0].future.done()  # nobody waits for it: its request answered 504 already


def test_a_failing_batch_fails_its_items_and_the_worker_goes_on(loop: asyncio.AbstractEventLoop) -> None:
    runner = Recorder()
    failing = items(loop, [1, None], key="bad")
    fine = items(loop, [2], key="good")
    found = run_all(make(runner), [failing, fine])
    assert [type(f) for f in found[:2]] == [RuntimeError, RuntimeError] and found[2] == 20


def test_stop_runs_what_was_accepted_then_refuses(loop: asyncio.AbstractEventLoop) -> None:
    runner = Recorder()
    held = threading.Event()

    def slow(key: Hashable, payloads: list[Any]) -> list[Any]:
        held.wait(60)
        return runner(key, payloads)

    batcher = Batcher(slow, max_batch=1, max_tokens=4096, max_wait_s=0.0, queue_size=10)
    group = items(loop, [1, 2, 3])
    batcher.submit(group)
    batcher.start()
    stopper = threading.Thread(target=batcher.stop, args=(60,))
    stopper.start()  # while the first batch is held: the other two are still queued
    while batcher.is_alive:
        time.sleep(0.001)
    with pytest.raises(Stopped):
        batcher.submit(items(loop, [4]))
    held.set()
    stopper.join()
    found = loop.run_until_complete(asyncio.gather(*(item.future for item in group)))
    assert found == [10, 20, 30]
    assert [payloads for _, payloads in runner.batches] == [[1], [2], [3]]


def test_a_batch_waits_for_more_texts_up_to_max_wait(loop: asyncio.AbstractEventLoop) -> None:
    runner = Recorder()
    batcher = make(runner, max_wait_s=60.0, max_batch=3)
    batcher.start()
    first = items(loop, [1])
    batcher.submit(first)
    batcher.submit(items(loop, [2]))
    rest = items(loop, [3, 4])
    batcher.submit(rest)  # the batch is full at 3: it runs without waiting out the 60 s
    assert loop.run_until_complete(asyncio.wait_for(first[0].future, 30)) == 10
    batcher.stop(60)  # the last item is run at once: stopping ends every wait
    assert loop.run_until_complete(rest[1].future) == 40
    assert [payloads for _, payloads in runner.batches] == [[1, 2, 3], [4]]
