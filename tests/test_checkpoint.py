"""Tests of qkv.checkpoint: bit-exact round trips, refusal of pickles, corrupted files, killed writers."""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import Tensor, nn

from qkv import checkpoint
from qkv.checkpoint import (
    CheckpointError,
    check_state_dict,
    clean_stale,
    commit_checkpoint,
    latest_checkpoint,
    load_directory,
    load_json,
    load_tensors,
    prune_checkpoints,
    save_directory,
    tensor_specs,
)

CONFIG = {"vocab_size": 11, "d_model": 4, "name": "测试", "dropout": 0.1, "layers": [1, 2]}


def make_state(seed: int = 0) -> dict[str, Tensor]:
    """Tensors of many dtypes and shapes, with values a lossy writer would change (NaN, -0.0, inf)."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(5, 4, generator=generator)
    weight[0, 0], weight[0, 1], weight[0, 2] = float("nan"), -0.0, float("inf")
    return {
        "embed.weight": weight,
        "out.weight": weight.t(),  # a non-contiguous view of the same memory
        "half": torch.randn(3, generator=generator).half(),
        "brain": torch.randn(2, 2, generator=generator).bfloat16(),
        "double": torch.randn(2, generator=generator).double(),
        "step": torch.tensor(7 + seed, dtype=torch.int64),  # 0-d
        "mask": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 3),
        "rng": torch.randint(0, 255, (16,), generator=generator, dtype=torch.uint8),
    }


def same_bits(a: Tensor, b: Tensor) -> bool:
    """Bit equality (NaN == NaN, -0.0 != 0.0): the independent reference for a lossless round trip."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(
        a.reshape(-1).contiguous().view(torch.uint8), b.reshape(-1).contiguous().view(torch.uint8)
    )


def assert_same_state(expected: dict[str, Tensor], got: dict[str, Tensor]) -> None:
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert same_bits(expected[name], got[name]), name


def save_model(path: Path, seed: int) -> Path:
    return save_directory(
        path,
        tensors={"model.safetensors": make_state(seed)},
        json={"config.json": {**CONFIG, "seed": seed}},
        text={"tokenizer.json": f'{{"seed": {seed}}}'},
    )


# ---- round trips --------------------------------------------------------------------------------------------


def test_round_trip_is_bit_exact(tmp_path: Path) -> None:
    state = make_state()
    optimizer = {"state.0.exp_avg": torch.randn(5, 4), "param_groups.0.lr": torch.tensor(0.001)}
    trainer_state = {"step": 12, "rng": [1, 2, 3], "loss": float("nan")}
    path = save_directory(
        tmp_path / "model",
        tensors={"model.safetensors": state, "optimizer.safetensors": optimizer},
        json={"config.json": CONFIG, "trainer_state.json": trainer_state},
        text={"tokenizer.json": '{"x": "你好"}'},
    )
    assert sorted(p.name for p in path.iterdir()) == [
        "config.json",
        "model.safetensors",
        "optimizer.safetensors",
        "tokenizer.json",
        "trainer_state.json",
    ]
    config, tensors = load_directory(path)
    assert config == CONFIG
    assert_same_state(state, tensors)
    assert_same_state(optimizer, load_tensors(path / "optimizer.safetensors"))
    assert json.dumps(load_json(path / "trainer_state.json")) == json.dumps(trainer_state)
    assert (path / "tokenizer.json").read_text(encoding="utf-8") == '{"x": "你好"}'
    # An independent reader agrees, and the header carries the metadata transformers expects.
    assert_same_state(state, safetensors.torch.load_file(str(path / "model.safetensors")))
    with safetensors.safe_open(str(path / "model.safetensors"), framework="pt") as handle:
        assert handle.metadata() == {"format": "pt"}
    assert sorted(os.listdir(tmp_path)) == ["model"]  # nothing left beside it


def test_reads_a_file_written_by_safetensors_itself(tmp_path: Path) -> None:
    state = {name: tensor.contiguous() for name, tensor in make_state().items() if name != "out.weight"}
    safetensors.torch.save_file(state, str(tmp_path / "x.safetensors"))
    assert_same_state(state, load_tensors(tmp_path / "x.safetensors"))
    assert tensor_specs(tmp_path / "x.safetensors")["embed.weight"] == ((5, 4), torch.float32)


