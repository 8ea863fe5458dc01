"""Fine-tuning an imported Marian model: ``qkv train --init-from MARIAN-DIR`` keeps its SentencePiece tokenizers
and weights, its loss falls, and a run stopped and resumed ends with the same bits as one that was not;
``qkv import`` writes a native directory that translates as the Marian one does."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from qkv.cli import main
from qkv.convert.marian import load_marian
from qkv.decode import SearchConfig, translate_ids
from qkv.models import saved
from qkv.tokenize_spm import SentencePieceTokenizer
from tests.convert.marian_dirs import MarianDir, corpus, make_marian_dir

pytest.importorskip("sentencepiece")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def marian(tmp_path_factory: pytest.TempPathFactory) -> MarianDir:
    return make_marian_dir(tmp_path_factory.mktemp("finetune") / "m", activation="swish", separate=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    zh, en = corpus(300)
    path = tmp_path_factory.mktemp("data") / "train.tsv"
    path.write_text("".join(f"{e}\t{z}\n" for z, e in zip(zh[:200], en[:200], strict=True)), encoding="utf-8")
    return path


def train(marian: MarianDir, data: Path, out: Path, *extra: str) -> None:
    args = ["train", "--data", str(data), "--src-col", "2", "--tgt-col", "1", "--quiet", "--threads", "1",
            "--max-tokens", "400", "--lr", "3e-3", "--warmup", "1", "--save-every", "3", "--seed", "5",
            "--dropout", "0", "--log-every", "1", "--out", str(out)]  # fmt: skip
    assert main([*args, *extra]) == 0


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fine_tuning_keeps_the_tokenizers_lowers_the_loss_and_resumes_exactly(
    marian: MarianDir, data: Path, tmp_path: Path
) -> None:
    whole = tmp_path / "whole"
    train(marian, data, whole, "--init-from", str(marian.path), "--max-steps", "6")
    tuned = saved.load(whole)
    imported, src, tgt = load_marian(marian.path)
    assert isinstance(tuned.src_tokenizer, SentencePieceTokenizer)
    assert tuned.src_tokenizer.to_json() == src.to_json() and tuned.tgt_tokenizer.to_json() == tgt.to_json()
    assert tuned.seq2seq.config == imported.config
    # The logits bias is a buffer, as in Hugging Face: fine-tuning leaves it as it is.
    assert torch.equal(tuned.seq2seq.output_bias, imported.output_bias)  # type: ignore[arg-type]
    losses = [
        json.loads(line)["loss"]
        for line in (whole / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        if '"loss"' in line and '"lr"' in line
    ]
    assert losses and losses[-1] < losses[0]

    stopped = tmp_path / "stopped"
    train(marian, data, stopped, "--init-from", str(marian.path), "--max-steps", "3")
    train(marian, data, stopped, "--resume", str(stopped), "--max-steps", "6")
    step6 = [run / "checkpoints" / "step-00000006" / "model.safetensors" for run in (whole, stopped)]
    assert sha256(step6[0]) == sha256(step6[1])


def test_import_writes_a_native_directory(marian: MarianDir, tmp_path: Path) -> None:
    out = tmp_path / "native"
    assert main(["import", "--model", str(marian.path), "--out", str(out)]) == 0
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    native, original = saved.load(out), saved.load(marian.path)
    texts = [t for t in corpus(300)[0][250:270] if t.strip()]
    ids = [[*original.src_tokenizer.encode(t), 0] for t in texts]
    search = SearchConfig(method="greedy")
    assert translate_ids(native.seq2seq, ids, search) == translate_ids(original.seq2seq, ids, search)
    assert native.tgt_tokenizer.to_json() == original.tgt_tokenizer.to_json()
    # An output holding the input is refused, and nothing is written.
    assert main(["import", "--model", str(marian.path), "--out", str(marian.path.parent)]) == 2
