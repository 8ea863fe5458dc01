"""Dynamic batching: texts of concurrent requests merged into decoding batches on one inference worker.

Requests put :class:`Item` s (one per text) on a bounded queue; one worker thread takes the oldest item,
waits at most ``max_wait_s`` for more, and runs every queued item with the same ``key`` (model and
decoding options) as one batch, up to ``max_batch`` texts and ``max_tokens`` padded source tokens
(``texts x longest source``, the size of the encoder's input). Each item's result goes back to its own
asyncio future through ``loop.call_soon_threadsafe``, so the event loop never waits on inference.

Decisions:
- A request's texts enter the queue together or not at all (:class:`QueueFull`): a request is never
  half-accepted.
- An item whose future is already done (its request timed out or went away) or whose deadline has
  passed is dropped before it reaches a batch; an item already in a running batch is finished.
- :meth:`Batcher.stop` drains: every item accepted before it is run, then the thread ends.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any


class QueueFull(Exception):
    """The queue has no room for a request's texts; the caller answers 503 with Retry-After."""


class Stopped(Exception):
    """The batcher no longer accepts work (the server is shutting down)."""


@dataclass
class Item:
    """One text to run: the batch ``key`` it may share, its ``payload`` for the runner, its size in
    source tokens, the future its result goes to and the monotonic ``deadline`` after which it is
    dropped if not yet started."""

    key: Hashable
    payload: Any
    tokens: int
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    deadline: float
    arrived: float = field(default_factory=time.monotonic)

    def is_abandoned(self, now: float) -> bool:
        return self.future.done() or now > self.deadline


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    """Runs on the event loop: the future's result, unless its request gave up on it already."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


# A runner gets a batch's key and payloads and returns one result per payload, in order.
Runner = Callable[[Hashable, list[Any]], list[Any]]


class Batcher:
    """A bounded queue of :class:`Item` s and the one worker thread that runs them in batches.

    ``on_batch(size, tokens)`` is called after each batch (metrics); ``queue_size`` bounds the texts
    waiting (not those running).
    """

    def __init__(
        self,
        runner: Runner,
        *,
        max_batch: int,
        max_tokens: int,
        max_wait_s: float,
        queue_size: int,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        if max_batch < 1 or max_tokens < 1 or queue_size < 1 or max_wait_s < 0:
            raise ValueError("max_batch, max_tokens and queue_size must be >= 1, max_wait_s >= 0")
        self.runner = runner
        self.max_batch = max_batch
        self.max_tokens = max_tokens
        self.max_wait_s = max_wait_s
        self.queue_size = queue_size
        self.on_batch = on_batch
        self._items: deque[Item] = deque()
        self._cond = threading.Condition()
        self._accepting = True
        self._running = 0  # items in the batch being run
        self._thread = threading.Thread(target=self._work, name="qkv-inference", daemon=True)

    # ---- the request side (event loop thread) ----------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def depth(self) -> int:
        """Texts waiting in the queue."""
        return len(self._items)

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive() and self._accepting

    def submit(self, items: Sequence[Item]) -> None:
        """Queue all of ``items`` or none: QueueFull when they do not fit, Stopped after :meth:`stop`."""
        with self._cond:
            if not self._accepting:
                raise Stopped("the server is shutting down")
            self._drop_abandoned()
            if len(self._items) + len(items) > self.queue_size:
                raise QueueFull(
                    f"the queue is full ({len(self._items)} of {self.queue_size} texts waiting); retry later"
                )
            self._items.extend(items)
            self._cond.notify()

    def stop(self, timeout: float | None = None) -> None:
        """Accept nothing more, run what was accepted, end the worker (waits up to ``timeout`` s)."""
        with self._cond:
            self._accepting = False
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ---- the worker side --------------------------------------------------------------------------------

    def _take_batch(self) -> list[Item] | None:
        """The next batch, or None when stopped and drained. Waits for the first item, then until the
        oldest item has waited ``max_wait_s`` or the batch is full; items abandoned meanwhile are left
        out, and a wait whose items were all abandoned starts over."""
        with self._cond:
            while True:
                self._drop_abandoned()
                if not self._items:
                    if not self._accepting:
                        return None
                    self._cond.wait()
                    continue
                head = self._items[0]
                batch = self._select(head.key)
                while self._accepting and batch and batch[0] is head:
                    wait = head.arrived + self.max_wait_s - time.monotonic()
                    if wait <= 0 or len(batch) >= self.max_batch or self._is_full(batch):
                        break
                    self._cond.wait(wait)
                    batch = self._select(head.key)
                if not batch or batch[0] is not head:  # the head was abandoned: the next one waits its turn
                    continue
                chosen = {id(item) for item in batch}
                self._items = deque(item for item in self._items if id(item) not in chosen)
                self._running = len(batch)
                return batch

    def _drop_abandoned(self) -> None:
        """Leave out the items nobody waits for any more (called with the lock held)."""
        now = time.monotonic()
        if any(item.is_abandoned(now) for item in self._items):
            self._items = deque(item for item in self._items if not item.is_abandoned(now))

    def _is_full(self, batch: list[Item]) -> bool:
        """Whether no further item of the batch's key would fit its token budget."""
        longest = max(item.tokens for item in batch)
        return (len(batch) + 1) * longest > self.max_tokens

    def _select(self, key: Hashable) -> list[Item]:
        """Queued, live items of ``key`` in arrival order, as many as the budgets allow (at least one)."""
        now = time.monotonic()
        batch: list[Item] = []
        longest = 0
        for item in self._items:
            if item.key != key or item.is_abandoned(now):
                continue
            padded = (len(batch) + 1) * max(longest, item.tokens)
            if batch and (len(batch) >= self.max_batch or padded > self.max_tokens):
                break
            batch.append(item)
            longest = max(longest, item.tokens)
        return batch

    def _work(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            try:
                results = self.runner(batch[0].key, [item.payload for item in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"the runner gave {len(results)} results for {len(batch)} items")
                for item, result in zip(batch, results, strict=True):
                    self._deliver(item, result, None)
            except Exception as error:  # every waiting request gets the error, the worker goes on
                for item in batch:
                    self._deliver(item, None, error)
            finally:
                with self._cond:
                    self._running = 0
            if self.on_batch is not None:
                self.on_batch(len(batch), len(batch) * max(item.tokens for item in batch))

    @staticmethod
    def _deliver(item: Item, result: Any, error: BaseException | None) -> None:
        try:
            item.loop.call_soon_threadsafe(_settle, item.future, result, error)
        except RuntimeError:  # the loop is closed: nobody waits for this result any more
            pass
