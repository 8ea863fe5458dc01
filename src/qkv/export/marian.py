"""Export a qkv translation model as a Hugging Face ``MarianMTModel`` directory.

Marian and qkv compute the same function (post-LN layers, sinusoidal positions, embeddings scaled by
sqrt(d_model), biased projections, ReLU or GELU), with one difference in layout: Marian's sinusoidal table
puts every sine in the first half of the vector and every cosine in the second half, where qkv (like the
paper) interleaves them, sin in even and cos in odd dimensions. Hugging Face recomputes that table and
never loads it from a checkpoint, so the export cannot ship qkv's table. It permutes the model instead:

    marian_vector = qkv_vector[perm],   perm = [0, 2, 4, ..., 1, 3, 5, ...]

applied to every vector of the residual stream. Every layer commutes with that permutation: a matrix that
reads the stream (Q/K/V projections, the FFN's first matrix, the output projection) has its input columns
permuted, one that writes it (attention output, the FFN's second matrix) its output rows and bias, and
LayerNorm its gain and bias, while the attention heads and the FFN's hidden units keep their order. The
embeddings are permuted like the stream, so qkv's positions, permuted, are exactly Marian's table and the
exported model computes exactly qkv's function (up to float rounding).

A model whose config already has Marian's layout (``sinusoid_layout="halves"``, e.g. one imported by
:mod:`qkv.convert.marian`) is written as it is, without the permutation. An imported model (a Marian release
directory, or a fine-tuned OPUS-MT model) keeps its SentencePiece tokenization: the export writes
``MarianTokenizer``'s files (source.spm, target.spm, vocab.json, tokenizer_config.json) instead of a
tokenizer.json, so ``MarianTokenizer.from_pretrained`` reads the directory as it reads an OPUS-MT one.

Ids stay the model's: qkv's own models have <pad> 0, <s> 1, </s> 2, <unk> 3 and start decoding from <s>
(``decoder_start_token_id = bos_id``; OPUS-MT models start from <pad>, which their config says), and
generation never produces <pad> or the start token.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import safetensors.torch
import tokenizers
import torch
from tokenizers import processors
from torch import Tensor

from qkv import checkpoint, storage
from qkv.config import ModelConfig
from qkv.convert.marian import DECODER_LAYER, ENCODER_LAYER, MARIAN_LAYER_NORM_EPS, Role
from qkv.models import saved
from qkv.models.seq2seq import Transformer
from qkv.tokenize import Tokenizer
from qkv.tokenize_spm import SentencePieceTokenizer

# Hugging Face's default longest output; qkv's (qkv.decode.greedy.DEFAULT_MAX_LEN) plus the start token.
_DEFAULT_MAX_LENGTH = 257


class ExportError(ValueError):
    """The model cannot be written in the requested layout; the message says why and what to do."""


def residual_permutation(d_model: int) -> Tensor:
    """``perm`` with ``marian_vector = qkv_vector[perm]``: qkv's even dimensions (sines), then the odd ones.

    Shapes: -> (d_model,) long.
    """
    return torch.cat([torch.arange(0, d_model, 2), torch.arange(1, d_model, 2)])


def check_exportable(config: ModelConfig) -> None:
    """Raise :class:`ExportError` if Marian cannot express this model."""
    if config.norm_first:
        raise ExportError(
            "this model is pre-LN (norm_first=True) and Marian's layers are post-LN; "
            "export it with --format ctranslate2, which supports pre-LN"
        )
    if config.positions != "sinusoidal":
        raise ExportError(
            f"this model has {config.positions} positions and Marian only sinusoidal ones; "
            "export it with --format ctranslate2, which takes any position table"
        )
    if config.layer_norm_eps != MARIAN_LAYER_NORM_EPS:
        raise ExportError(
            f"layer_norm_eps={config.layer_norm_eps} but Hugging Face's Marian always uses "
            f"{MARIAN_LAYER_NORM_EPS}; export it with --format ctranslate2"
        )


def marian_config(config: ModelConfig) -> dict[str, Any]:
    """Hugging Face's ``config.json`` for the exported model."""
    c = config
    return {
        "architectures": ["MarianMTModel"],
        "model_type": "marian",
        "vocab_size": c.src_vocab_size,
        "decoder_vocab_size": c.tgt_vocab_size,
        "share_encoder_decoder_embeddings": c.share_embeddings,
        "tie_word_embeddings": c.tie_output,
        "d_model": c.d_model,
        "encoder_layers": c.encoder_layers,
        "decoder_layers": c.decoder_layers,
        "encoder_attention_heads": c.heads,
        "decoder_attention_heads": c.heads,
        "encoder_ffn_dim": c.d_ff,
        "decoder_ffn_dim": c.d_ff,
        "activation_function": c.activation,
        "dropout": c.dropout,
        "attention_dropout": c.attention_dropout,
        "activation_dropout": c.dropout,  # qkv drops out after the FFN's activation too
        "max_position_embeddings": c.max_positions,
        "scale_embedding": c.scale_embedding,
        "pad_token_id": c.pad_id,
        "bos_token_id": c.bos_id,
        "eos_token_id": c.eos_id,
        "decoder_start_token_id": c.bos_id,
        "forced_eos_token_id": c.eos_id,
        "is_encoder_decoder": True,
        "use_cache": True,
        "dtype": "float32",
    }


