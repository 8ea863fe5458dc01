"""The optimizer's state through safetensors + JSON: the next steps are bit-identical to the original's."""

from __future__ import annotations

import copy
import json

import pytest
import safetensors.torch
import torch
from torch import nn

from qkv.storage import CheckpointError
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


# ---- damaged state is refused, naming the file and the tensor or key, and nothing is loaded -------------


def saved_state() -> tuple[nn.Module, torch.optim.AdamW, dict[str, torch.Tensor], dict[str, object]]:
    model, optimizer = model_and_optimizer()
    step(model, optimizer, seed=0, lr=1e-2)
    tensors, meta = optimizer_to_safetensors(optimizer)
    return model, optimizer, tensors, json.loads(json.dumps(meta))


def damaged(kind: str, tensors: dict[str, torch.Tensor], meta: dict[str, object]) -> str:
    """Damage the saved state in one way; return what the error must name."""
    if kind == "transposed":
        tensors["state.0.exp_avg"] = tensors["state.0.exp_avg"].t().contiguous()  # (8, 4) -> (4, 8)
        return r"tensor 'state.0.exp_avg' has shape \[4, 8\] torch.float32, expected shape \[8, 4\]"
    if kind == "extra":
        tensors["state.9.exp_avg"] = torch.zeros(1)
        return r"unexpected tensor 'state.9.exp_avg'"
    if kind == "extra-key":
        tensors["state.1.momentum"] = torch.zeros(8)
        return r"unexpected tensor 'state.1.momentum'"
    if kind == "missing":
        del tensors["state.2.exp_avg_sq"]
        return r"missing tensor 'state.2.exp_avg_sq'"
    if kind == "dtype":
        tensors["state.3.exp_avg_sq"] = tensors["state.3.exp_avg_sq"].double()
        return (
            r"tensor 'state.3.exp_avg_sq' has shape \[3\] torch.float64, expected shape \[3\] torch.float32"
        )
    if kind == "step-shape":
        tensors["state.0.step"] = torch.zeros(2)
        return r"tensor 'state.0.step' .*expected a floating-point scalar"
    if kind == "bad-name":
        tensors["exp_avg"] = torch.zeros(1)
        return r"unexpected tensor 'exp_avg'"
    if kind == "groups":
        meta["param_groups"] = {"lr": 1}
        return r"optimizer.param_groups is \{'lr': 1\}, expected a list of objects"
    if kind == "params":
        meta["param_groups"][0]["params"] = [0, 1]  # type: ignore[index]
        return r"optimizer.param_groups\[0\].params is \[0, 1\], expected \[0, 1, 2, 3\]"
    if kind == "hyper":
        meta["param_groups"][0]["betas"] = "fast"  # type: ignore[index]
        return r"optimizer.param_groups\[0\].betas is 'fast'"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "transposed",
        "extra",
        "extra-key",
        "missing",
        "dtype",
        "step-shape",
        "bad-name",
        "groups",
        "params",
        "hyper",
    ],
)
def test_damaged_optimizer_state_is_refused_and_nothing_is_loaded(kind: str) -> None:
    _, _, tensors, meta = saved_state()
    expected = damaged(kind, tensors, meta)
    fresh_model, fresh = model_and_optimizer()
    before = copy.deepcopy(fresh.state_dict())
    with pytest.raises(CheckpointError, match=expected) as error:
        optimizer_from_safetensors(
            fresh, tensors, meta, tensors_file="run/optimizer.safetensors", meta_file="run/trainer_state.json"
        )
    file = "run/trainer_state.json" if kind in ("groups", "params", "hyper") else "run/optimizer.safetensors"
    assert str(error.value).startswith(f"{file}: ")
    assert fresh.state_dict() == before  # nothing was loaded


def test_a_parameter_without_state_is_allowed() -> None:
    """A parameter that never had a gradient has no Adam state: not damage."""
    _, _, tensors, meta = saved_state()
    for key in ("step", "exp_avg", "exp_avg_sq"):
        del tensors[f"state.1.{key}"]
    _, fresh = model_and_optimizer()
    optimizer_from_safetensors(fresh, tensors, meta)
    assert sorted(fresh.state_dict()["state"]) == [0, 2, 3]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"step": None}, r"missing key 'step'"),
        ({"epoch": "1"}, r"key 'epoch' is '1', expected a whole number >= 0"),
        ({"tokens": -5}, r"key 'tokens' is -5"),
        ({"batch_in_epoch": 2.5}, r"key 'batch_in_epoch' is 2.5"),
        ({"best_valid_nll": "low"}, r"key 'best_valid_nll' is 'low', expected a number or null"),
        ({"history": {"step": 1}}, r"key 'history' is \{'step': 1\}, expected a list of objects"),
        ({"skipped_steps": True}, r"key 'skipped_steps' is True"),
    ],
)
def test_trainer_state_with_a_missing_or_mistyped_key_names_the_file_and_key(
    change: dict[str, object], message: str
) -> None:
    data = TrainerState(step=3, tokens=10).to_dict()
    for key, value in change.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    with pytest.raises(CheckpointError, match=f"^run/trainer_state.json: {message}"):
        TrainerState.from_dict(data, source="run/trainer_state.json")


def test_trainer_state_of_a_run_before_best_valid_bleu_loads() -> None:
    data = TrainerState(step=3).to_dict()
    del data["best_valid_bleu"]
    assert TrainerState.from_dict(data) == TrainerState(step=3)
