"""The processes of a run: torchrun's process group, the seed of each step on each rank, and the signals
that stop a run at a step boundary."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

import torch
import torch.distributed as dist


def distributed_context() -> tuple[int, int]:
    """(rank, world size); initialises torch.distributed when started by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def step_seed(seed: int, step: int, rank: int) -> int:
    """The dropout seed of one step on one rank: a pure function, so a resumed run draws the same masks."""
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729) % (2**63 - 1)


@contextmanager
def catching_signals(pending: Callable[[], int | None], note: Callable[[int], None]) -> Iterator[None]:
    """While inside, SIGINT/SIGTERM call ``note(signum)`` (the loop saves and stops at the next step
    boundary); a second SIGINT while one is ``pending()`` stops at once (KeyboardInterrupt)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if pending() is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        note(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
