"""The real server as a user runs it: ``python -m qkv serve`` in a subprocess on 127.0.0.1, a free port
(``--port 0``, read back from the line it prints), a random tiny zh->en model built here.

``running_server`` (one server for the session: modules share it, and a module that needs other flags
starts its own :class:`Server`) yields the base URL, e.g. ``http://127.0.0.1:41234``;
``server`` the :class:`Server` itself; ``tiny_translator`` the same model loaded in this process, the
reference the server's answers are compared with.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from qkv import checkpoint
from qkv.config import preset
from qkv.data import demo
from qkv.models import saved
from qkv.models.seq2seq import Transformer
from qkv.tokenize import train_bpe
from qkv.translator import Translator

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
START_TIMEOUT_S = 120


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


class Server:
    """A ``qkv serve`` process: its base ``url`` and everything it wrote on stderr so far."""

    def __init__(self, args: list[str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "qkv", "serve", "--port", "0", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=ENV,
        )
        self._stderr: list[str] = []
        found = threading.Event()
        self.url = ""

        def read() -> None:
            assert self.process.stderr is not None
            for raw in self.process.stderr:
                line = raw.decode("utf-8", errors="replace")
                self._stderr.append(line)
                match = re.search(r"on (http://[^/\s]+)/", line)
                if match and not found.is_set():
                    self.url = match.group(1)
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(START_TIMEOUT_S) or not self.url:
            self.stop()
            raise RuntimeError(f"qkv serve did not start: {self.stderr}")
        self.wait_ready()

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"qkv serve exited with {self.process.returncode}: {self.stderr}")
            time.sleep(0.05)
        raise RuntimeError(f"qkv serve was not ready after {START_TIMEOUT_S} s: {self.stderr}")

    def stop(self) -> int:
        """SIGTERM, then the exit code (killed after a minute: a server that does not stop is a failure
        the caller sees in the code, -9)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


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
