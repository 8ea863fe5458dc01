"""Resumable training state as safetensors + JSON (never pickle).

Everything a run needs to continue bit for bit: the optimizer's moments (tensors) and hyper-parameters
(JSON), the position in the data (epoch and batch index: the batch order is a pure function of the seed
and the epoch) and the step. The learning rate is a pure function of the step, and the dropout RNG is
reseeded from (seed, step, rank) before every step, so no RNG state needs saving and every rank of a
multi-process run resumes exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class TrainerState:
    """Where a run is. Saved as trainer_state.json beside each checkpoint."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0  # the epoch being read
    batch_in_epoch: int = 0  # index of the next batch (of this rank's shard) in that epoch
    tokens: int = 0  # target tokens trained on (all ranks)
    best_valid_nll: float | None = None  # the best so far, when best/ is picked by valid_nll
    best_valid_bleu: float | None = None  # the same when it is picked by valid_bleu
    evals_without_improvement: int = 0
    skipped_steps: int = 0  # steps skipped for a non-finite loss
    history: list[dict[str, Any]] = field(default_factory=list)  # validation results

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainerState:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def optimizer_to_safetensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimizer's state_dict into tensors (for safetensors) and JSON-able metadata."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, per_param in state_dict["state"].items():
        for key, value in per_param.items():
            if isinstance(value, Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(index), {})[key] = value
    meta = {"param_groups": state_dict["param_groups"], "scalars": scalars}
    return tensors, meta


def optimizer_from_safetensors(
    optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict[str, Any]
) -> None:
    """Load what :func:`optimizer_to_safetensors` wrote back into ``optimizer``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for index, values in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    groups = meta["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
