"""qkv.export: the Marian (Hugging Face) and CTranslate2 layouts compute what qkv computes.

References: Hugging Face transformers' MarianMTModel (its own implementation, loading the exported
directory) and CTranslate2's C++ Transformer (running the exported model.bin). Tests that need either
package skip, with the reason, when it is absent. The translation model is tiny and trained for a few
dozen steps on the demo corpus, so greedy outputs are sentence-like rather than one repeated token.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from qkv import checkpoint
from qkv.cli import main as qkv_main
from qkv.config import preset
from qkv.data import demo
from qkv.decode import Lengths, SearchConfig, pad_batch, translate_ids
from qkv.export.marian import ExportError, export_marian, marian_state_dict, residual_permutation
from qkv.models import saved
from qkv.models.seq2seq import Transformer
from qkv.nn.positional import sinusoidal_table
from qkv.tokenize import EOS_ID, Tokenizer, train_bpe

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# float32, two implementations summing in different orders (and permuted dimensions): ~2e-6 in practice.
ATOL = 1e-4
MAX_TOKENS = 12  # output tokens before </s> in the greedy comparisons


def _trained_model(tok: Tokenizer, pairs: list[tuple[str, str]], **overrides: Any) -> Transformer:
    """A tiny model after 60 Adam steps on the demo pairs (well under a second)."""
    torch.manual_seed(0)
    model = Transformer(preset("tiny", tok.vocab_size, dropout=0.0, max_positions=64, **overrides))
    src = pad_batch([tok.encode(s) + [EOS_ID] for s, _ in pairs], 0)
    tgt = pad_batch([[1] + tok.encode(t) + [EOS_ID] for _, t in pairs], 0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(60):
        rows = torch.randint(0, len(pairs), (32,), generator=generator)
        logits = model(src[rows], tgt[rows, :-1])
        loss = F.cross_entropy(logits.transpose(1, 2), tgt[rows, 1:], ignore_index=0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def _save(model: Transformer, tok: Tokenizer, path: Path) -> Path:
    checkpoint.save_directory(
        path,
        tensors={checkpoint.MODEL_FILE: model.state_dict()},
        json={checkpoint.CONFIG_FILE: {"model": model.config.to_dict()}},
        text=saved.tokenizer_files(tok, tok),
    )
    return path


@pytest.fixture(scope="module")
def corpus() -> tuple[Tokenizer, list[tuple[str, str]]]:
    pairs = demo.generate(size=400)
    return train_bpe([t for pair in pairs for t in pair], 300), pairs


@pytest.fixture(scope="module")
def post_ln(
    corpus: tuple[Tokenizer, list[tuple[str, str]]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The paper's model: post-LN, sinusoidal positions, shared and tied embeddings."""
    tok, pairs = corpus
    return _save(_trained_model(tok, pairs), tok, tmp_path_factory.mktemp("export") / "post-ln")