def test_tied_weights_load_into_a_module_strictly(tmp_path: Path) -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(6, 3)
            self.out = nn.Linear(3, 6, bias=False)
            self.out.weight = self.embed.weight

    torch.manual_seed(0)
    model = Tied()
    save_directory(
        tmp_path / "m", tensors={"model.safetensors": model.state_dict()}, json={"config.json": {}}
    )
    fresh = Tied()
    _, tensors = load_directory(tmp_path / "m")
    check_state_dict(fresh.state_dict(), tensors, "model.safetensors")
    fresh.load_state_dict(tensors, strict=True)
    assert torch.equal(fresh.out.weight, model.embed.weight)
    assert fresh.out.weight is fresh.embed.weight


def test_files_are_mode_0644_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o077)
    try:
        path = save_model(tmp_path / "model", seed=0)
        run = tmp_path / "run"
        commit_checkpoint(run, "step-1", tensors={"model.safetensors": {}}, json={"config.json": {}})
    finally:
        os.umask(previous)
    for file in [
        *path.iterdir(),
        *(run / "checkpoints" / "step-1").iterdir(),
        run / "checkpoints" / "LATEST",
    ]:
        assert stat.S_IMODE(file.stat().st_mode) == 0o644, file
    assert stat.S_IMODE(path.stat().st_mode) == 0o755


def test_save_replaces_a_directory_whole(tmp_path: Path) -> None:
    path = tmp_path / "model"
    # Only names qkv writes into a model directory: replaced without asking (trainer_state.json goes).
    save_directory(path, tensors={}, json={"config.json": {}, "trainer_state.json": {}})
    save_model(path, seed=1)
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert load_directory(path)[0]["seed"] == 1
    assert sorted(os.listdir(tmp_path)) == ["model"]


@pytest.mark.parametrize(
    ("tensors", "json_files", "message"),
    [
        ({"model.bin": {}}, {}, r"model.bin: tensor files must be named \*.safetensors"),
        ({"model.safetensors": {"w": [1.0]}}, {}, "model.safetensors: 'w' is a list, not a Tensor"),
        ({}, {"config.json": {"x": object()}}, "config.json: cannot be written as JSON"),
        ({}, {"../escape.json": {}}, "not a plain file name"),
        ({}, {".hidden.json": {}}, "not a plain file name"),
    ],
)
def test_bad_values_are_refused_before_the_disk_is_touched(
    tmp_path: Path, tensors: dict[str, dict[str, Tensor]], json_files: dict[str, object], message: str
) -> None:
    with pytest.raises(CheckpointError, match=message):
        save_directory(tmp_path / "model", tensors=tensors, json=json_files)
    assert os.listdir(tmp_path) == []


# ---- pickles are never loaded ---------------------------------------------------------------------------------


