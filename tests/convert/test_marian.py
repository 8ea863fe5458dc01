"""Hugging Face Marian directories read by qkv (qkv.convert.marian) against transformers.MarianMTModel on the
same files: logits, greedy and beam-4 tokens, tokenization; and the refusals (pickles, fields qkv cannot
honour)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qkv.convert.marian import MarianImportError, load_marian, marian_model_config
from qkv.decode import Lengths, SearchConfig, decode
from qkv.infer.stacks import passes
from qkv.models import saved
from qkv.models.seq2seq import Transformer
from tests.convert.marian_dirs import MarianDir, corpus, make_marian_dir

pytest.importorskip("sentencepiece")
pytest.importorskip("transformers")

# float32 against float32, the same products in another order, through 2+2 layers: 1e-4 is the bar,
# two orders of magnitude above the differences seen (~1e-6).
LOGITS_ATOL = 1e-4
MAX_LENGTH = 24  # Hugging Face's max_length: the start token, at most 22 tokens, </s>
SENTENCES = 100

# The shared vocabulary holds target-language tokens (>>fra<<): its sources start with one.
CASES = {
    "shared-relu-multilingual": dict(separate=False, activation="relu", multilingual=True),
    "separate-swish": dict(separate=True, activation="swish"),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def marian(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> MarianDir:
    return make_marian_dir(tmp_path_factory.mktemp("marian") / "m", **CASES[request.param])  # type: ignore[arg-type]


def sources(marian: MarianDir, count: int = SENTENCES) -> list[str]:
    zh, _ = corpus(400)
    prefix = ">>fra<< " if marian.hf_tokenizer.supported_language_codes else ""
    return [prefix + line for line in zh[200 : 200 + count] if line.strip()]


def hf_generate(marian: MarianDir, texts: list[str], beams: int) -> list[list[int]]:
    tok, model = marian.hf_tokenizer, marian.hf_model
    out: list[list[int]] = []
    for start in range(0, len(texts), 32):
        batch = tok(texts[start : start + 32], return_tensors="pt", padding=True)
        with torch.no_grad():
            generated = model.generate(
                **batch,
                num_beams=beams,
                do_sample=False,
                max_length=MAX_LENGTH,
                length_penalty=0.0,
                early_stopping=True,
            )
        for row in generated.tolist():
            tokens = row[1:]  # after the start token
            if marian.eos_id in tokens:
                tokens = tokens[: tokens.index(marian.eos_id)]
            out.append([t for t in tokens if t != marian.pad_id])
    return out


def qkv_translate(marian: MarianDir, texts: list[str], beams: int, **options: bool) -> list[list[int]]:
    loaded = saved.load(marian.path)
    src = loaded.src_tokenizer
    ids = [[*src.encode(text), loaded.seq2seq.config.eos_id] for text in texts]
    search = SearchConfig(
        method="greedy" if beams == 1 else "beam",
        beam=beams,
        alpha=0.0,
        lengths=Lengths(max_len_a=0, max_len_b=MAX_LENGTH - 2, max_len=MAX_LENGTH - 2),
    )
    found = decode(loaded.seq2seq, ids, search, **options)
    return [hyps[0].tokens for hyps in found]


def test_config_reads_marians_fields(marian: MarianDir) -> None:
    model, _, _ = load_marian(marian.path)
    c, hf = model.config, marian.hf_model.config
    assert (c.pad_id, c.bos_id, c.eos_id) == (hf.pad_token_id, hf.decoder_start_token_id, 0)
    assert c.bos_id == c.pad_id  # decoding starts from the pad id
    assert c.sinusoid_layout == "halves" and c.logits_bias and c.scale_embedding
    assert c.activation == ("silu" if hf.activation_function == "swish" else "relu")
    assert c.share_embeddings == hf.share_encoder_decoder_embeddings


def test_logits_equal_hugging_face(marian: MarianDir) -> None:
    """Teacher forcing on a padded batch, by the model's modules and by the prepared inference passes."""
    texts = sources(marian, 6)
    tok = marian.hf_tokenizer
    batch = tok(texts, text_target=[t[::-1] for t in texts], return_tensors="pt", padding=True)
    labels = batch.pop("labels")
    pad = marian.pad_id
    decoder_in = torch.cat([torch.full((labels.shape[0], 1), pad), labels[:, :-1]], dim=1)
    with torch.no_grad():
        expected = marian.hf_model(**batch, decoder_input_ids=decoder_in).logits
    model: Transformer = load_marian(marian.path)[0]
    real = torch.cat([torch.ones(labels.shape[0], 1, dtype=torch.bool), labels[:, :-1] != pad], dim=1)
    with torch.no_grad():
        ours = model(batch["input_ids"], decoder_in)
        fast = passes(model)
        encoded = fast.encode(batch["input_ids"])
        hidden = fast.decode_hidden(
            decoder_in, fast.cross_keys_values(encoded.memory), encoded.may_attend, causal=True
        )
        prepared = fast.logits(hidden)
    torch.testing.assert_close(ours[real], expected[real], atol=LOGITS_ATOL, rtol=0)
    torch.testing.assert_close(prepared[real], expected[real], atol=LOGITS_ATOL, rtol=0)