def generation_config(config: ModelConfig) -> dict[str, Any]:
    """``generation_config.json``: qkv's decoding rules (start from <s>, never <pad> or <s>)."""
    return {
        "decoder_start_token_id": config.bos_id,
        "bos_token_id": config.bos_id,
        "eos_token_id": config.eos_id,
        "pad_token_id": config.pad_id,
        "forced_eos_token_id": config.eos_id,
        "suppress_tokens": sorted({config.pad_id, config.bos_id}),
        "max_length": min(_DEFAULT_MAX_LENGTH, config.max_positions),
    }


def _permuted(tensor: Tensor, role: Role, perm: Tensor, *, is_bias: bool) -> Tensor:
    if role == "reads":  # weight (out, d_model): permute the input columns; the bias is per output
        return tensor if is_bias else tensor[:, perm]
    if role == "writes":  # weight (d_model, in) and bias (d_model,): permute the outputs
        return tensor[perm] if is_bias else tensor[perm, :]
    return tensor[perm]  # LayerNorm gain and bias, (d_model,)


def marian_state_dict(model: Transformer) -> dict[str, Tensor]:
    """The model's weights in Hugging Face Marian's names and layout (see the module docstring).

    Tied matrices are stored once, under the name Hugging Face's ``save_pretrained`` uses.
    """
    c = model.config
    check_exportable(c)
    perm = residual_permutation(c.d_model) if c.sinusoid_layout == "interleaved" else torch.arange(c.d_model)
    ours = {name: t.detach().to("cpu", torch.float32) for name, t in model.state_dict().items()}
    out: dict[str, Tensor] = {}
    if c.share_embeddings:
        out["model.shared.weight"] = ours["src_embed.weight"][:, perm]
    else:
        out["model.encoder.embed_tokens.weight"] = ours["src_embed.weight"][:, perm]
        out["model.decoder.embed_tokens.weight"] = ours["tgt_embed.weight"][:, perm]
    if not c.tie_output:
        out["lm_head.weight"] = ours["output_proj.weight"][:, perm]
    out["final_logits_bias"] = (
        ours["output_bias"].reshape(1, -1) if c.logits_bias else torch.zeros(1, c.tgt_vocab_size)
    )
    for stack, layers, table in (
        ("encoder", c.encoder_layers, ENCODER_LAYER),
        ("decoder", c.decoder_layers, DECODER_LAYER),
    ):
        for i in range(layers):
            for qkv_name, (hf_name, role, _, _) in table.items():
                for kind in ("weight", "bias"):
                    tensor = ours[f"{stack}.{i}.{qkv_name}.{kind}"]
                    out[f"model.{stack}.layers.{i}.{hf_name}.{kind}"] = _permuted(
                        tensor, role, perm, is_bias=kind == "bias"
                    ).contiguous()
    return {name: t.contiguous() for name, t in out.items()}


def hf_tokenizer_files(tokenizer: Tokenizer, config: ModelConfig, *, name: str) -> dict[str, str]:
    """``tokenizer.json`` that appends </s> to a source, as qkv's training does, and its config.

    ``AutoTokenizer.from_pretrained`` loads the pair as a ``PreTrainedTokenizerFast``.
    """
    inner = tokenizers.Tokenizer.from_str(tokenizer.to_json())
    eos = tokenizer.id_to_token(config.eos_id)
    inner.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A $B {eos}", special_tokens=[(eos, config.eos_id)]
    )
    settings = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "pad_token": tokenizer.id_to_token(config.pad_id),
        "bos_token": tokenizer.id_to_token(config.bos_id),
        "eos_token": eos,
        "unk_token": tokenizer.id_to_token(tokenizer.unk_id if tokenizer.unk_id is not None else 3),
        "model_max_length": config.max_positions,
        "clean_up_tokenization_spaces": False,
    }
    return {name: inner.to_str(), f"{Path(name).stem}_config.json": json.dumps(settings, indent=2) + "\n"}


