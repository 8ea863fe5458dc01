"""Export a qkv translation model as a CTranslate2 model directory (needs ``pip install ctranslate2``).

The model is described with CTranslate2's own specification API (``ctranslate2.specs.TransformerSpec``)
and written by its converter machinery, so every qkv model exports: post-LN or pre-LN, sinusoidal or
learned positions (the position table is stored explicitly, in qkv's interleaved layout), ReLU or GELU,
shared or separate vocabularies, tied or untied output projection, any LayerNorm epsilon.

Why not through the Marian export and ``ct2-transformers-converter``? That converter reads OPUS-MT
conventions into the model: its decoder starts from a zero embedding (Marian's <pad> start) where qkv
starts from <s>, so its translations would differ from qkv's.

The exported model appends </s> to every source itself (``add_source_eos``), as qkv's training did, and
starts decoding from <s>; pass it the source's token strings::

    translator = ctranslate2.Translator(out_dir)
    tokens = tokenizer.tokens("我爱你")                      # qkv.tokenize.Tokenizer, or tokenizer.json
    result = translator.translate_batch([tokens], beam_size=4, suppress_sequences=[["<pad>"], ["<s>"]])
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from qkv import storage
from qkv.models import saved
from qkv.models.seq2seq import Transformer
from qkv.nn.layers import DecoderLayer, EncoderLayer
from qkv.nn.positional import LearnedPositions, sinusoidal_table
from qkv.tokenize import UNK_ID, Tokenizer
from qkv.tokenize_spm import SentencePieceTokenizer


class ExportError(ValueError):
    """The model cannot be exported; the message says why and what to do."""


def _ctranslate2() -> Any:
    try:
        import ctranslate2
    except ImportError as error:
        raise ExportError(
            "the ctranslate2 package is not installed; pip install 'ctranslate2>=4.0' "
            "(or pip install -e '.[bench]')"
        ) from error
    return ctranslate2


def _array(t: Tensor) -> np.ndarray[Any, Any]:
    return t.detach().to("cpu", torch.float32).contiguous().numpy()


def _linear(spec: Any, *layers: nn.Linear) -> None:
    """Set a (possibly fused) linear spec: the layers' weights stacked along the output dimension."""
    spec.weight = _array(torch.cat([layer.weight for layer in layers], dim=0))
    biases = [layer.bias for layer in layers]
    if all(b is not None for b in biases):
        spec.bias = _array(torch.cat([b for b in biases if b is not None], dim=0))


def _norm(spec: Any, norm: nn.LayerNorm) -> None:
    spec.gamma = _array(norm.weight)
    spec.beta = _array(norm.bias)


def _positions(model: Transformer) -> np.ndarray[Any, Any]:
    """The position table the model adds, (max_positions, d_model), in qkv's own layout."""
    c = model.config
    if isinstance(model.positions, LearnedPositions):
        return _array(model.positions.weight)
    return _array(sinusoidal_table(c.max_positions, c.d_model, layout=c.sinusoid_layout))


