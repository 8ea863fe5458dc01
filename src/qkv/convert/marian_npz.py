"""Marian release directories (OPUS-MT's zip files) as qkv models, read with ``numpy.load(allow_pickle=False)``.

A release directory as OPUS-MT publishes it::

    opus.spm32k-spm32k.transformer-align.model1.npz.best-perplexity.npz   the weights, Marian's names
    decoder.yml                 which .npz and which vocabularies marian-decoder reads
    opus.spm32k-spm32k.vocab.yml  piece -> id (one file, or one per side)
    source.spm, target.spm      SentencePiece models

The .npz holds a ``special:model.yml`` entry (the training options as YAML bytes) beside the weights.
Weights are renamed into Hugging Face's layout by the one name table of :mod:`qkv.convert.marian` and
loaded from there, so a release directory and its Hugging Face conversion give one model. As Hugging
Face's converter does, a ``<pad>`` token is added after the vocabulary with a zero embedding and a zero
logits bias: Marian starts decoding from a zero vector, which is that token's embedding.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from qkv.config import ModelConfig
from qkv.convert.marian import (
    DECODER_LAYER,
    ENCODER_LAYER,
    HF_ACTIVATIONS,
    LOGITS_BIAS,
    MarianImportError,
    checked_model,
)
from qkv.models.seq2seq import Transformer
from qkv.tokenize_spm import SentencePieceTokenizer, load_spm

__all__ = ["is_release_directory", "load_release", "release_config"]

MODEL_YML = "special:model.yml"
# The Transformer options qkv computes, and the value each must have (Marian's post-LN Transformer).
_REQUIRED_OPTIONS: dict[str, Any] = {
    "type": "transformer",
    "transformer-decoder-autoreg": "self-attention",
    "transformer-preprocess": "",
    "transformer-postprocess": "dan",
    "transformer-ffn-depth": 2,
    "transformer-no-projection": False,
    "transformer-train-position-embeddings": False,
    "right-left": False,
}
_POSTPROCESS_EMB = ("", "d")  # dropout only; "n" would normalise the embeddings
_MAX_POSITIONS = 512  # what Hugging Face's converter gives OPUS-MT models


def _yaml(text: str, source: str) -> Any:
    try:
        import yaml
    except ImportError as error:
        raise MarianImportError(
            f"{source}: reading Marian's YAML needs pyyaml (pip install pyyaml)"
        ) from error
    try:
        return yaml.load(text, Loader=yaml.BaseLoader)  # every scalar a string: no YAML type guessing
    except yaml.YAMLError as error:
        raise MarianImportError(f"{source}: not YAML ({' '.join(str(error).split())[:200]})") from error


def _release_files(directory: Path) -> tuple[Path, list[Path]]:
    """The weights and the vocabularies: as decoder.yml names them, else the one .npz and the *.vocab.yml."""
    decoder_yml = directory / "decoder.yml"
    if decoder_yml.is_file():
        settings = _yaml(decoder_yml.read_text(encoding="utf-8"), str(decoder_yml))
        models, vocabs = (
            settings.get("models"),
            settings.get("vocabs") if isinstance(settings, dict) else None,
        )
        if not (isinstance(models, list) and models and isinstance(vocabs, list) and vocabs):
            raise MarianImportError(f"{decoder_yml}: expected lists 'models' and 'vocabs'")
        # Only the file names: decoder.yml may not lead qkv outside the directory.
        return directory / Path(models[0]).name, [directory / Path(v).name for v in vocabs]
    npz = sorted(directory.glob("*.npz"))
    vocabs = sorted(directory.glob("*.vocab.yml"))
    if len(npz) != 1 or not vocabs:
        raise MarianImportError(
            f"{directory}: a Marian release directory needs decoder.yml, or one .npz and its *.vocab.yml"
        )
    return npz[0], vocabs


def is_release_directory(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` looks like a Marian release directory (decoder.yml, or an .npz and a *.vocab.yml)."""
    directory = Path(path)
    if not directory.is_dir():
        return False
    if (directory / "decoder.yml").is_file():
        return True
    return any(directory.glob("*.npz")) and any(directory.glob("*.vocab.yml"))


