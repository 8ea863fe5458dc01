"""Fuzzing the loaders: random structural mutations of safetensors headers, config.json, trainer_state.json,
tokenizer files and JSONL lines (seeded, a few hundred cases, a few seconds).

Each case either loads or raises one of the loader's own error classes (CheckpointError, ConfigError,
CorpusError), with a one-line message naming the file; never KeyError, TypeError, RecursionError,
IndexError, AttributeError or anything else. No file is ever modified by a loader.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from torch import nn

from qkv import checkpoint, storage
from qkv.config import BertConfig, ConfigError, model_config_from_dict, preset
from qkv.data.corpus import CorpusError, read_jsonl
from qkv.models import bert_files
from qkv.storage import CheckpointError
from qkv.tokenize import Tokenizer, train_chars
from qkv.train.state import check_optimizer_state, optimizer_to_safetensors, read_run_state
from qkv.train.train_config import TrainConfig

CASES = 150  # per loader; the whole file runs in a few seconds

# Values a damaged or hostile file may hold where a loader expects something else.
ODD_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    2**70,
    1.5,
    -0.0,
    float("inf"),
    float("nan"),
    "",
    "x",
    "F32",
    [],
    [1, 2],
    [-1, 2**64],
    {},
    {"dtype": "F32"},
    "\ud800",
]


def deep(depth: int) -> Any:
    """A list nested ``depth`` levels deep."""
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON value: a tuple of keys and indices from the root."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += paths(item, (*prefix, index))
    return found


def mutate(value: Any, rng: random.Random) -> Any:
    """One structural mutation of a JSON value: replace, delete, add, wrap or deepen a node."""
    value = copy.deepcopy(value)
    where = rng.choice(paths(value))
    operation = rng.choice(["replace", "replace", "delete", "add", "wrap", "deepen", "retype"])
    if not where:
        return rng.choice([*ODD_VALUES, [value], deep(rng.choice([5, 3000]))])
    parent = value
    for step in where[:-1]:
        parent = parent[step]
    key = where[-1]
    if operation == "replace":
        parent[key] = rng.choice(ODD_VALUES)
    elif operation == "delete":
        del parent[key]
    elif operation == "add":
        if isinstance(parent, dict):
            parent[rng.choice(["extra", "__metadata__", "step", "model", "type", "vocab"])] = rng.choice(
                ODD_VALUES
            )
        else:
            parent.append(rng.choice(ODD_VALUES))
    elif operation == "wrap":
        parent[key] = [parent[key]] if rng.random() < 0.5 else {"x": parent[key]}
    elif operation == "deepen":
        parent[key] = deep(rng.choice([10, 3000]))
    else:
        item = parent[key]
        parent[key] = (
            str(item) if not isinstance(item, str) else (len(item) if rng.random() < 0.5 else [item])
        )
    return value


def hashes(root: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()
    }


def expect_only(allowed: tuple[type[Exception], ...], call: Callable[[], object], name: str) -> None:
    """Run one case: it loads, or fails with exactly one of ``allowed``, one line naming ``name``."""
    try:
        call()
    except allowed as error:
        assert type(error) in allowed, f"{type(error).__name__}: {error}"
        message = str(error)
        assert name in message and "\n" not in message, message
    except Exception as error:  # noqa: BLE001 - the point: report whatever else escaped
        pytest.fail(f"{type(error).__name__} escaped the loader: {str(error)[:300]}")


def dump(value: Any, *, ascii_only: bool = False) -> str:
    """JSON text of ``value``, however deeply nested (the encoder recurses once per level)."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20_000))
    try:
        return json.dumps(value, ensure_ascii=ascii_only)
    finally:
        sys.setrecursionlimit(limit)


def safe_dump(value: Any) -> bytes:
    """JSON bytes even for a value holding a lone surrogate (written escaped, as a hostile file may)."""
    return dump(value, ascii_only=True).encode("ascii")


# ---- safetensors headers --------------------------------------------------------------------------------------


def test_fuzzed_safetensors_headers(tmp_path: Path) -> None:
    rng = random.Random(29)
    good = tmp_path / "good.safetensors"
    safetensors.torch.save_file(
        {"w": torch.randn(3, 2), "b": torch.zeros(2, dtype=torch.float16), "i": torch.arange(3)}, str(good)
    )
    raw = good.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header, data = json.loads(raw[8 : 8 + length]), raw[8 + length :]
    bert_dir = tmp_path / "bert"
    bert_dir.mkdir()
    target = bert_dir / "model.safetensors"
    for case in range(CASES):
        if case % 5 == 4:  # byte-level damage: flip, cut or extend
            blob = bytearray(raw)
            at = rng.randrange(len(blob))
            kind = rng.choice(["flip", "cut", "extend"])
            if kind == "flip":
                blob[at] ^= 1 << rng.randrange(8)
            elif kind == "cut":
                del blob[at:]
            else:
                blob += bytes(rng.randrange(1, 9))
            target.write_bytes(bytes(blob))
        else:
            text = safe_dump(mutate(header, rng))
            target.write_bytes(len(text).to_bytes(8, "little") + text + data)
        before = hashes(tmp_path)
        expect_only((CheckpointError,), lambda: checkpoint.load_tensors(target), "model.safetensors")
        expect_only((CheckpointError,), lambda: bert_files.weight_files(bert_dir), "model.safetensors")
        assert hashes(tmp_path) == before


