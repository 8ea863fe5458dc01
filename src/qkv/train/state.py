"""Resumable training state as safetensors + JSON (never pickle), checked before any of it is used.

Everything a run needs to continue bit for bit: the optimizer's moments (tensors) and hyper-parameters
(JSON), the position in the data (epoch and batch index: the batch order is a pure function of the seed
and the epoch) and the step. The learning rate is a pure function of the step, and the dropout RNG is
reseeded from (seed, step, rank) before every step, so no RNG state needs saving and every rank of a
multi-process run resumes exactly.

A damaged ``trainer_state.json`` or ``optimizer.safetensors`` is refused with a
:class:`~qkv.storage.CheckpointError` naming the file and the key or tensor: a transposed moment, a tensor
too many or too few, a key missing or of the wrong type. Nothing is loaded until everything has passed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

from qkv.storage import CheckpointError, json_type

# The per-parameter state of Adam and AdamW: the step count (a float scalar tensor) and the moments.
_ADAM_MOMENTS = ("exp_avg", "exp_avg_sq")
_TENSOR_NAME = re.compile(r"^state\.(?P<index>0|[1-9]\d*)\.(?P<key>.+)$")


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
    # The step a time budget's schedule decays to 0 at, planned once from the measured step rate and kept
    # from then on, so that a resumed run follows the same learning-rate curve (qkv.train.budget).
    planned_steps: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # validation results

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "trainer_state.json") -> TrainerState:
        """The state saved in ``data`` (other keys are ignored), every field checked: a missing key or a
        value of the wrong type is a :class:`CheckpointError` naming ``source`` and the key.

        ``best_valid_bleu`` and ``planned_steps`` may be absent (runs saved before they existed); every other
        field must be there.
        """
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                if f.name in ("best_valid_bleu", "planned_steps"):
                    continue
                raise CheckpointError(f"{source}: missing key {f.name!r}; the file is damaged or not qkv's")
            value = data[f.name]
            kind = str(f.type)
            if kind == "int":
                ok, wanted = _is_count(value), "a whole number >= 0"
            elif kind == "int | None":
                ok, wanted = value is None or (_is_count(value) and value > 0), "a whole number > 0 or null"
            elif kind == "float | None":
                ok, wanted = value is None or _is_number(value), "a number or null"
            else:  # history
                ok = isinstance(value, list) and all(isinstance(item, dict) for item in value)
                wanted = "a list of objects"
            if not ok:
                raise CheckpointError(f"{source}: key {f.name!r} is {_short(value)}, expected {wanted}")
            values[f.name] = value
        return cls(**values)


def read_run_state(data: Mapping[str, Any], *, source: str) -> tuple[TrainerState, int, dict[str, Any]]:
    """(state, world size, optimizer metadata) from a loaded trainer_state.json, every part checked."""
    state = TrainerState.from_dict(data, source=source)
    world = data.get("world_size", 1)
    if not _is_count(world) or world < 1:
        raise CheckpointError(f"{source}: key 'world_size' is {_short(world)}, expected a whole number >= 1")
    meta = data.get("optimizer")
    if not isinstance(meta, dict):
        what = "missing" if meta is None else f"{json_type(meta)}, not an object"
        raise CheckpointError(f"{source}: key 'optimizer' is {what}; the file is damaged or not qkv's")
    return state, world, meta


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


def check_optimizer_state(
    optimizer: torch.optim.Optimizer,
    tensors: Mapping[str, Tensor | tuple[tuple[int, ...], torch.dtype]],
    meta: Mapping[str, Any],
    *,
    tensors_file: str = "optimizer.safetensors",
    meta_file: str = "trainer_state.json",
) -> None:
    """Raise :class:`CheckpointError` unless ``tensors`` (or their (shape, dtype) specs) and ``meta`` are
    exactly what :func:`optimizer_to_safetensors` writes for this ``optimizer``'s parameters.

    Parameter groups must list the same parameters, hyper-parameters must keep their types, and every
    tensor must be named ``state.<parameter index>.<key>`` of a parameter that exists. For Adam and AdamW a
    parameter has either no state (it never had a gradient) or exactly ``step`` (a floating-point scalar),
    ``exp_avg`` and ``exp_avg_sq`` (and ``max_exp_avg_sq`` with amsgrad), of the parameter's shape and dtype.
    """
    current = optimizer.state_dict()["param_groups"]
    groups = meta.get("param_groups")
    where = f"{meta_file}: optimizer.param_groups"
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise CheckpointError(f"{where} is {_short(groups)}, expected a list of objects")
    if len(groups) != len(current):
        raise CheckpointError(f"{where} has {len(groups)} groups, this optimizer {len(current)}")
    params: list[Tensor] = [p for group in optimizer.param_groups for p in group["params"]]
    amsgrad = False
    for number, (saved, ours) in enumerate(zip(groups, current, strict=True)):
        if saved.get("params") != ours["params"]:
            raise CheckpointError(
                f"{where}[{number}].params is {_short(saved.get('params'))}, expected {_short(ours['params'])}: "
                "the checkpoint belongs to another model"
            )
        for key, value in ours.items():
            if key != "params" and key in saved and not _same_kind(saved[key], value):
                raise CheckpointError(
                    f"{where}[{number}].{key} is {_short(saved[key])}, expected a value like {value!r}"
                )
        amsgrad = amsgrad or bool(saved.get("amsgrad", False))
    scalars = meta.get("scalars", {})
    if not isinstance(scalars, dict) or not all(
        _TENSOR_NAME.match(f"state.{index}.x") and isinstance(values, dict)
        for index, values in scalars.items()
    ):
        raise CheckpointError(f"{meta_file}: optimizer.scalars must map parameter indices to objects")
    by_param: dict[int, dict[str, tuple[tuple[int, ...], torch.dtype]]] = {}
    for name, value in tensors.items():
        match = _TENSOR_NAME.match(name)
        if match is None or int(match["index"]) >= len(params):
            raise CheckpointError(
                f"{tensors_file}: unexpected tensor {name!r} (this optimizer has parameters "
                f"0..{len(params) - 1}); nothing was loaded"
            )
        shape, dtype = (tuple(value.shape), value.dtype) if isinstance(value, Tensor) else value
        by_param.setdefault(int(match["index"]), {})[match["key"]] = (tuple(shape), dtype)
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        keys = {"step", *_ADAM_MOMENTS, *(("max_exp_avg_sq",) if amsgrad else ())}
        for index, specs in sorted(by_param.items()):
            _check_adam_param(index, specs, keys, params[index], tensors_file)


def _check_adam_param(
    index: int,
    specs: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
    keys: set[str],
    param: Tensor,
    tensors_file: str,
) -> None:
    missing, extra = sorted(keys - set(specs)), sorted(set(specs) - keys)
    if missing:
        raise CheckpointError(
            f"{tensors_file}: missing tensor 'state.{index}.{missing[0]}'; nothing was loaded"
        )
    if extra:
        raise CheckpointError(
            f"{tensors_file}: unexpected tensor 'state.{index}.{extra[0]}'; nothing was loaded"
        )
    for key, (shape, dtype) in sorted(specs.items()):
        want = ((), None) if key == "step" else (tuple(param.shape), param.dtype)
        ok = shape == want[0] and (dtype.is_floating_point if key == "step" else dtype == want[1])
        if not ok:
            expected = "a floating-point scalar" if key == "step" else f"shape {list(want[0])} {want[1]}"
            raise CheckpointError(
                f"{tensors_file}: tensor 'state.{index}.{key}' has shape {list(shape)} {dtype}, expected "
                f"{expected} (parameter {index}'s); the file is damaged or belongs to another model"
            )


def optimizer_from_safetensors(
    optimizer: torch.optim.Optimizer,
    tensors: dict[str, Tensor],
    meta: dict[str, Any],
    *,
    tensors_file: str = "optimizer.safetensors",
    meta_file: str = "trainer_state.json",
) -> None:
    """Load what :func:`optimizer_to_safetensors` wrote back into ``optimizer``, after
    :func:`check_optimizer_state` (a mismatch loads nothing and names the file and tensor or key)."""
    check_optimizer_state(optimizer, tensors, meta, tensors_file=tensors_file, meta_file=meta_file)
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for index, values in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    groups = [dict(group) for group in meta["param_groups"]]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _same_kind(saved: Any, ours: Any) -> bool:
    """Whether a saved hyper-parameter has the type of the optimizer's own (None matches anything)."""
    if saved is None or ours is None:
        return True
    if isinstance(ours, bool) or isinstance(saved, bool):
        return isinstance(ours, bool) and isinstance(saved, bool)
    if _is_number(ours):
        return _is_number(saved)
    if isinstance(ours, (list, tuple)):
        return (
            isinstance(saved, list)
            and len(saved) == len(ours)
            and all(_same_kind(s, o) for s, o in zip(saved, ours, strict=True))
        )
    return type(saved) is type(ours)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _short(value: Any, limit: int = 50) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