def _read_npz(file: Path) -> dict[str, np.ndarray[Any, Any]]:
    if not file.is_file():
        raise MarianImportError(f"{file}: no such Marian model file")
    try:
        with np.load(file, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:
        # allow_pickle=False makes numpy refuse object arrays (pickles) with a ValueError: never unpickled.
        raise MarianImportError(f"{file}: not a Marian .npz of plain arrays ({error})") from error


def _vocab(file: Path) -> dict[str, int]:
    if not file.is_file():
        raise MarianImportError(f"{file}: no such vocabulary")
    data = _yaml(file.read_text(encoding="utf-8"), str(file))
    if not isinstance(data, dict):
        raise MarianImportError(f"{file}: expected a mapping piece: id")
    vocab: dict[str, int] = {}
    for piece, value in data.items():
        try:
            vocab[str(piece)] = int(value)
        except (TypeError, ValueError):
            raise MarianImportError(f"{file}: {piece!r}: {value!r} is not a token id") from None
    return vocab


def release_config(
    options: dict[str, Any], vocab_sizes: tuple[int, int], *, pad: int, eos: int, source: str
) -> ModelConfig:
    """The qkv config of Marian's training options (``special:model.yml``); an option that changes the
    function and that qkv cannot compute is a :class:`MarianImportError` naming it."""
    for name, wanted in _REQUIRED_OPTIONS.items():
        value = options.get(name)
        if value is not None and str(value).lower() != str(wanted).lower():
            raise MarianImportError(
                f"{source}: {name}={value!r} is not supported: qkv computes {name}={wanted!r}"
            )
    postprocess_emb = options.get("transformer-postprocess-emb", "d")
    if postprocess_emb not in _POSTPROCESS_EMB:
        raise MarianImportError(
            f"{source}: transformer-postprocess-emb={postprocess_emb!r} is not supported (only 'd' or '')"
        )
    tied_layers = options.get("transformer-tied-layers") or []
    if tied_layers:
        raise MarianImportError(f"{source}: transformer-tied-layers={tied_layers!r} is not supported")
    activation = str(options.get("transformer-ffn-activation", "swish"))
    if activation not in ("relu", "swish"):  # Marian's gelu is x * sigmoid(1.702 x), not qkv's
        raise MarianImportError(
            f"{source}: transformer-ffn-activation={activation!r} is not supported (relu or swish)"
        )

    def number(name: str, default: int) -> int:
        value = options.get(name, default)
        try:
            return int(value)
        except (TypeError, ValueError):
            raise MarianImportError(f"{source}: {name}={value!r} must be an integer") from None

    try:
        return ModelConfig(
            src_vocab_size=vocab_sizes[0],
            tgt_vocab_size=vocab_sizes[1],
            d_model=number("dim-emb", 512),
            heads=number("transformer-heads", 8),
            d_ff=number("transformer-dim-ffn", 2048),
            encoder_layers=number("enc-depth", 6),
            decoder_layers=number("dec-depth", 6),
            dropout=0.1,
            activation=HF_ACTIVATIONS[activation],
            max_positions=_MAX_POSITIONS,
            sinusoid_layout="halves",
            scale_embedding=True,
            logits_bias=True,
            share_embeddings=vocab_sizes[0] == vocab_sizes[1]
            and _is_true(options.get("tied-embeddings-all")),
            tie_output=_is_true(options.get("tied-embeddings-all"))
            or _is_true(options.get("tied-embeddings")),
            pad_id=pad,
            bos_id=pad,
            eos_id=eos,
        )
    except ValueError as error:
        raise MarianImportError(f"{source}: {error}") from None


def _is_true(value: Any) -> bool:
    return str(value).lower() == "true"


def _with_pad_row(matrix: np.ndarray[Any, Any], rows: int) -> Tensor:
    """The matrix with zero rows appended up to ``rows`` (the added <pad>)."""
    tensor = torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float32))
    return torch.cat([tensor, tensor.new_zeros(rows - tensor.shape[0], *tensor.shape[1:])])