def transformer_spec(
    model: Transformer, src_tokens: list[str], tgt_tokens: list[str], *, unk_id: int = UNK_ID
) -> Any:
    """The CTranslate2 ``TransformerSpec`` of ``model`` with its vocabularies (token strings by id)."""
    ct2 = _ctranslate2()
    specs = ct2.specs
    c = model.config
    if len(src_tokens) != c.src_vocab_size or len(tgt_tokens) != c.tgt_vocab_size:
        raise ExportError(
            f"vocabularies of {len(src_tokens)}/{len(tgt_tokens)} tokens for a model of "
            f"{c.src_vocab_size}/{c.tgt_vocab_size}; the tokenizer does not belong to this model"
        )
    for side, tokens in (("source", src_tokens), ("target", tgt_tokens)):
        if len(set(tokens)) != len(tokens):
            raise ExportError(
                f"the {side} vocabulary spells two ids the same; CTranslate2 maps tokens by text"
            )
    activation = {
        "relu": specs.Activation.RELU,
        "gelu": specs.Activation.GELU,
        "silu": specs.Activation.SWISH,
    }[c.activation]
    spec = specs.TransformerSpec.from_config(
        (c.encoder_layers, c.decoder_layers), c.heads, pre_norm=c.norm_first, activation=activation
    )
    scale = math.sqrt(c.d_model) if c.scale_embedding else 1.0  # section 3.4: embeddings times sqrt(d_model)
    positions = _positions(model)

    encoder = spec.encoder
    encoder.embeddings[0].weight = _array(model.src_embed.weight)
    encoder.scale_embeddings = scale
    encoder.position_encodings.encodings = positions
    for layer_spec, layer in zip(encoder.layer, cast(list[EncoderLayer], list(model.encoder)), strict=True):
        attn = layer.self_attn
        _linear(layer_spec.self_attention.linear[0], attn.q_proj, attn.k_proj, attn.v_proj)
        _linear(layer_spec.self_attention.linear[1], attn.out_proj)
        _norm(layer_spec.self_attention.layer_norm, layer.norm_self_attn)
        _linear(layer_spec.ffn.linear_0, layer.ffn.fc_in)
        _linear(layer_spec.ffn.linear_1, layer.ffn.fc_out)
        _norm(layer_spec.ffn.layer_norm, layer.norm_ffn)
    if model.encoder_norm is not None:
        _norm(encoder.layer_norm, model.encoder_norm)

    decoder = spec.decoder
    decoder.embeddings.weight = _array(model.tgt_embed.weight)
    decoder.scale_embeddings = scale
    decoder.position_encodings.encodings = positions
    for layer_spec, block in zip(decoder.layer, cast(list[DecoderLayer], list(model.decoder)), strict=True):
        attn = block.self_attn
        cross = block.cross_attn
        _linear(layer_spec.self_attention.linear[0], attn.q_proj, attn.k_proj, attn.v_proj)
        _linear(layer_spec.self_attention.linear[1], attn.out_proj)
        _norm(layer_spec.self_attention.layer_norm, block.norm_self_attn)
        _linear(layer_spec.attention.linear[0], cross.q_proj)
        _linear(layer_spec.attention.linear[1], cross.k_proj, cross.v_proj)
        _linear(layer_spec.attention.linear[2], cross.out_proj)
        _norm(layer_spec.attention.layer_norm, block.norm_cross_attn)
        _linear(layer_spec.ffn.linear_0, block.ffn.fc_in)
        _linear(layer_spec.ffn.linear_1, block.ffn.fc_out)
        _norm(layer_spec.ffn.layer_norm, block.norm_ffn)
    if model.decoder_norm is not None:
        _norm(decoder.layer_norm, model.decoder_norm)
    output = model.output_proj.weight if model.output_proj is not None else model.tgt_embed.weight
    decoder.projection.weight = _array(output)
    if model.output_bias is not None:  # Marian's final_logits_bias
        decoder.projection.bias = _array(model.output_bias)

    spec.register_source_vocabulary(list(src_tokens))
    spec.register_target_vocabulary(list(tgt_tokens))
    config = spec.config
    config.bos_token = tgt_tokens[c.bos_id]
    config.eos_token = tgt_tokens[c.eos_id]
    config.decoder_start_token = tgt_tokens[c.bos_id]
    config.unk_token = tgt_tokens[unk_id]
    config.add_source_eos = True  # qkv's training appends </s> to every source
    config.layer_norm_epsilon = c.layer_norm_eps
    return spec


def vocabulary(tokenizer: Tokenizer) -> list[str]:
    """The tokenizer's token strings, by id."""
    return [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]


