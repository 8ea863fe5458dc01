"""Checkpoint averaging: the element-wise mean of the weights of the last N checkpoints.

The paper averages the last 5 (base) or 20 (big) checkpoints, written at 10-minute intervals (section 6.1):
the mean of nearby points on the training trajectory generalises better than any one of them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from qkv import checkpoint


def run_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """The complete checkpoints of a run, oldest first (by step)."""
    root = Path(run_dir) / checkpoint.CHECKPOINTS_DIR
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no checkpoints here; is {run_dir} a qkv run directory?")
    found = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    found = [p for p in found if (p / checkpoint.MODEL_FILE).is_file()]
    return sorted(
        found, key=lambda p: int(p.name.rsplit("-", 1)[-1]) if p.name.rsplit("-", 1)[-1].isdigit() else 0
    )


def average(directories: Sequence[Path]) -> dict[str, Tensor]:
    """The mean of ``model.safetensors`` over ``directories``, accumulated in float64, cast back.

    Every checkpoint must hold the same tensor names and shapes (checked before any averaging).
    """
    if not directories:
        raise ValueError("no checkpoints to average")
    first_file = directories[0] / checkpoint.MODEL_FILE
    first = checkpoint.load_tensors(first_file)
    sums = {name: t.to(torch.float64) if t.is_floating_point() else t.clone() for name, t in first.items()}
    for directory in directories[1:]:
        tensors = checkpoint.load_tensors(directory / checkpoint.MODEL_FILE, expected=first)
        for name, t in tensors.items():
            if t.is_floating_point():
                sums[name] += t.to(torch.float64)
            elif not torch.equal(t, sums[name]):
                raise checkpoint.CheckpointError(
                    f"{directory / checkpoint.MODEL_FILE}: integer tensor {name!r} differs between checkpoints"
                )
    n = len(directories)
    return {
        name: (s / n).to(first[name].dtype) if first[name].is_floating_point() else s
        for name, s in sums.items()
    }


def average_run(
    run_dir: str | os.PathLike[str], last: int, out: str | os.PathLike[str], *, overwrite: bool = False
) -> tuple[Path, list[Path]]:
    """Write the average of the last ``last`` checkpoints of a run as a model directory ``out``.

    The config and tokenizer files come from the newest checkpoint. Returns (out, averaged checkpoints).
    ``out`` may not be the run directory, hold it or be one of its checkpoints; an existing ``out`` holding
    files qkv does not write into a model directory is refused unless ``overwrite``
    (:class:`~qkv.storage.OutputExistsError`, checked before anything is read).
    """
    if isinstance(last, bool) or not isinstance(last, int) or last < 1:
        raise ValueError(f"--last {last!r}: average at least 1 checkpoint")
    run = Path(run_dir)
    # The checkpoints are the input: `out` may not be that folder, hold it (the run directory) or replace a
    # checkpoint in it. A new directory elsewhere in the run (e.g. RUN/averaged) is fine.
    inputs = [run / checkpoint.CHECKPOINTS_DIR]
    checkpoint.check_output(out, overwrite=overwrite, inputs=inputs)
    found = run_checkpoints(run)
    if len(found) < last:
        raise ValueError(
            f"{run_dir}: asked to average {last} checkpoints but only {len(found)} exist "
            f"(train with --keep-last {last} or more)"
        )
    chosen = found[-last:]
    tensors = average(chosen)
    newest = chosen[-1]
    skip = {checkpoint.MODEL_FILE, checkpoint.OPTIMIZER_FILE, checkpoint.TRAINER_STATE_FILE}
    json_files = {
        p.name: checkpoint.load_json(p)
        for p in newest.glob("*.json")
        if p.name not in skip and p.name == checkpoint.CONFIG_FILE
    }
    text_files = {
        p.name: p.read_text(encoding="utf-8")
        for p in newest.glob("*.json")
        if p.name not in skip and p.name not in json_files
    }
    path = checkpoint.save_directory(
        out,
        tensors={checkpoint.MODEL_FILE: tensors},
        json=json_files,
        text=text_files,
        overwrite=overwrite,
        inputs=[*inputs, *chosen],
    )
    return path, chosen