class Payload:
    """Unpickling this creates the file ``marker``: code from the checkpoint would have run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_the_payload_runs_when_unpickled(tmp_path: Path) -> None:
    """Shows that the refusal tests below would notice if anything unpickled their files."""
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(Payload(marker))).close()
    assert marker.exists()


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make every unpickling entry point fail loudly, and set the variable that disarms torch.load."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("something tried to unpickle a checkpoint")

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    yield


def write_raw_pickle(path: Path, marker: Path, protocol: int) -> None:
    path.write_bytes(pickle.dumps({"weight": Payload(marker)}, protocol=protocol))


def write_torch_save(path: Path, marker: Path, zip_format: bool) -> None:
    torch.save({"weight": Payload(marker)}, path, _use_new_zipfile_serialization=zip_format)


@pytest.mark.parametrize(
    ("file_name", "writer", "message"),
    [
        ("model.pt", lambda p, m: write_torch_save(p, m, True), r"holds a pickle file \(model.pt\)"),
        ("pytorch_model.bin", lambda p, m: write_raw_pickle(p, m, 2), r"pickle file \(pytorch_model.bin\)"),
        ("model.ckpt", lambda p, m: write_raw_pickle(p, m, 4), r"pickle file \(model.ckpt\)"),
        ("model.safetensors", lambda p, m: write_raw_pickle(p, m, 4), r"is a Python pickle \(protocol 4\)"),
        ("model.safetensors", lambda p, m: write_raw_pickle(p, m, 2), r"is a Python pickle \(protocol 2\)"),
        ("model.safetensors", lambda p, m: write_torch_save(p, m, True), "is a zip archive, as torch.save"),
        (
            "model.safetensors",
            lambda p, m: write_torch_save(p, m, False),
            r"is a Python pickle \(protocol 2\)",
        ),
    ],
)
def test_a_pickle_is_refused_and_its_payload_never_runs(
    tmp_path: Path,
    no_unpickling: None,
    file_name: str,
    writer: Callable[[Path, Path], None],
    message: str,
) -> None:
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "config.json").write_text("{}", encoding="utf-8")
    marker = tmp_path / "marker"
    writer(directory / file_name, marker)
    with pytest.raises(CheckpointError, match=message) as error:
        load_directory(directory)
    assert str(directory) in str(error.value)
    assert "safetensors" in str(error.value)
    if file_name == "model.safetensors":
        with pytest.raises(CheckpointError, match="qkv never unpickles"):
            load_tensors(directory / file_name)
    assert not marker.exists()


# ---- corrupted files ----------------------------------------------------------------------------------------


def write_linear_file(path: Path, **override: Tensor) -> Path:
    """A safetensors file of nn.Linear(3, 4)'s tensors, some replaced or added by ``override``."""
    torch.manual_seed(0)
    state = {**nn.Linear(3, 4).state_dict(), **override}
    safetensors.torch.save_file(state, str(path))
    return path