@pytest.fixture(scope="module")
def untied(corpus: tuple[Tokenizer, list[tuple[str, str]]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Separate source/target embeddings, an untied output projection and GELU."""
    tok, pairs = corpus
    model = _trained_model(tok, pairs, share_embeddings=False, tie_output=False, activation="gelu")
    return _save(model, tok, tmp_path_factory.mktemp("export") / "untied")


@pytest.fixture(scope="module")
def pre_ln(corpus: tuple[Tokenizer, list[tuple[str, str]]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What Marian cannot express and CTranslate2 can: pre-LN, learned positions."""
    tok, pairs = corpus
    model = _trained_model(tok, pairs, norm_first=True, positions="learned")
    return _save(model, tok, tmp_path_factory.mktemp("export") / "pre-ln")


def _sentences(corpus: tuple[Tokenizer, list[tuple[str, str]]]) -> list[str]:
    tok, pairs = corpus
    return [src for src, _ in pairs[:24]] + ["我爱你", "他很高。"]


def _qkv_greedy(model_dir: Path, texts: list[str]) -> list[list[int]]:
    loaded = saved.load(model_dir)
    sources = [loaded.src_tokenizer.encode(t) + [EOS_ID] for t in texts]
    greedy = SearchConfig(method="greedy", lengths=Lengths(max_len_a=0.0, max_len_b=MAX_TOKENS))
    return translate_ids(loaded.model, sources, greedy)


# ---- the layout fact the Marian export rests on ----------------------------------------------------------


def test_permuted_qkv_positions_are_hugging_face_marians_table() -> None:
    transformers = pytest.importorskip("transformers", reason="pip install transformers (reference only)")
    from transformers.models.marian.modeling_marian import MarianSinusoidalPositionalEmbedding

    d_model = 16
    theirs = MarianSinusoidalPositionalEmbedding(50, d_model).create_weight()
    ours = sinusoidal_table(50, d_model)[:, residual_permutation(d_model)]
    assert transformers is not None
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


# ---- Hugging Face Marian -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["post_ln", "untied"])
def test_marian_export_gives_qkv_logits(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers", reason="pip install transformers (reference only)")
    model_dir: Path = request.getfixturevalue(name)
    export_marian(model_dir, tmp_path / "hf")
    hf, info = transformers.MarianMTModel.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert info["missing_keys"] == set() or info["missing_keys"] == []
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    ours = saved.load(model_dir).model
    src = torch.tensor([[5, 6, 7, 8, 9, 2], [10, 11, 2, 0, 0, 0]])
    tgt = torch.tensor([[1, 12, 13, 14], [1, 15, 16, 0]])
    with torch.no_grad():
        expected = ours(src, tgt)
        got = hf.eval()(input_ids=src, attention_mask=(src != 0).long(), decoder_input_ids=tgt).logits
    # The padded target position attends differently (qkv masks target padding); compare real ones.
    real = tgt != 0
    assert (got[real] - expected[real]).abs().max().item() < ATOL


def test_marian_export_greedy_output_equals_qkv(
    post_ln: Path, corpus: tuple[Tokenizer, list[tuple[str, str]]], tmp_path: Path
) -> None:
    transformers = pytest.importorskip("transformers", reason="pip install transformers (reference only)")
    export_marian(post_ln, tmp_path / "hf")
    hf = transformers.MarianMTModel.from_pretrained(tmp_path / "hf").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    texts = _sentences(corpus)
    batch = hf_tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        # One more step than qkv's limit: both force </s> there (forced_eos_token_id in the export).
        out = hf.generate(**batch, num_beams=1, do_sample=False, max_new_tokens=MAX_TOKENS + 1)
    theirs = [[t for t in row if t not in (0, 1, 2)] for row in out.tolist()]
    ours = _qkv_greedy(post_ln, texts)
    assert theirs == ours
    assert len({tuple(o) for o in ours}) > len(ours) // 2  # non-trivial: mostly different outputs


def test_marian_tokenizer_appends_eos_as_qkv_training_does(post_ln: Path, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers", reason="pip install transformers (reference only)")
    export_marian(post_ln, tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    tok = saved.load(post_ln).src_tokenizer
    assert hf_tok("我爱你。").input_ids == tok.encode("我爱你。") + [EOS_ID]
    assert hf_tok.pad_token_id == 0 and hf_tok.eos_token_id == EOS_ID


def test_marian_export_refuses_what_marian_cannot_express(pre_ln: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="post-LN"):
        export_marian(pre_ln, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    with pytest.raises(ExportError, match="sinusoidal"):
        marian_state_dict(Transformer(preset("tiny", 40, positions="learned")))


# ---- CTranslate2 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["post_ln", "untied", "pre_ln"])
def test_ctranslate2_export_greedy_output_equals_qkv(
    name: str, request: pytest.FixtureRequest, corpus: tuple[Tokenizer, list[tuple[str, str]]], tmp_path: Path
) -> None:
    ctranslate2 = pytest.importorskip("ctranslate2", reason="pip install 'ctranslate2>=4.0'")
    model_dir: Path = request.getfixturevalue(name)
    assert (
        qkv_main(
            ["export", "--model", str(model_dir), "--format", "ctranslate2", "--out", str(tmp_path / "ct2")]
        )
        == 0
    )
    translator = ctranslate2.Translator(str(tmp_path / "ct2"), device="cpu", compute_type="float32")
    tok = Tokenizer.load(tmp_path / "ct2" / "tokenizer.json")
    texts = _sentences(corpus)
    results = translator.translate_batch(
        [tok.tokens(t) for t in texts],  # the export appends </s> itself
        beam_size=1,
        max_decoding_length=MAX_TOKENS,
        suppress_sequences=[["<pad>"], ["<s>"]],
    )
    theirs = [[tok.token_to_id(t) for t in r.hypotheses[0]] for r in results]
    ours = _qkv_greedy(model_dir, texts)
    assert theirs == ours
    assert len({tuple(o) for o in ours}) > len(ours) // 2


def test_cli_export_marian_writes_a_loadable_directory(post_ln: Path, tmp_path: Path) -> None:
    assert (
        qkv_main(["export", "--model", str(post_ln), "--format", "marian", "--out", str(tmp_path / "hf")])
        == 0
    )
    names = sorted(p.name for p in (tmp_path / "hf").iterdir())
    assert names == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]


def test_cli_export_names_the_problem(
    pre_ln: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        qkv_main(["export", "--model", str(pre_ln), "--format", "marian", "--out", str(tmp_path / "x")]) == 2
    )
    assert "--format ctranslate2" in capsys.readouterr().err
