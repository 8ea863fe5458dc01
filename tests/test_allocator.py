"""The malloc tuning applies once on Linux/glibc and can be switched off."""

from __future__ import annotations

import subprocess
import sys

import pytest

CODE = "from qkv.allocator import keep_freed_memory as k; print(k(), k())"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_applies_on_linux_and_respects_the_opt_out() -> None:
    on = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True)
    assert on.stdout.split() == ["True", "True"]
    env = {"QKV_SYSTEM_MALLOC": "1", "PATH": ""}
    off = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True, env=env)
    assert off.stdout.split() == ["False", "False"]
