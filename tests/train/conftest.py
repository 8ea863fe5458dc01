"""Fixtures of the training tests: a small corpus from the demo grammar and one uninterrupted reference run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from qkv.data import demo
from qkv.data.corpus import corpus_source
from qkv.train.pipeline import TokenizerConfig, prepare_directory
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
def prepared_corpus(corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The training corpus as ``qkv prepare`` writes it, in shards of a few kilobytes (so that a run reads
    from many), with the reference run's tokenizer settings and positions; the validation file stays text.

    A run on it must equal the reference run on the TSV bit for bit: the same tokenizer (a corpus smaller
    than the tokenizer sample is sampled whole), the same examples, so the same batches.
    """
    out = tmp_path_factory.mktemp("prepared") / "data"
    source = corpus_source(corpus["train"], src_col=2, tgt_col=1, max_chars=2000)
    tok = TokenizerConfig(kind="bpe", vocab_size=300)
    prepare_directory(
        out, source, skip_bad=False, tok=tok, max_positions=256, workers=2, chunk_bytes=4096,
        progress=False, say=lambda _: None,
    )  # fmt: skip
    return {"train": out, "valid": corpus["valid"]}


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
