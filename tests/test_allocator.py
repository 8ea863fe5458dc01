"""The malloc tuning applies once on Linux/glibc, can be switched off, and only the commands that train apply it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CODE = "from qkv.allocator import keep_freed_memory as k; print(k(), k())"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_applies_on_linux_and_respects_the_opt_out() -> None:
    on = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True)
    assert on.stdout.split() == ["True", "True"]
    env = {"QKV_SYSTEM_MALLOC": "1", "PATH": ""}
    off = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True, env=env)
    assert off.stdout.split() == ["False", "False"]


WHO_APPLIES = """
import sys
from pathlib import Path
from qkv import allocator
from qkv.cli import main
from qkv.train import pipeline

def stop(*args, **kwargs):
    raise KeyboardInterrupt  # where training would start: the tuning is decided by then

pipeline.train = stop
main(["params", "--preset", "tiny", "--vocab", "100"])
print(allocator._applied)
main(["train", "--out", sys.argv[1], "--quiet"])
print(allocator._applied)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_only_the_commands_that_train_tune_malloc(tmp_path: Path) -> None:
    # A process that only translates or counts would otherwise keep its peak heap for as long as it lives.
    run = subprocess.run(
        [sys.executable, "-c", WHO_APPLIES, str(tmp_path / "run")], capture_output=True, text=True, check=True
    )
    assert run.stdout.split()[-2:] == ["False", "True"]