def data_ends(path: Path) -> dict[str, int]:
    """Where each tensor's data ends, read from the header by hand."""
    data = path.read_bytes()
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    return {name: entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"}


def test_a_truncated_file_names_file_and_tensor(tmp_path: Path) -> None:
    path = write_linear_file(tmp_path / "model.safetensors")
    ends = data_ends(path)
    last = max(ends, key=lambda name: ends[name])
    os.truncate(path, path.stat().st_size - 1)
    with pytest.raises(CheckpointError, match=f"model.safetensors: tensor '{last}'.*truncated"):
        load_tensors(path)


@pytest.mark.parametrize(
    ("keep", "message"), [(20, "exceeds the file's .* truncated"), (3, "too short"), (0, "too short")]
)
def test_a_file_cut_inside_its_header_is_reported(tmp_path: Path, keep: int, message: str) -> None:
    path = write_linear_file(tmp_path / "model.safetensors")
    os.truncate(path, keep)
    with pytest.raises(CheckpointError, match=f"model.safetensors: .*{message}"):
        load_tensors(path)


def test_a_flipped_shape_in_the_header_names_the_tensor(tmp_path: Path) -> None:
    path = write_linear_file(tmp_path / "model.safetensors")
    data = bytearray(path.read_bytes())
    at = data.index(b'"shape":[4]')  # the bias: one digit flipped from 4 to 5
    data[at + len('"shape":[')] = ord("5")
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors: tensor 'bias': corrupted header"):
        load_tensors(path)


@pytest.mark.parametrize("offset", [8, 9, 20])
def test_a_flipped_header_byte_is_reported(tmp_path: Path, offset: int) -> None:
    path = write_linear_file(tmp_path / "model.safetensors")
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors: .*(corrupted|not a safetensors)"):
        load_tensors(path)


@pytest.mark.parametrize("length", [2**62, 200_000_000, 10_000])
def test_a_huge_header_length_is_reported(tmp_path: Path, length: int) -> None:
    path = write_linear_file(tmp_path / "model.safetensors")
    data = bytearray(path.read_bytes())
    data[:8] = length.to_bytes(8, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"model.safetensors: header length {length} bytes exceeds"):
        load_tensors(path)


def test_bytes_appended_after_the_data_are_reported(tmp_path: Path) -> None:
    path = write_linear_file(tmp_path / "model.safetensors")
    with open(path, "ab") as handle:
        handle.write(b"\0" * 4)
    with pytest.raises(CheckpointError, match="model.safetensors: 4 bytes after the last tensor"):
        load_tensors(path)


@pytest.mark.parametrize(
    ("override", "drop", "message"),
    [
        (
            {"weight": torch.zeros(5, 3)},
            None,
            r"tensor 'weight' has shape \[5, 3\] in the file, \[4, 3\] expected",
        ),
        ({}, "bias", "missing tensors 'bias'"),
        ({"extra": torch.zeros(1)}, None, "unexpected tensors 'extra'"),
        ({"bias": torch.zeros(4, dtype=torch.int64)}, None, "tensor 'bias' has dtype torch.int64"),
    ],
)
def test_a_mismatched_file_names_file_and_tensor_and_loads_nothing(
    tmp_path: Path, override: dict[str, Tensor], drop: str | None, message: str
) -> None:
    torch.manual_seed(0)
    state = {**nn.Linear(3, 4).state_dict(), **override}
    if drop:
        del state[drop]
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(state, str(path))
    module = nn.Linear(3, 4)
    before = {name: tensor.clone() for name, tensor in module.state_dict().items()}
    with pytest.raises(CheckpointError, match=f"model.safetensors: does not fit the model: .*{message}"):
        module.load_state_dict(load_tensors(path, expected=module.state_dict()))
    with pytest.raises(CheckpointError, match=message):
        check_state_dict(module.state_dict(), tensor_specs(path), path)
    assert_same_state(before, module.state_dict())  # nothing was loaded


def test_float_dtypes_may_differ_unless_strict(tmp_path: Path) -> None:
    expected = {"w": ((2,), torch.float32)}
    check_state_dict(expected, {"w": torch.zeros(2, dtype=torch.float16)}, "f")
    with pytest.raises(CheckpointError, match="f: does not fit.*dtype torch.float16"):
        check_state_dict(expected, {"w": torch.zeros(2, dtype=torch.float16)}, "f", strict_dtype=True)


def test_load_json_names_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{\n  "a": 1,\n  oops\n}', encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"config.json:3:3: invalid JSON"):
        load_json(path)
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(CheckpointError, match="config.json: expected a JSON object"):
        load_json(path)
    path.write_bytes(b"\x80\x04\x95")
    with pytest.raises(CheckpointError, match="config.json: not UTF-8"):
        load_json(path)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_json(tmp_path / "missing.json")


def test_missing_directory_and_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere: no such model directory"):
        load_directory(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty: has no model.safetensors"):
        load_directory(tmp_path / "empty")


# ---- run directories ----------------------------------------------------------------------------------------


def commit(run: Path, name: str, seed: int) -> Path:
    return commit_checkpoint(
        run, name, tensors={"model.safetensors": make_state(seed)}, json={"config.json": {"seed": seed}}
    )


def test_latest_checkpoint_follows_commits(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert latest_checkpoint(run) is None
    commit(run, "step-1", 1)
    commit(run, "step-2", 2)
    latest = latest_checkpoint(run)
    assert latest == run / "checkpoints" / "step-2"
    assert (run / "checkpoints" / "LATEST").read_text() == "step-2\n"
    config, tensors = load_directory(latest)
    assert config == {"seed": 2}
    assert_same_state(make_state(2), tensors)


def test_latest_pointing_nowhere_is_an_error(tmp_path: Path) -> None:
    pointer = tmp_path / "checkpoints" / "LATEST"
    pointer.parent.mkdir()
    pointer.write_text("step-9\n")
    with pytest.raises(CheckpointError, match="LATEST: names checkpoint 'step-9' but .* does not exist"):
        latest_checkpoint(tmp_path)
    pointer.write_text("../../etc\n")
    with pytest.raises(CheckpointError, match="is not a checkpoint name"):
        latest_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="is not a checkpoint name"):
        commit(tmp_path, "a/b", 0)


def test_prune_keeps_the_last_in_natural_order_and_latest(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for step in [1, 2, 9, 10, 11]:
        commit_checkpoint(run, f"step-{step}", tensors={}, json={"config.json": {}})
    (run / "checkpoints" / "LATEST").write_text("step-2\n")  # e.g. the best one so far
    removed = prune_checkpoints(run, keep_last=2)
    assert sorted(p.name for p in removed) == ["step-1", "step-9"]
    assert sorted(os.listdir(run / "checkpoints")) == ["LATEST", "step-10", "step-11", "step-2"]
    with pytest.raises(ValueError, match="keep_last=0"):
        prune_checkpoints(run, keep_last=0)


def test_clean_stale_leaves_a_live_writer_alone(tmp_path: Path) -> None:
    live = tmp_path / f".model.tmp-{os.getppid()}-abcd"  # our parent process is alive
    dead = tmp_path / ".model.tmp-999999999-abcd"  # beyond pid_max: no such process
    live.mkdir()
    dead.mkdir()
    (tmp_path / "unrelated").mkdir()
    assert clean_stale(tmp_path) == [dead]
    assert sorted(os.listdir(tmp_path)) == [live.name, "unrelated"]


# ---- a writer killed at each stage -----------------------------------------------------------------------


def run_killed_at(stage: str, write: Callable[[], object]) -> None:
    """Run ``write`` in a forked child that SIGKILLs itself when the writer reaches ``stage`` (a prefix)."""

    def hook(reached: str) -> None:
        if reached.startswith(stage):
            os.kill(os.getpid(), signal.SIGKILL)

    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            checkpoint._stage_hook = hook
            write()
        finally:
            os._exit(3)  # only reached if the stage never came
    deadline = time.monotonic() + 30
    while (result := os.waitpid(pid, os.WNOHANG)) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the writer hung before stage {stage}")
        time.sleep(0.005)
    status = result[1]
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"stage {stage} never reached"


FILE_STAGES = [f"{kind}:{file}" for file in ("model.safetensors", "config.json", "tokenizer.json") for kind in ("partial", "written")]  # fmt: skip
REPLACE_STAGES = ["tmp_created", *FILE_STAGES, "synced", "old_moved", "new_moved", "old_removed"]
COMMITTED_AT = "new_moved"


@pytest.mark.parametrize("clean_first", [True, False], ids=["clean-then-load", "load-then-clean"])
@pytest.mark.parametrize("stage", REPLACE_STAGES)
def test_killed_while_replacing_a_directory(tmp_path: Path, stage: str, clean_first: bool) -> None:
    path = tmp_path / "model"
    save_model(path, seed=1)
    run_killed_at(stage, lambda: save_model(path, seed=2))
    expected_seed = 2 if REPLACE_STAGES.index(stage) >= REPLACE_STAGES.index(COMMITTED_AT) else 1
    leftovers = [name for name in os.listdir(tmp_path) if name.startswith(".")]
    assert len(leftovers) == (0 if stage == "old_removed" else 1 if stage != "old_moved" else 2), leftovers
    if clean_first:
        clean_stale(tmp_path)
    config, tensors = load_directory(path)
    assert config["seed"] == expected_seed
    assert_same_state(make_state(expected_seed), tensors)
    clean_stale(tmp_path)
    assert os.listdir(tmp_path) == ["model"]
    assert load_directory(path)[0]["seed"] == expected_seed


COMMIT_STAGES = ["tmp_created", "partial:model.safetensors", "written:config.json", "synced", "new_moved"]
POINTER_STAGES = ["partial:.LATEST.tmp-", "pointer_written", "pointer_replaced"]


@pytest.mark.parametrize("stage", COMMIT_STAGES + POINTER_STAGES)
def test_killed_while_committing_a_new_checkpoint(tmp_path: Path, stage: str) -> None:
    run = tmp_path / "run"
    commit(run, "step-1", 1)
    run_killed_at(stage, lambda: commit(run, "step-2", 2))
    expected = "step-2" if stage == "pointer_replaced" else "step-1"
    clean_stale(run)
    latest = latest_checkpoint(run)
    assert latest is not None and latest.name == expected
    config, tensors = load_directory(latest)
    assert config == {"seed": int(expected[-1])}
    assert_same_state(make_state(int(expected[-1])), tensors)
    leftovers = [name for name in os.listdir(run / "checkpoints") if name.startswith(".")]
    assert leftovers == []


@pytest.mark.parametrize("stage", ["tmp_created", "partial:model.safetensors", "synced", "old_moved"])
def test_disk_full_leaves_the_previous_directory_and_no_leftovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    path = tmp_path / "model"
    save_model(path, seed=1)

    def hook(reached: str) -> None:
        if reached == stage:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "_stage_hook", hook)
    with pytest.raises(OSError, match="model: could not write the directory.*No space left.*unchanged"):
        save_model(path, seed=2)
    assert os.listdir(tmp_path) == ["model"]
    assert load_directory(path)[0]["seed"] == 1
