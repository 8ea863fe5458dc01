"""Loading a saved translation model: a config that disagrees with its weights is refused before the model
is allocated (RELIABILITY.md, promise 10)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qkv.checkpoint import CheckpointError
from qkv.models import saved
from tests.test_cli_translate import save_tiny_model


def test_a_config_with_huge_sizes_is_refused_before_anything_is_allocated(tmp_path: Path) -> None:
    directory = save_tiny_model(tmp_path / "m")
    config_file = directory / "config.json"
    config = json.loads(config_file.read_text())
    # Well-typed and valid on its own, but 4e9 x d_model floats: ~1 TB if it were built.
    config["model"]["src_vocab_size"] = config["model"]["tgt_vocab_size"] = 4_000_000_000
    config_file.write_text(json.dumps(config))
    # Built first, such a model fails with an allocation error (or takes the machine's memory); checked
    # first, the mismatch with the weights' shapes is named.
    with pytest.raises(CheckpointError, match="model.safetensors"):
        saved.load(directory)


def test_a_consistent_model_still_loads(tmp_path: Path) -> None:
    loaded = saved.load(save_tiny_model(tmp_path / "m"))
    assert not loaded.seq2seq.training
    assert loaded.src_tokenizer.vocab_size == loaded.seq2seq.config.src_vocab_size