def hf_tensors(
    weights: dict[str, np.ndarray[Any, Any]], config: ModelConfig, file: Path
) -> dict[str, Tensor]:
    """Marian's weights in Hugging Face Marian's names and layout (weights transposed to (out, in))."""

    def get(name: str) -> np.ndarray[Any, Any]:
        if name not in weights:
            raise MarianImportError(f"{file}: has no {name}")
        return weights[name]

    def linear_weight(name: str) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(get(name).T, dtype=np.float32))

    def vector(name: str) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(get(name), dtype=np.float32)).reshape(-1)

    out: dict[str, Tensor] = {}
    if "Wemb" in weights:  # one matrix for both sides (tied-embeddings-all)
        out["model.shared.weight"] = _with_pad_row(weights["Wemb"], config.src_vocab_size)
    else:
        out["model.encoder.embed_tokens.weight"] = _with_pad_row(get("encoder_Wemb"), config.src_vocab_size)
        out["model.decoder.embed_tokens.weight"] = _with_pad_row(get("decoder_Wemb"), config.tgt_vocab_size)
    if not config.tie_output:
        name = "decoder_ff_logit_out_W" if "decoder_ff_logit_out_W" in weights else "decoder_ff_logit_out_Wt"
        output = get(name).T if name.endswith("_W") else get(name)  # _W is (d_model, vocab)
        out["lm_head.weight"] = _with_pad_row(output, config.tgt_vocab_size)
    elif "decoder_ff_logit_out_Wt" in weights or "decoder_ff_logit_out_W" in weights:
        raise MarianImportError(f"{file}: has an output matrix but model.yml ties it to the embeddings")
    bias = weights.get("decoder_ff_logit_out_b")
    out[LOGITS_BIAS] = (
        _with_pad_row(bias.reshape(-1, 1), config.tgt_vocab_size).reshape(1, -1)
        if bias is not None
        else torch.zeros(1, config.tgt_vocab_size)
    )
    for stack, layers, table in (
        ("encoder", config.encoder_layers, ENCODER_LAYER),
        ("decoder", config.decoder_layers, DECODER_LAYER),
    ):
        for i in range(layers):
            scope = f"{stack}_l{i + 1}_"
            for names in table.values():
                prefix = f"model.{stack}.layers.{i}.{names.hf}"
                is_norm = names.role == "norm"
                weight_name = scope + names.marian_weight
                out[f"{prefix}.weight"] = vector(weight_name) if is_norm else linear_weight(weight_name)
                out[f"{prefix}.bias"] = vector(scope + names.marian_bias)
    used = {
        *(
            f"{stack}_l{i + 1}_{n}"
            for stack, layers, table in (
                ("encoder", config.encoder_layers, ENCODER_LAYER),
                ("decoder", config.decoder_layers, DECODER_LAYER),
            )
            for i in range(layers)
            for names in table.values()
            for n in (names.marian_weight, names.marian_bias)
        ),
        "Wemb",
        "encoder_Wemb",
        "decoder_Wemb",
        "decoder_ff_logit_out_b",
        "decoder_ff_logit_out_W",
        "decoder_ff_logit_out_Wt",
        MODEL_YML,
    }
    unknown = sorted(name for name in weights if name not in used)
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise MarianImportError(f"{file}: holds weights qkv would not use: {shown}")
    return out


def load_release(
    path: str | os.PathLike[str],
) -> tuple[Transformer, SentencePieceTokenizer, SentencePieceTokenizer]:
    """A Marian release directory as a qkv model (float32, CPU, eval mode) and its tokenizers; nothing
    is unpickled and nothing is written. Errors are :class:`MarianImportError`, naming the file."""
    directory = Path(path)
    npz, vocab_files = _release_files(directory)
    weights = _read_npz(npz)
    if MODEL_YML not in weights:
        raise MarianImportError(f"{npz}: has no {MODEL_YML!r} entry (the training options); is it Marian's?")
    options = _yaml(weights[MODEL_YML].tobytes().rstrip(b"\0").decode("utf-8"), f"{npz}:{MODEL_YML}")
    if not isinstance(options, dict):
        raise MarianImportError(f"{npz}:{MODEL_YML}: expected a mapping of options")
    src_vocab = _vocab(vocab_files[0])
    tgt_vocab = src_vocab if vocab_files[-1] == vocab_files[0] else _vocab(vocab_files[-1])
    for vocab in (src_vocab, tgt_vocab):  # Hugging Face's converter adds <pad> after the last id
        vocab.setdefault("<pad>", max(vocab.values()) + 1)
    if src_vocab["<pad>"] != tgt_vocab["<pad>"]:
        raise MarianImportError(
            f"{vocab_files[-1]}: <pad> would get id {tgt_vocab['<pad>']} on the target side and "
            f"{src_vocab['<pad>']} on the source side; qkv needs one pad id"
        )
    if "</s>" not in tgt_vocab:
        raise MarianImportError(f"{vocab_files[-1]}: has no </s>")
    sizes = (max(src_vocab.values()) + 1, max(tgt_vocab.values()) + 1)
    config = release_config(
        options, sizes, pad=src_vocab["<pad>"], eos=tgt_vocab["</s>"], source=f"{npz}:{MODEL_YML}"
    )
    tensors = hf_tensors(weights, config, npz)
    source_spm, target_spm = load_spm(directory / "source.spm"), load_spm(directory / "target.spm")
    shared = tgt_vocab is src_vocab
    src = SentencePieceTokenizer(source_spm, source_spm, src_vocab, source=str(vocab_files[0]))
    tgt = SentencePieceTokenizer(
        target_spm, source_spm if shared else target_spm, tgt_vocab, source=str(vocab_files[-1])
    )
    return checked_model(config, tensors, npz), src, tgt
