"""qkv as a user installs it: a wheel built from this tree, installed into a fresh virtual environment
(no source tree on its path, the same torch as here), runs `qkv demo` and `qkv translate` from a
directory outside the tree. The package data (fonts for Chinese labels, the server's web page) must
travel in the wheel, and the version is the one written in ``qkv.__version__``."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import qkv

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": "", "PYTHONNOUSERSITE": "1"}


def _run(args: list[str | Path], cwd: Path, timeout: float = 900) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{args}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    return done.stdout


def test_the_wheel_installs_into_a_fresh_venv_and_translates(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, ROOT], cwd=tmp_path)
    (wheel,) = wheels.glob("qkv-*.whl")
    assert wheel.name.startswith(f"qkv-{qkv.__version__}-")
    names = zipfile.ZipFile(wheel).namelist()
    for data in ("qkv/py.typed", "qkv/serve/static/index.html", "qkv/fonts/README.md"):
        assert data in names, data
    assert any(n.startswith("qkv/fonts/") and n.endswith(".ttf") for n in names)
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp_path)
    python = venv / "bin" / "python"
    # This torch first (a plain range would let pip fetch another build), then the wheel with its extras.
    _run([python, "-m", "pip", "install", "-q", f"torch=={torch.__version__.split('+')[0]}"], cwd=tmp_path)
    _run([python, "-m", "pip", "install", "-q", f"{wheel}[plot]"], cwd=tmp_path)

    where = _run([python, "-c", "import qkv; print(qkv.__file__)"], cwd=tmp_path).strip()
    assert Path(where).is_relative_to(venv), where  # the installed package, not this tree
    qkv_command = venv / "bin" / "qkv"
    assert _run([qkv_command, "--version"], cwd=tmp_path).strip() == f"qkv {qkv.__version__}"
    _run([qkv_command, "demo", "--steps", "20", "--out", "demo", "--threads", "1", "--quiet"], cwd=tmp_path)
    assert (tmp_path / "demo" / "attention.png").is_file()
    out = _run([qkv_command, "translate", "--model", "demo", "我爱你", "他很高。"], cwd=tmp_path)
    assert len(out.split("\n")) == 3  # two translations (a 20-step model's words, whatever they are)
