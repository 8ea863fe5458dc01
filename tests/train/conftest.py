"""Fixtures of the training tests: a small corpus from the demo grammar and one uninterrupted reference run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from qkv.data import demo
from tests.train import runs


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """600 training and 60 validation pairs of the demo corpus as TSV (English, then Chinese: zh->en is
    --src-col 2 --tgt-col 1)."""
    folder = tmp_path_factory.mktemp("corpus")
    pairs = demo.generate(seed=0, size=660)
    demo.write_tsv(folder / "train.tsv", pairs[:600])
    demo.write_tsv(folder / "valid.tsv", pairs[600:])
    return {"train": folder / "train.tsv", "valid": folder / "valid.tsv"}


@pytest.fixture(scope="session")
def reference_run(corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run of runs.STEPS steps that keeps every checkpoint (every runs.SAVE_EVERY steps),
    in a fresh process of its own."""
    out = tmp_path_factory.mktemp("reference") / "run"
    runs.run(runs.qkv_train(runs.train_args(corpus, out, steps=runs.STEPS)))
    return out


@pytest.fixture
def one_thread() -> Iterator[None]:
    """In-process training on one thread, as in the subprocess runs; the previous setting restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