# What export_ctranslate2 writes (CTranslate2's files, older and newer vocabulary layouts, and the qkv
# tokenizers): an existing --out holding only these is replaced without asking.
CTRANSLATE2_FILES = frozenset(
    {
        "model.bin",
        "config.json",
        "vmap.txt",
        *(
            f"{side}vocabulary.{ext}"
            for side in ("", "shared_", "source_", "target_")
            for ext in ("json", "txt")
        ),
        saved.JOINT_TOKENIZER,
        saved.SRC_TOKENIZER,
        saved.TGT_TOKENIZER,
        "source.spm",
        "target.spm",
    }
)


def save_spec(
    spec: Any,
    out_dir: str | os.PathLike[str],
    *,
    quantization: str | None = None,
    files: Mapping[str, str | bytes] | None = None,
    overwrite: bool = False,
    inputs: Sequence[str | os.PathLike[str]] = (),
) -> Path:
    """Validate ``spec`` and write it to ``out_dir`` through CTranslate2's converter, atomically, with the
    extra ``files`` (name -> text or bytes) beside CTranslate2's.

    ``quantization``: None keeps float32; or one of CTranslate2's types (int8, int8_float32, float16, ...).
    An existing ``out_dir`` is replaced only when it holds nothing but files this export writes, or with
    ``overwrite``; never when it is or holds one of ``inputs`` (:func:`qkv.storage.check_output_directory`).
    """
    ct2 = _ctranslate2()

    base: Any = ct2.converters.Converter

    class _SpecConverter(base):  # type: ignore[misc]
        def _load(self) -> Any:
            return spec

    def fill(temp: Path) -> None:
        _SpecConverter().convert(str(temp), quantization=quantization, force=True)  # recreates `temp`
        for name, content in (files or {}).items():
            (temp / name).write_bytes(content.encode("utf-8") if isinstance(content, str) else content)

    return storage.replace_directory(
        out_dir, fill, owned={*CTRANSLATE2_FILES, *(files or {})}, overwrite=overwrite, inputs=inputs
    )


def export_ctranslate2(
    model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    quantization: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the qkv model in ``model_dir`` (or a run directory's best model) as a CTranslate2 directory.

    Besides CTranslate2's files (model.bin, config.json, the vocabularies) ``out_dir`` gets the model's
    tokenizer.json (or src_tokenizer.json and tgt_tokenizer.json), to split text into the source tokens; a
    model with SentencePiece tokenizers (an imported Marian model) gets its source.spm and target.spm.
    The directory is written atomically. :class:`~qkv.storage.OutputExistsError` (before anything is read)
    refuses an ``out_dir`` that is or holds the model, or that holds files this export does not write,
    unless ``overwrite``.
    """
    inputs = [model_dir, saved.resolve(model_dir)]
    storage.check_output_directory(out_dir, owned=CTRANSLATE2_FILES, overwrite=overwrite, inputs=inputs)
    loaded = saved.load(model_dir)
    if not isinstance(loaded.model, Transformer):
        raise ExportError(f"{model_dir}: only autoregressive (encoder-decoder) models export to CTranslate2")
    unk_id = loaded.tgt_tokenizer.unk_id
    spec = transformer_spec(
        loaded.model,
        vocabulary(loaded.src_tokenizer),
        vocabulary(loaded.tgt_tokenizer),
        unk_id=UNK_ID if unk_id is None else unk_id,
    )
    # A Marian model's SentencePiece tokenizers have no tokenizer.json: its source.spm and target.spm split
    # the text into the pieces CTranslate2 looks up, as for CTranslate2's own Marian converter.
    src, tgt = loaded.src_tokenizer, loaded.tgt_tokenizer
    files: dict[str, str | bytes] = {}
    if isinstance(src, SentencePieceTokenizer) and isinstance(tgt, SentencePieceTokenizer):
        files["source.spm"] = src.encoder.serialized_model_proto()
        files["target.spm"] = tgt.encoder.serialized_model_proto()
    else:
        files.update(saved.tokenizer_files(src, tgt))
    return save_spec(
        spec, out_dir, quantization=quantization, files=files, overwrite=overwrite, inputs=inputs
    )
