"""The real server as a user runs it: ``python -m qkv serve`` in a subprocess on 127.0.0.1, a free port
(``--port 0``, read back from the line it prints), a random tiny zh->en model built here.

``running_server`` (one server for the session: modules share it, and a module that needs other flags
starts its own :class:`~benchmarks.serve_process.Server`) yields the base URL, e.g. ``http://127.0.0.1:41234``;
``server`` the :class:`Server` itself; ``tiny_translator`` the same model loaded in this process, the
reference the server's answers are compared with.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from benchmarks.serve_process import Server as Server  # re-exported for the server tests
from qkv import checkpoint
from qkv.config import preset
from qkv.data import demo
from qkv.models import saved
from qkv.models.seq2seq import Transformer
from qkv.tokenize import train_bpe
from qkv.translator import Translator


def save_tiny_model(path: Path) -> Path:
    """A randomly initialised tiny model with a real BPE tokenizer trained on demo sentences."""
    pairs = demo.generate(size=300)
    tok = train_bpe([t for pair in pairs for t in pair], 300)
    torch.manual_seed(0)
    model = Transformer(preset("tiny", tok.vocab_size, dropout=0.0, max_positions=64))
    checkpoint.save_directory(
        path,
        tensors={checkpoint.MODEL_FILE: model.state_dict()},
        json={checkpoint.CONFIG_FILE: {"model": model.config.to_dict()}},
        text=saved.tokenizer_files(tok, tok),
    )
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("serve-model") / "zh-en")


@pytest.fixture(scope="session")
def server(tiny_model_dir: Path) -> Iterator[Server]:
    """A server on the tiny model with default options (beam 4) and limits small enough to test."""
    running = Server(
        [
            "--model",
            f"zh-en={tiny_model_dir}",
            "--max-texts",
            "16",
            "--max-chars",
            "200",
            "--max-body-bytes",
            "20000",
        ]
    )
    yield running
    running.stop()


@pytest.fixture(scope="session")
def running_server(server: Server) -> str:
    """The base URL of the running server (one for the session)."""
    return server.url


@pytest.fixture(scope="session")
def tiny_translator(tiny_model_dir: Path) -> Translator:
    """The served model, loaded here with the server's default search (beam 4)."""
    loaded = saved.load(tiny_model_dir)
    assert isinstance(loaded.model, Transformer)
    return Translator(loaded.model, loaded.src_tokenizer, loaded.tgt_tokenizer)
