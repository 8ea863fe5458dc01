"""A run directory's checkpoints, from the trainer's side: what each holds, written whole and read back
only after every file has been checked.

A checkpoint (``<run>/checkpoints/step-N/``) is a complete model directory plus ``optimizer.safetensors``
and ``trainer_state.json``; ``<run>/best/`` is a model directory. Both are written atomically by
:mod:`qkv.checkpoint`. Reading a checkpoint to resume checks the model's tensors, the state's keys and
types, and every optimizer tensor's name, shape and dtype before anything is loaded
(:mod:`qkv.train.state`), so a damaged file stops the run with one error naming it, and is never carried
into later checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from qkv import checkpoint
from qkv.train.state import TrainerState, check_optimizer_state, optimizer_to_safetensors, read_run_state

BEST_DIR = "best"


def write_checkpoint(
    run_dir: Path,
    step: int,
    *,
    model_tensors: Mapping[str, Tensor],
    optimizer: torch.optim.Optimizer,
    trainer_state: Mapping[str, Any],
    model_json: Mapping[str, Any],
    model_text: Mapping[str, str],
    keep_last: int,
) -> Path:
    """Commit ``run_dir/checkpoints/step-<step>/`` (model, optimizer, trainer state and the model's own
    files), point LATEST at it, and prune all but the last ``keep_last``. Returns the checkpoint."""
    opt_tensors, opt_meta = optimizer_to_safetensors(optimizer)
    path = checkpoint.commit_checkpoint(
        run_dir,
        f"step-{step:08d}",
        tensors={checkpoint.MODEL_FILE: model_tensors, checkpoint.OPTIMIZER_FILE: opt_tensors},
        json={**model_json, checkpoint.TRAINER_STATE_FILE: {**trainer_state, "optimizer": opt_meta}},
        text=model_text,
    )
    checkpoint.prune_checkpoints(run_dir, keep_last)
    return path


def write_best(
    run_dir: Path,
    *,
    model_tensors: Mapping[str, Tensor],
    model_json: Mapping[str, Any],
    model_text: Mapping[str, str],
) -> Path:
    """Replace ``run_dir/best/`` with this model. best/ is the run's own: replaced whatever it holds."""
    return checkpoint.save_directory(
        run_dir / BEST_DIR,
        tensors={checkpoint.MODEL_FILE: model_tensors},
        json=model_json,
        text=model_text,
        overwrite=True,
    )


@dataclass
class ResumePoint:
    """A checkpoint read back and checked, ready to load."""

    model_tensors: dict[str, Tensor]
    optimizer_tensors: dict[str, Tensor]
    optimizer_meta: dict[str, Any]
    state: TrainerState


def read_resume_point(
    directory: Path, model_state: Mapping[str, Tensor], optimizer: torch.optim.Optimizer, world: int
) -> ResumePoint:
    """Read the checkpoint in ``directory`` for a run of ``world`` processes, checking everything first.

    A :class:`~qkv.storage.CheckpointError` names the file, and the tensor or key, when the model's tensors
    do not fit ``model_state``, when trainer_state.json lacks a key or holds one of the wrong type, when the
    run had another number of processes, or when optimizer.safetensors does not hold exactly the tensors
    ``optimizer`` keeps for its parameters, in their shapes and dtypes.
    """
    model_tensors = checkpoint.load_tensors(directory / checkpoint.MODEL_FILE, expected=model_state)
    state_file = directory / checkpoint.TRAINER_STATE_FILE
    state, saved_world, meta = read_run_state(checkpoint.load_json(state_file), source=str(state_file))
    if saved_world != world:
        raise checkpoint.CheckpointError(
            f"{directory}: was written by a run of {saved_world} processes, this one has {world}; "
            "resume with the same number of processes (the data shards depend on it)"
        )
    optimizer_file = directory / checkpoint.OPTIMIZER_FILE
    check_optimizer_state(
        optimizer,
        checkpoint.tensor_specs(optimizer_file),
        meta,
        tensors_file=str(optimizer_file),
        meta_file=str(state_file),
    )
    return ResumePoint(model_tensors, checkpoint.load_tensors(optimizer_file), meta, state)
