"""How long PyTorch's OpenMP threads spin before they sleep, set for the ``qkv`` command before torch loads.

Between parallel regions a waiting OpenMP thread spins, then sleeps. GNU OpenMP (the runtime of PyTorch's
CPU builds) spins for 300,000 iterations by default, which assumes the cores are the process's own: beside
another busy process a spinning thread takes the core from the thread it waits for, and both processes slow
far more than their share (two 2-thread trainings on 2 cores: 4.6x each instead of 2x). A short spin keeps
the fast wake-up of an idle machine and sleeps soon enough to share a busy one (measured in
docs/performance.md). The runtime reads the setting once, when torch is imported: so the command sets it
first thing, and only where the user has set neither ``GOMP_SPINCOUNT`` nor ``OMP_WAIT_POLICY``.
Programs that import qkv as a library keep their own settings.
"""

from __future__ import annotations

import os

SPIN_COUNT = "3000"


def spin_briefly_before_sleeping() -> None:
    """Set ``GOMP_SPINCOUNT`` for this process unless the user chose a wait policy; call before torch loads."""
    if "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
