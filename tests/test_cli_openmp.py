"""The ``qkv`` command sets a short OpenMP spin before torch loads, and leaves a user's own choice alone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Records GOMP_SPINCOUNT at the moment torch is first imported, while a command runs.
PROBE = """
import contextlib, importlib.abc, io, os, sys
seen = []
class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("GOMP_SPINCOUNT"))
        return None
sys.meta_path.insert(0, Watch())
import qkv.cli
with contextlib.redirect_stdout(io.StringIO()):
    qkv.cli.main(["params", "--preset", "tiny"])
print(seen[0] if seen else "torch never imported")
"""


def probe(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_the_spin_count_is_set_before_torch_is_imported() -> None:
    from qkv.cli.openmp import SPIN_COUNT

    assert probe() == SPIN_COUNT


@pytest.mark.parametrize(
    ("env", "expected"),
    [({"GOMP_SPINCOUNT": "123"}, "123"), ({"OMP_WAIT_POLICY": "ACTIVE"}, "None")],
    ids=["their spin count", "their wait policy"],
)
def test_a_users_own_setting_wins(env: dict[str, str], expected: str) -> None:
    assert probe(**env) == expected
