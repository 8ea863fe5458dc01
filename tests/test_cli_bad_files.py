"""Damaged files given to the command line (issue #29's file classes, end to end): each run in a subprocess
exits non-zero with one line on stderr naming the file (and the field or tensor), no traceback, and changes
nothing on disk. The loaders' own tests (tests/test_reliability_loaders.py, tests/test_fuzz_loaders.py)
cover the same classes in depth; these check that the CLI turns them into one line."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from qkv import checkpoint
from tests.test_cli_reliability import error_line, qkv, snapshot
from tests.test_cli_translate import save_tiny_model
from tests.train import runs


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model") / "m")


def _header(payload: bytes) -> bytes:
    """A safetensors file whose JSON header is ``payload`` and which holds no tensor data."""
    return len(payload).to_bytes(8, "little") + payload


def _not_utf8(d: Path) -> str:
    (d / "tokenizer.json").write_bytes(b'\xff\xfe{"model": 1}')
    return "tokenizer.json"


def _tokenizer_of_the_wrong_shape(d: Path) -> str:
    (d / "tokenizer.json").write_text("[1, 2, 3]", encoding="utf-8")
    return "tokenizer.json"


def _header_of_the_wrong_shape(d: Path) -> str:
    (d / checkpoint.MODEL_FILE).write_bytes(_header(b'[{"dtype": "F32"}]'))
    return checkpoint.MODEL_FILE


def _header_entry_without_offsets(d: Path) -> str:
    (d / checkpoint.MODEL_FILE).write_bytes(_header(b'{"w": {"dtype": "F32", "shape": [2]}}'))
    return checkpoint.MODEL_FILE


def _pathologically_nested_header(d: Path) -> str:
    (d / checkpoint.MODEL_FILE).write_bytes(_header(b"[" * 100_000 + b"]" * 100_000))
    return checkpoint.MODEL_FILE


def _config_without_a_required_field(d: Path) -> str:
    config = json.loads((d / checkpoint.CONFIG_FILE).read_text(encoding="utf-8"))
    del config["model"]["src_vocab_size"]
    (d / checkpoint.CONFIG_FILE).write_text(json.dumps(config), encoding="utf-8")
    return "src_vocab_size"


def _config_field_of_the_wrong_type(d: Path) -> str:
    config = json.loads((d / checkpoint.CONFIG_FILE).read_text(encoding="utf-8"))
    config["model"]["layer_norm_eps"] = "small"
    (d / checkpoint.CONFIG_FILE).write_text(json.dumps(config), encoding="utf-8")
    return "layer_norm_eps"


MODEL_DAMAGE: dict[str, Callable[[Path], str]] = {
    "tokenizer not UTF-8": _not_utf8,
    "tokenizer of the wrong shape": _tokenizer_of_the_wrong_shape,
    "safetensors header of the wrong shape": _header_of_the_wrong_shape,
    "safetensors entry without data_offsets": _header_entry_without_offsets,
    "safetensors header nested 100,000 deep": _pathologically_nested_header,
    "config.json without a required field": _config_without_a_required_field,
    "config.json field of the wrong type": _config_field_of_the_wrong_type,
}


@pytest.mark.parametrize("damage", list(MODEL_DAMAGE), ids=list(MODEL_DAMAGE))
def test_a_damaged_model_directory_is_one_line_naming_what(
    damage: str, model_dir: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    named = MODEL_DAMAGE[damage](model)
    before = snapshot(model)
    done = qkv("translate", "--model", str(model), stdin="我爱你\n".encode())
    assert done.returncode != 0 and done.stdout == ""
    assert named in error_line(done.stderr, "translate")
    assert snapshot(model) == before


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run of 2 steps with its optimizer state, trained once for this module."""
    folder = tmp_path_factory.mktemp("run")
    from qkv.data import demo

    demo.write_tsv(folder / "train.tsv", demo.generate(seed=0, size=200))
    out = folder / "run"
    runs.run(runs.qkv_train(runs.train_args({"train": folder / "train.tsv"}, out, steps=2, valid=False)))
    return out


def _latest(run: Path) -> Path:
    latest = checkpoint.latest_checkpoint(run)
    assert latest is not None
    return latest


def _transposed_exp_avg(run: Path) -> str:
    file = _latest(run) / checkpoint.OPTIMIZER_FILE
    tensors = load_file(str(file))
    name = next(n for n, t in tensors.items() if "exp_avg" in n and t.dim() == 2 and t.shape[0] != t.shape[1])
    tensors[name] = tensors[name].t().contiguous()
    save_file(tensors, str(file))
    return checkpoint.OPTIMIZER_FILE


def _trainer_state_without_step(run: Path) -> str:
    file = _latest(run) / checkpoint.TRAINER_STATE_FILE
    state = json.loads(file.read_text(encoding="utf-8"))
    del state["step"]
    file.write_text(json.dumps(state), encoding="utf-8")
    return "step"


RUN_DAMAGE: dict[str, Callable[[Path], str]] = {
    "optimizer state transposed": _transposed_exp_avg,
    "trainer_state.json without a key": _trainer_state_without_step,
}


@pytest.mark.parametrize("damage", list(RUN_DAMAGE), ids=list(RUN_DAMAGE))
def test_resuming_a_damaged_run_is_one_line_and_leaves_it_as_it_was(
    damage: str, trained_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    named = RUN_DAMAGE[damage](run)
    before = snapshot(run)
    done = qkv("train", "--resume", str(run), "--max-steps", "4", "--threads", "1", "--quiet")
    assert done.returncode != 0
    assert named in error_line(done.stderr, "train")
    assert snapshot(run) == before


def test_a_jsonl_line_nested_too_deep_is_file_and_line(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    lines = [json.dumps({"src": "我爱你", "tgt": "I love you."})] * 3
    lines.insert(1, '{"src": ' + "[" * 50_000 + "]" * 50_000 + ', "tgt": "x"}')
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    before = snapshot(tmp_path)
    done = qkv("train", "--data", str(data), "--out", str(tmp_path / "out"), "--max-steps", "1", "--quiet")
    assert done.returncode != 0
    assert f"{data}:2:" in error_line(done.stderr, "train")
    assert snapshot(tmp_path) == before


def test_embed_with_a_damaged_bert_checkpoint_is_one_line(tmp_path: Path) -> None:
    """The BERT loader reads the same headers: a Hugging Face BERT directory whose weights file has a
    header of the wrong shape."""
    model = tmp_path / "bert"
    model.mkdir()
    config = {
        "model_type": "bert", "architectures": ["BertModel"], "vocab_size": 30, "hidden_size": 8,
        "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16,
        "max_position_embeddings": 16, "type_vocab_size": 2, "hidden_act": "gelu",
    }  # fmt: skip
    (model / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (model / "model.safetensors").write_bytes(_header(b'{"embeddings.word_embeddings.weight": [30, 8]}'))
    (model / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b"]), "utf-8")
    before = snapshot(model)
    done = qkv("embed", "--model", str(model), "a b")
    assert done.returncode != 0 and done.stdout == ""
    assert "model.safetensors" in error_line(done.stderr, "embed")
    assert snapshot(model) == before