def test_greedy_tokens_equal_hugging_face_generate(marian: MarianDir) -> None:
    texts = sources(marian)
    expected = hf_generate(marian, texts, 1)
    assert sum(len(e) < MAX_LENGTH - 2 for e in expected) > len(texts) // 2  # most end by themselves
    assert qkv_translate(marian, texts, 1) == expected


def test_beam_tokens_equal_hugging_face_generate(marian: MarianDir) -> None:
    """Beam 4, no length penalty (alpha 0, length_penalty 0), stopping at 4 finished hypotheses. At the
    length limit Hugging Face forces </s> with log-prob 0 where qkv keeps </s>'s log-prob, so the two
    rank hypotheses cut by the limit differently; they are compared where Hugging Face's best ended by
    itself (the hypotheses are the same; a cut one scores no higher in qkv than in Hugging Face)."""
    texts = sources(marian)
    expected = hf_generate(marian, texts, 4)
    ours = qkv_translate(marian, texts, 4)
    ended = [i for i, e in enumerate(expected) if len(e) < MAX_LENGTH - 2]
    assert len(ended) > len(texts) // 2
    assert [ours[i] for i in ended] == [expected[i] for i in ended]


def test_reference_and_int8_paths_run(marian: MarianDir) -> None:
    texts = sources(marian, 30)
    fast = qkv_translate(marian, texts, 1)
    # The uncached reference re-runs the prefix, starting with the pad id, through Transformer.decode.
    assert qkv_translate(marian, texts[:8], 1, cached=False) == fast[:8]
    int8 = qkv_translate(marian, texts, 1, int8=True)
    vocab = marian.hf_model.config.decoder_vocab_size
    assert all(0 <= t < vocab for row in int8 for t in row)
    assert sum(a == b for a, b in zip(fast, int8, strict=True)) >= len(texts) // 2


def test_translator_text_out(marian: MarianDir) -> None:
    from qkv.translator import Translator

    loaded = saved.load(marian.path)
    lengths = Lengths(max_len_a=0, max_len_b=MAX_LENGTH - 2, max_len=MAX_LENGTH - 2)
    search = SearchConfig(method="greedy", alpha=0.0, lengths=lengths)
    translator = Translator(loaded.seq2seq, loaded.src_tokenizer, loaded.tgt_tokenizer, search)
    texts = sources(marian, 8)
    expected = [
        marian.hf_tokenizer.decode(ids, skip_special_tokens=True) for ids in hf_generate(marian, texts, 1)
    ]
    assert translator.translate([*texts, ""]) == [*expected, ""]


def test_pickle_only_directory_is_refused_and_nothing_written(tmp_path: Path) -> None:
    directory = tmp_path / "opus"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": "marian"}), encoding="utf-8")
    (directory / "pytorch_model.bin").write_bytes(b"PK\x03\x04 not to be read")
    before = sorted((p.name, p.stat().st_mtime_ns) for p in directory.iterdir())
    with pytest.raises(MarianImportError, match="never unpickles.*model.safetensors.*npz"):
        saved.load(directory)
    run = subprocess.run(
        [sys.executable, "-m", "qkv", "translate", "--model", str(directory), "你好"],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert run.returncode != 0
    assert b"never unpickles" in run.stderr and b"Traceback" not in run.stderr
    assert sorted((p.name, p.stat().st_mtime_ns) for p in directory.iterdir()) == before


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("normalize_before", True),
        ("activation_function", "gelu_new"),
        ("decoder_ffn_dim", 99),
        ("add_final_layer_norm", True),
        ("model_type", "bart"),
    ],
)
def test_fields_qkv_cannot_honour_are_named(field: str, value: object) -> None:
    hf = {
        "model_type": "marian",
        "vocab_size": 10,
        "d_model": 8,
        "encoder_attention_heads": 2,
        "decoder_attention_heads": 2,
        "encoder_ffn_dim": 16,
        "decoder_ffn_dim": 16,
        "pad_token_id": 9,
    }
    marian_model_config(hf)  # as it is, fine
    with pytest.raises(MarianImportError, match=field):
        marian_model_config({**hf, field: value})
