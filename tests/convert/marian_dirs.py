"""Tiny Hugging Face Marian directories built in the test: SentencePiece models trained on a few hundred lines,
an OPUS-MT style vocabulary, a random ``MarianMTModel`` saved with ``save_pretrained`` (safetensors)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from qkv.data import demo

_TRAINED: dict[tuple[object, ...], dict[str, torch.Tensor]] = {}
CMN_ENG = Path("/work/shared/data/cmn-eng/train.tsv")
LANGUAGE_TOKENS = (">>fra<<", ">>deu<<")


def corpus(size: int = 400) -> tuple[list[str], list[str]]:
    """(Chinese, English) lines: the shared cmn-eng split's first lines when present, else the demo corpus."""
    if CMN_ENG.is_file():
        rows = CMN_ENG.read_bytes().decode("utf-8").split("\n")[:size]
        pairs = [tuple(row.split("\t")[:2]) for row in rows if row.count("\t") >= 1]
        return [zh for _, zh in pairs], [en for en, _ in pairs]
    generated = demo.generate(size=size)  # (chinese, english) pairs
    return [zh for zh, _ in generated], [en for _, en in generated]


def train_spm(lines: list[str], path: Path, vocab_size: int) -> Path:
    """A unigram SentencePiece model as Marian's spm_train makes one (<unk> 0, <s> 1, </s> 2)."""
    spm = pytest.importorskip("sentencepiece")
    with open(os.devnull, "w") as quiet:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_prefix=str(path.with_suffix("")),
            vocab_size=vocab_size,
            model_type="unigram",
            character_coverage=0.98,  # rare characters stay out: they become <unk>
            hard_vocab_limit=False,
            num_threads=1,
            logstream=quiet,
        )
    model = path.with_suffix(".model")
    model.rename(path)
    path.with_suffix(".vocab").unlink()
    return path


def pieces(spm_file: Path) -> list[str]:
    spm = pytest.importorskip("sentencepiece")
    processor = spm.SentencePieceProcessor(model_file=str(spm_file))
    return [processor.IdToPiece(i) for i in range(processor.GetPieceSize())]


def opus_vocab(
    piece_lists: list[list[str]], *, pad_last: bool, extra: tuple[str, ...] = (), drop: int = 3
) -> dict[str, int]:
    """An OPUS-MT vocabulary: </s> 0, <unk> 1, [<pad> 2], extra tokens, the pieces (minus every ``drop``-th,
    so some pieces are missing and map to <unk>), [<pad> last]."""
    vocab: dict[str, int] = {"</s>": 0, "<unk>": 1}
    if not pad_last:
        vocab["<pad>"] = 2
    for token in extra:
        vocab[token] = len(vocab)
    for plist in piece_lists:
        for i, piece in enumerate(plist):
            if piece in ("<unk>", "<s>", "</s>") or piece in vocab or (drop and i % drop == drop - 1):
                continue
            vocab[piece] = len(vocab)
    if pad_last:
        vocab["<pad>"] = len(vocab)
    return vocab


def fit(model: Any, tokenizer: Any, zh: list[str], en: list[str], *, pad: int, steps: int) -> None:
    """A few Adam steps of teacher forcing (Hugging Face's own loss), 32 sentence pairs a step."""
    encoded = tokenizer(zh, text_target=en, return_tensors="pt", padding=True)
    sources, mask, labels = encoded["input_ids"], encoded["attention_mask"], encoded["labels"]
    labels = labels.masked_fill(labels == pad, -100)
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        rows = torch.randint(len(zh), (32,), generator=generator)
        loss = model(input_ids=sources[rows], attention_mask=mask[rows], labels=labels[rows]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


@dataclass
class MarianDir:
    path: Path
    hf_model: Any  # transformers.MarianMTModel
    hf_tokenizer: Any  # transformers.MarianTokenizer
    pad_id: int
    eos_id: int


def make_marian_dir(
    path: Path,
    *,
    separate: bool = False,
    activation: str = "relu",
    multilingual: bool = False,
    d_model: int = 32,
    seed: int = 0,
    zero_pad: bool = False,
    train_steps: int = 100,
) -> MarianDir:
    """A tiny OPUS-MT-like zh->en directory: a model trained for ``train_steps`` steps on the corpus, so that
    its outputs end with </s> by themselves and its output distributions are peaked, as a real model's.
    ``zero_pad``: <pad>'s embedding and logits bias are zero, as in a model converted from Marian's."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("sentencepiece")
    path.mkdir(parents=True)
    work = path.parent / f"{path.name}-spm"
    work.mkdir()
    zh, en = corpus()
    source_spm = train_spm(zh, work / "source.spm", 600)
    target_spm = train_spm(en, work / "target.spm", 250)
    extra = LANGUAGE_TOKENS if multilingual else ()
    if separate:
        src_vocab = opus_vocab([pieces(source_spm)], pad_last=False, extra=extra)
        tgt_vocab = opus_vocab([pieces(target_spm)], pad_last=False)
    else:
        src_vocab = tgt_vocab = opus_vocab(
            [pieces(source_spm), pieces(target_spm)], pad_last=True, extra=extra
        )
    (work / "vocab.json").write_text(json.dumps(src_vocab, ensure_ascii=False), encoding="utf-8")
    (work / "target_vocab.json").write_text(json.dumps(tgt_vocab, ensure_ascii=False), encoding="utf-8")
    tokenizer = transformers.MarianTokenizer(
        source_spm=str(source_spm),
        target_spm=str(target_spm),
        vocab=str(work / "vocab.json"),
        target_vocab_file=str(work / "target_vocab.json") if separate else None,
        separate_vocabs=separate,
    )
    tokenizer.save_pretrained(str(path))
    pad = src_vocab["<pad>"]
    assert tgt_vocab["<pad>"] == pad
    config = transformers.MarianConfig(
        vocab_size=len(src_vocab),
        decoder_vocab_size=len(tgt_vocab),
        d_model=d_model,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=2 * d_model,
        decoder_ffn_dim=2 * d_model,
        max_position_embeddings=128,
        activation_function=activation,
        pad_token_id=pad,
        eos_token_id=0,
        bos_token_id=0,
        decoder_start_token_id=pad,
        forced_eos_token_id=0,
        scale_embedding=True,
        share_encoder_decoder_embeddings=not separate,
        dropout=0.0,
    )
    key = (separate, multilingual, activation, d_model, seed, train_steps)
    model = transformers.MarianMTModel(config)
    if key not in _TRAINED:  # trained once per test session, then copied
        torch.manual_seed(seed)
        model = transformers.MarianMTModel(config)
        fit(model, tokenizer, zh, en, pad=pad, steps=train_steps)
        _TRAINED[key] = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(_TRAINED[key])
    model.eval()
    with torch.no_grad():
        # Hugging Face never trains the logits bias (a buffer); give it values, so that it matters.
        bias = torch.randn(model.final_logits_bias.shape, generator=torch.Generator().manual_seed(seed))
        model.final_logits_bias.copy_(0.2 * bias)
        if zero_pad:  # as Hugging Face's converter adds <pad> to a Marian model: a zero row, a zero bias
            model.get_output_embeddings().weight[pad].zero_()
            model.get_input_embeddings().weight[pad].zero_()
            model.final_logits_bias[0, pad] = 0.0
    model.generation_config.bad_words_ids = [[pad]]
    model.generation_config.decoder_start_token_id = pad
    model.generation_config.forced_eos_token_id = 0
    model.save_pretrained(str(path))
    return MarianDir(path, model, tokenizer, pad, 0)
