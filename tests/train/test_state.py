"""The optimizer's state through safetensors + JSON: the next steps are bit-identical to the original's."""

from __future__ import annotations

import copy
import json

import safetensors.torch
import torch
from torch import nn

from qkv.train.state import TrainerState, optimizer_from_safetensors, optimizer_to_safetensors


def model_and_optimizer() -> tuple[nn.Module, torch.optim.AdamW]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.98), eps=1e-9, weight_decay=0.01)
    return model, optimizer


def step(model: nn.Module, optimizer: torch.optim.Optimizer, seed: int, lr: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.randn(5, 4, generator=generator), torch.randn(5, 3, generator=generator)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    nn.functional.mse_loss(model(x), y).backward()
    optimizer.step()


def test_adamw_state_round_trip_gives_bit_identical_next_steps() -> None:
    model, optimizer = model_and_optimizer()
    for i in range(3):
        step(model, optimizer, seed=i, lr=1e-2 / (i + 1))

    tensors, meta = optimizer_to_safetensors(optimizer)
    # Through real bytes, as a checkpoint would (safetensors for tensors; the metadata is plain JSON).
    tensors = safetensors.torch.load(safetensors.torch.save(tensors))
    meta = json.loads(json.dumps(meta))

    restored_model, restored_optimizer = model_and_optimizer()
    restored_model.load_state_dict(copy.deepcopy(model.state_dict()))
    optimizer_from_safetensors(restored_optimizer, tensors, meta)

    for i in range(3, 6):
        step(model, optimizer, seed=i, lr=3e-3)
        step(restored_model, restored_optimizer, seed=i, lr=3e-3)
    for (name, a), b in zip(model.state_dict().items(), restored_model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    original, restored = optimizer.state_dict(), restored_optimizer.state_dict()
    for index, values in original["state"].items():
        for key, value in values.items():
            assert torch.equal(value, restored["state"][index][key]), (index, key)
    assert original["param_groups"] == restored["param_groups"]


def test_optimizer_tensors_are_separate_and_metadata_is_json() -> None:
    model, optimizer = model_and_optimizer()
    step(model, optimizer, seed=0, lr=1e-2)
    tensors, meta = optimizer_to_safetensors(optimizer)
    params = len(list(model.parameters()))
    assert sorted(tensors) == sorted(
        f"state.{i}.{k}" for i in range(params) for k in ("step", "exp_avg", "exp_avg_sq")
    )
    assert meta["param_groups"][0]["betas"] == (0.9, 0.98)


def test_trainer_state_round_trip_ignores_unknown_keys() -> None:
    state = TrainerState(
        step=7, epoch=1, batch_in_epoch=3, tokens=900, best_valid_nll=2.5, history=[{"step": 5}]
    )
    assert TrainerState.from_dict({**state.to_dict(), "train_config": {}, "world_size": 1}) == state