# ---- config.json ---------------------------------------------------------------------------------------------


def test_fuzzed_config_json(tmp_path: Path) -> None:
    rng = random.Random(30)
    seq2seq = {"model": preset("tiny", 40).to_dict()}
    hf = bert_files.config_to_hf(
        BertConfig(vocab_size=30, d_model=8, heads=2, d_ff=16, layers=1), num_labels=2
    )
    config_file = tmp_path / "config.json"
    for case in range(CASES):
        mutated = mutate(seq2seq if case % 2 else hf, rng)
        config_file.write_bytes(safe_dump(mutated))
        before = hashes(tmp_path)

        def load_seq2seq() -> object:
            data = checkpoint.load_json(config_file)
            return model_config_from_dict(data.get("model", data), source=str(config_file))

        def load_bert() -> object:
            data, config = bert_files.read_hf_config(tmp_path)
            bert_files.num_labels_of(data, config_file)
            return bert_files.classifier_dropout_of(data, config_file)

        expect_only((CheckpointError, ConfigError), load_seq2seq if case % 2 else load_bert, "config.json")
        assert hashes(tmp_path) == before


# ---- trainer_state.json --------------------------------------------------------------------------------------


def test_fuzzed_trainer_state(tmp_path: Path) -> None:
    rng = random.Random(31)
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    tensors, meta = optimizer_to_safetensors(optimizer)
    saved = json.loads(
        json.dumps(
            {
                "step": 3,
                "epoch": 0,
                "batch_in_epoch": 3,
                "tokens": 90,
                "best_valid_nll": None,
                "best_valid_bleu": None,
                "evals_without_improvement": 0,
                "skipped_steps": 0,
                "history": [{"step": 2, "valid_nll": 3.5}],
                "train_config": TrainConfig(max_steps=10).to_dict(),
                "world_size": 1,
                "optimizer": meta,
            }
        )
    )
    state_file = tmp_path / "trainer_state.json"
    for _ in range(CASES):
        state_file.write_bytes(safe_dump(mutate(saved, rng)))
        before = hashes(tmp_path)

        def load() -> object:
            data = checkpoint.load_json(state_file)
            _, _, optimizer_meta = read_run_state(data, source=str(state_file))
            check_optimizer_state(optimizer, tensors, optimizer_meta, meta_file=str(state_file))
            return TrainConfig.from_dict(data.get("train_config"), source=str(state_file))

        expect_only((CheckpointError,), load, "trainer_state.json")
        assert hashes(tmp_path) == before


# ---- tokenizer files -----------------------------------------------------------------------------------------


def test_fuzzed_tokenizer_files(tmp_path: Path) -> None:
    rng = random.Random(32)
    tokenizer = json.loads(train_chars(["你好", "hello", "ab"]).to_json())
    path = tmp_path / "tokenizer.json"
    for case in range(CASES // 2):
        if case % 6 == 5:
            path.write_bytes(json.dumps(tokenizer).encode()[: rng.randrange(200)] + b"\xff")
        else:
            path.write_bytes(safe_dump(mutate(tokenizer, rng)))
        before = hashes(tmp_path)
        expect_only((CheckpointError,), lambda: Tokenizer.load(path), "tokenizer.json")
        assert hashes(tmp_path) == before


# ---- JSONL corpus lines ----------------------------------------------------------------------------------------


def test_fuzzed_jsonl_lines(tmp_path: Path) -> None:
    rng = random.Random(33)
    record = {"src": "你好", "tgt": "hello", "meta": {"id": 1, "tags": ["a"]}}
    path = tmp_path / "data.jsonl"
    for case in range(CASES):
        line = dump(mutate(record, rng))
        if case % 7 == 6:
            line = line[: rng.randrange(len(line) + 1)]
        path.write_text(dump(record) + "\n" + line + "\n", encoding="utf-8", errors="surrogatepass")
        before = hashes(tmp_path)
        expect_only((CorpusError,), lambda: read_jsonl(path), "data.jsonl")
        corpus = read_jsonl(
            path, skip_bad=True
        )  # the good line always survives; the other is used or counted
        assert corpus.pairs[0] == ("你好", "hello") and len(corpus.pairs) + sum(corpus.skipped.values()) == 2
        assert hashes(tmp_path) == before


def test_the_mutations_reach_every_kind_of_damage() -> None:
    """The fuzzer is not vacuous: its mutations delete keys, change types and nest deeply."""
    rng = random.Random(0)
    seen = {dump(mutate({"a": {"b": [1, 2]}}, rng))[:40] for _ in range(200)}
    assert any("[[[[[[[[[[" in s for s in seen) and any('"a": {}' in s or '{"a": {}}' in s for s in seen)
    assert len(seen) > 30
    assert storage.CheckpointError is CheckpointError
