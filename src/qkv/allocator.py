"""Keep freed memory in the process on Linux/glibc, so that large tensors do not page-fault on every step.

glibc serves allocations above ``M_MMAP_THRESHOLD`` (128 KiB to 32 MiB, adjusted on the fly) with a fresh
``mmap`` and gives the memory back on ``free``. A training step allocates its large activations and the
logits (tokens x vocabulary, ~100 MB for a 3,000-token batch at 8k words) anew each time, so every step
touches fresh pages, and the kernel zero-fills each 4 KiB page on first touch. Serving every allocation
from the heap (``M_MMAP_MAX = 0``) and never trimming it (``M_TRIM_THRESHOLD``) lets the next step reuse
the same pages (what that gained is in docs/performance-history.md).
Decoding does the same at every step (the logits, rows x vocabulary: 8 MB for 32 sentences of a
65,001-word model). The cost is that the process keeps its peak heap until it exits, which is what a
command that trains or translates a file and exits does anyway, and what a long-running server must not
do: so the commands that train (``qkv train``, ``demo``, ``finetune``) and those that translate a batch of
input (``translate``, ``evaluate``, ``distill``) call it, each explicitly; ``qkv serve`` does not.

This is what jemalloc/tcmalloc preloading does for PyTorch CPU training, without a preload. Set
``QKV_SYSTEM_MALLOC=1`` to leave glibc's defaults alone. Elsewhere (macOS, Windows, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_applied = False


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as described above (once per process). Returns whether it applied."""
    global _applied
    if _applied:
        return True
    if os.environ.get("QKV_SYSTEM_MALLOC") or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _applied
