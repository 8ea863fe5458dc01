"""Marian release directories (qkv.convert.marian_npz): a tiny .npz written here in Marian's parameter names
from the weights of a Hugging Face Marian directory gives Hugging Face's logits and tokens; CTranslate2's
own Marian converter on the same release directory gives the same greedy tokens."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from qkv.convert.marian import MarianImportError
from qkv.convert.marian_npz import load_release
from qkv.decode import Lengths, SearchConfig, translate_ids
from qkv.models import saved
from tests.convert.marian_dirs import MarianDir, corpus, make_marian_dir

yaml = pytest.importorskip("yaml")
pytest.importorskip("sentencepiece")
pytest.importorskip("transformers")

LOGITS_ATOL = 1e-4  # as tests/convert/test_marian.py
MAX_TOKENS = 20
NPZ = "opus.spm300-spm250.transformer.model1.npz.best-perplexity.npz"
VOCAB = "opus.spm300-spm250.vocab.yml"


def marian_weights(hf: MarianDir) -> dict[str, np.ndarray[Any, Any]]:
    """The Hugging Face weights in Marian's names, written out by hand from Marian's conventions (CTranslate2's
    converters/marian.py reads the same names): linear weights (in, out), vectors (1, n), no <pad> row."""
    state = {k: v.detach().numpy() for k, v in hf.hf_model.state_dict().items()}
    pad = hf.pad_id
    out: dict[str, np.ndarray[Any, Any]] = {
        "Wemb": np.delete(state["model.shared.weight"], pad, axis=0),
        "decoder_ff_logit_out_b": np.delete(state["final_logits_bias"], pad, axis=1),
    }
    config = hf.hf_model.config
    for stack, layers in (("encoder", config.encoder_layers), ("decoder", config.decoder_layers)):
        for i in range(layers):
            hf_prefix, scope = f"model.{stack}.layers.{i}.", f"{stack}_l{i + 1}_"
            blocks = [("self_attn", "self_attn_layer_norm", "self")]
            if stack == "decoder":
                blocks.append(("encoder_attn", "encoder_attn_layer_norm", "context"))
            for block, norm, name in blocks:
                for x, proj in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "out_proj")):
                    out[f"{scope}{name}_W{x}"] = state[f"{hf_prefix}{block}.{proj}.weight"].T.copy()
                    out[f"{scope}{name}_b{x}"] = state[f"{hf_prefix}{block}.{proj}.bias"][None, :]
                out[f"{scope}{name}_Wo_ln_scale"] = state[f"{hf_prefix}{norm}.weight"][None, :]
                out[f"{scope}{name}_Wo_ln_bias"] = state[f"{hf_prefix}{norm}.bias"][None, :]
            for n, fc in (("1", "fc1"), ("2", "fc2")):
                out[f"{scope}ffn_W{n}"] = state[f"{hf_prefix}{fc}.weight"].T.copy()
                out[f"{scope}ffn_b{n}"] = state[f"{hf_prefix}{fc}.bias"][None, :]
            out[f"{scope}ffn_ffn_ln_scale"] = state[f"{hf_prefix}final_layer_norm.weight"][None, :]
            out[f"{scope}ffn_ffn_ln_bias"] = state[f"{hf_prefix}final_layer_norm.bias"][None, :]
    options = {
        "type": "transformer",
        "dim-emb": config.d_model,
        "dim-vocabs": [config.vocab_size - 1, config.vocab_size - 1],
        "enc-depth": config.encoder_layers,
        "dec-depth": config.decoder_layers,
        "transformer-heads": config.encoder_attention_heads,
        "transformer-dim-ffn": config.encoder_ffn_dim,
        "transformer-ffn-depth": 2,
        "transformer-ffn-activation": config.activation_function,
        "transformer-preprocess": "",
        "transformer-postprocess": "dan",
        "transformer-postprocess-emb": "d",
        "transformer-postprocess-top": "",
        "transformer-decoder-autoreg": "self-attention",
        "transformer-no-projection": False,
        "transformer-tied-layers": [],
        "transformer-guided-alignment-layer": "last",
        "transformer-train-position-embeddings": False,
        "tied-embeddings-all": True,
        "right-left": False,
    }
    text = yaml.safe_dump(options).encode("utf-8") + b"\0"
    out["special:model.yml"] = np.frombuffer(text, dtype=np.int8)
    return out


def write_release(hf: MarianDir, path: Path) -> Path:
    path.mkdir()
    np.savez(path / NPZ, **marian_weights(hf))
    vocab = json.loads((hf.path / "vocab.json").read_text(encoding="utf-8"))
    del vocab["<pad>"]  # Marian has none; the import adds it after the last id
    (path / VOCAB).write_text(yaml.safe_dump(vocab, allow_unicode=True, sort_keys=False), encoding="utf-8")
    decoder = {"models": [NPZ], "vocabs": [VOCAB, VOCAB], "beam-size": 4, "normalize": 1}
    (path / "decoder.yml").write_text(yaml.safe_dump(decoder), encoding="utf-8")
    for name in ("source.spm", "target.spm"):
        shutil.copy(hf.path / name, path / name)
    return path


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[MarianDir, Path]:
    root = tmp_path_factory.mktemp("release")
    # test_marian.py's shared directory (the same trained weights), with <pad> as Marian's converter adds it.
    hf = make_marian_dir(root / "hf", activation="relu", multilingual=True, zero_pad=True)
    return hf, write_release(hf, root / "release")


def test_logits_equal_hugging_face(dirs: tuple[MarianDir, Path]) -> None:
    hf, release = dirs
    zh, en = corpus(40)
    batch = hf.hf_tokenizer(zh[:5], text_target=en[:5], return_tensors="pt", padding=True)
    labels = batch.pop("labels")
    decoder_in = torch.cat([torch.full((labels.shape[0], 1), hf.pad_id), labels[:, :-1]], dim=1)
    with torch.no_grad():
        expected = hf.hf_model(**batch, decoder_input_ids=decoder_in).logits
        model = load_release(release)[0]
        ours = model(batch["input_ids"], decoder_in)
    real = torch.cat([torch.ones(labels.shape[0], 1, dtype=torch.bool), labels[:, :-1] != hf.pad_id], dim=1)
    torch.testing.assert_close(ours[real], expected[real], atol=LOGITS_ATOL, rtol=0)


def qkv_greedy(path: Path, texts: list[str]) -> tuple[list[list[int]], Any]:
    loaded = saved.load(path)
    eos = loaded.seq2seq.config.eos_id
    lengths = Lengths(max_len_a=0, max_len_b=MAX_TOKENS, max_len=MAX_TOKENS)
    ids = [[*loaded.src_tokenizer.encode(t), eos] for t in texts]
    return translate_ids(loaded.seq2seq, ids, SearchConfig(method="greedy", lengths=lengths)), loaded


def test_release_and_hugging_face_directories_translate_alike(dirs: tuple[MarianDir, Path]) -> None:
    hf, release = dirs
    texts = [t for t in corpus(300)[0][200:260] if t.strip()]
    from_release, loaded = qkv_greedy(release, texts)
    from_hf, _ = qkv_greedy(hf.path, texts)
    assert from_release == from_hf
    assert loaded.src_tokenizer.encode(texts[0]) == hf.hf_tokenizer(texts[0]).input_ids[:-1]


def test_ctranslate2_marian_converter_agrees(dirs: tuple[MarianDir, Path], tmp_path: Path) -> None:
    ctranslate2 = pytest.importorskip("ctranslate2")
    from ctranslate2.converters.marian import MarianConverter

    hf, release = dirs
    out = tmp_path / "ct2"
    MarianConverter(str(release / NPZ), [str(release / VOCAB)]).convert(str(out))
    texts = [t for t in corpus(300)[0][200:260] if t.strip()]
    ours, loaded = qkv_greedy(release, texts)
    translator = ctranslate2.Translator(str(out), device="cpu", inter_threads=1, intra_threads=1)
    results = translator.translate_batch(
        [loaded.src_tokenizer.tokens(t) for t in texts], beam_size=1, max_decoding_length=MAX_TOKENS + 1
    )
    vocab = loaded.tgt_tokenizer.vocab
    theirs = [[vocab[piece] for piece in r.hypotheses[0]] for r in results]
    finished = [i for i, row in enumerate(ours) if len(row) < MAX_TOKENS]
    assert len(finished) > len(texts) // 2
    assert [ours[i] for i in finished] == [theirs[i] for i in finished]


def test_options_qkv_cannot_compute_are_named(dirs: tuple[MarianDir, Path], tmp_path: Path) -> None:
    hf, _ = dirs
    weights = marian_weights(hf)
    release = write_release(hf, tmp_path / "pre-norm")
    options = yaml.safe_load(weights["special:model.yml"].tobytes().rstrip(b"\0"))
    options["transformer-preprocess"] = "n"
    weights["special:model.yml"] = np.frombuffer(yaml.safe_dump(options).encode() + b"\0", dtype=np.int8)
    np.savez(release / NPZ, **weights)
    with pytest.raises(MarianImportError, match="transformer-preprocess"):
        load_release(release)


def test_object_arrays_are_never_unpickled(tmp_path: Path) -> None:
    release = tmp_path / "r"
    release.mkdir()
    np.savez(release / NPZ, payload=np.array([object()], dtype=object))
    (release / VOCAB).write_text('"</s>": 0\n"<unk>": 1\n', encoding="utf-8")
    with pytest.raises(MarianImportError, match="plain arrays"):
        load_release(release)