def marian_tokenizer_files(
    src: SentencePieceTokenizer, tgt: SentencePieceTokenizer, config: ModelConfig
) -> dict[str, bytes]:
    """``MarianTokenizer``'s files for a model with SentencePiece tokenizers: both SentencePiece models, the
    vocabulary (the target's too when the two sides differ) and tokenizer_config.json."""
    source, target = json.loads(src.to_json()), json.loads(tgt.to_json())
    separate = source["vocab"] != target["vocab"]
    # MarianTokenizer detokenizes with the source model when the vocabulary is shared, else the target's.
    detokenizer = target["detokenizer"] or target["encoder"]
    if detokenizer != (target["encoder"] if separate else source["encoder"]):
        raise ExportError(
            "the target tokenizer detokenizes with a SentencePiece model MarianTokenizer would not use "
            "(the source model with a shared vocabulary, the target model with separate ones)"
        )
    settings = {
        "tokenizer_class": "MarianTokenizer",
        "separate_vocabs": separate,
        "unk_token": source["unk_token"],
        "eos_token": source["eos_token"],
        "pad_token": source["pad_token"],
        "additional_special_tokens": source["specials"],
        "clean_up_tokenization_spaces": source["clean_up_spaces"],
        "model_max_length": config.max_positions,
    }

    def json_bytes(value: Any) -> bytes:
        return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8")

    files = {
        "source.spm": base64.b64decode(source["encoder"]),
        "target.spm": base64.b64decode(target["encoder"]),
        "vocab.json": json_bytes(source["vocab"]),
        "tokenizer_config.json": json_bytes(settings),
    }
    if separate:
        files["target_vocab.json"] = json_bytes(target["vocab"])
    return files


# What export_marian writes: an existing --out holding only these is replaced without asking.
MARIAN_FILES = frozenset(
    {
        checkpoint.CONFIG_FILE,
        "generation_config.json",
        checkpoint.MODEL_FILE,
        "tokenizer.json",
        "tokenizer_config.json",
        "target_tokenizer.json",
        "target_tokenizer_config.json",
        "source.spm",
        "target.spm",
        "vocab.json",
        "target_vocab.json",
    }
)


def export_marian(
    model_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write the qkv model in ``model_dir`` (or a run directory's best model) as a Marian directory.

    ``out_dir`` gets config.json, generation_config.json, model.safetensors, tokenizer.json and
    tokenizer_config.json (with separate vocabularies, the target side's as target_tokenizer.json), written
    atomically; a model with SentencePiece tokenizers (an imported Marian model) gets
    :func:`marian_tokenizer_files` in place of the tokenizer.json files. Raises :class:`ExportError` for a model Marian cannot express, and
    :class:`~qkv.storage.OutputExistsError` (before anything is read) for an ``out_dir`` that is or holds
    the model, or that holds files this export does not write, unless ``overwrite``.
    """
    inputs = [model_dir, saved.resolve(model_dir)]
    checkpoint.check_output(out_dir, overwrite=overwrite, owned=MARIAN_FILES, inputs=inputs)
    loaded = saved.load(model_dir)
    if not isinstance(loaded.model, Transformer):
        raise ExportError(f"{model_dir}: only autoregressive (encoder-decoder) models have a Marian layout")
    config = loaded.model.config
    tensors = marian_state_dict(loaded.model)
    src, tgt = loaded.src_tokenizer, loaded.tgt_tokenizer
    if isinstance(src, SentencePieceTokenizer) and isinstance(tgt, SentencePieceTokenizer):
        files = marian_tokenizer_files(src, tgt, config)
        files[checkpoint.MODEL_FILE] = safetensors.torch.save(tensors, metadata={"format": "pt"})
        for name, value in (
            (checkpoint.CONFIG_FILE, marian_config(config)),
            ("generation_config.json", generation_config(config)),
        ):
            files[name] = (json.dumps(value, indent=2) + "\n").encode("utf-8")
        return storage.write_directory(out_dir, files, owned=MARIAN_FILES, overwrite=overwrite, inputs=inputs)
    text = hf_tokenizer_files(loaded.src_tokenizer, config, name="tokenizer.json")
    if loaded.tgt_tokenizer is not loaded.src_tokenizer:
        text.update(hf_tokenizer_files(loaded.tgt_tokenizer, config, name="target_tokenizer.json"))
    return checkpoint.save_directory(
        out_dir,
        tensors={checkpoint.MODEL_FILE: tensors},
        json={
            checkpoint.CONFIG_FILE: marian_config(config),
            "generation_config.json": generation_config(config),
        },
        text=text,
        metadata={"format": "pt"},
        overwrite=overwrite,
        owned=MARIAN_FILES,
        inputs=inputs,
    )
