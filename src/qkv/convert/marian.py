"""Hugging Face ``MarianMTModel`` directories (OPUS-MT) as qkv models, without unpickling anything.

A directory as the Hugging Face hub serves it::

    config.json             MarianConfig: shape, activation, special ids, scale_embedding
    generation_config.json  decoder_start_token_id (the pad id), bad_words_ids, ...
    model.safetensors       the weights (a pytorch_model.bin pickle is refused, never read)
    source.spm, target.spm  SentencePiece models of each side
    vocab.json              piece -> id (target_vocab.json too when the two sides have separate ones)
    tokenizer_config.json   separate_vocabs, the special tokens

Marian computes qkv's post-LN Transformer; what differs is named in :class:`~qkv.config.ModelConfig` and
read from config.json: sines and cosines in two halves (``sinusoid_layout="halves"``), a bias on the
logits (``logits_bias``), decoding that starts from the pad id (``bos_id = decoder_start_token_id``),
``scale_embedding``, SiLU (Marian's ``swish``). Weights keep their layout; only names change, by the one
table below (:mod:`qkv.export.marian` uses it the other way). A config field that would change the
numbers and that qkv cannot honour is a :class:`MarianImportError` naming it.

Dropout: Marian has a separate ``activation_dropout``; qkv drops out after the activation with
``dropout``. That matters only when fine-tuning.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from qkv import checkpoint
from qkv.config import Activation, ConfigError, ModelConfig
from qkv.models.seq2seq import Transformer
from qkv.nn.positional import sinusoidal_table
from qkv.storage import PICKLE_SUFFIXES, CheckpointError, convert_hint, read_json_object
from qkv.tokenize_spm import SentencePieceTokenizer, load_spm

__all__ = [
    "DECODER_LAYER",
    "ENCODER_LAYER",
    "MARIAN_LAYER_NORM_EPS",
    "MarianImportError",
    "Names",
    "checked_model",
    "Role",
    "is_marian_directory",
    "load_marian",
    "marian_model_config",
    "qkv_state_dict",
]

# Hugging Face's MarianMTModel builds nn.LayerNorm with torch's default epsilon and no way to change it.
MARIAN_LAYER_NORM_EPS = 1e-5

# How a parameter meets the residual stream (export permutes the stream of interleaved-layout models).
Role = Literal["reads", "writes", "norm"]


class Names(NamedTuple):
    """One submodule of a layer in the other toolkits' names: Hugging Face's submodule, how it meets the
    residual stream, and Marian's (C++, .npz) names of its weight and bias inside the layer's scope
    (``encoder_l1_`` ...; Marian stores a linear map's weight transposed, (in, out), and a LayerNorm's
    gain and bias as ``*_ln_scale`` and ``*_ln_bias``)."""

    hf: str
    role: Role
    marian_weight: str
    marian_bias: str


# qkv submodule -> its names, inside one layer. The only place with Marian's and Hugging Face's names.
ENCODER_LAYER: dict[str, Names] = {
    "self_attn.q_proj": Names("self_attn.q_proj", "reads", "self_Wq", "self_bq"),
    "self_attn.k_proj": Names("self_attn.k_proj", "reads", "self_Wk", "self_bk"),
    "self_attn.v_proj": Names("self_attn.v_proj", "reads", "self_Wv", "self_bv"),
    "self_attn.out_proj": Names("self_attn.out_proj", "writes", "self_Wo", "self_bo"),
    "norm_self_attn": Names("self_attn_layer_norm", "norm", "self_Wo_ln_scale", "self_Wo_ln_bias"),
    "ffn.fc_in": Names("fc1", "reads", "ffn_W1", "ffn_b1"),
    "ffn.fc_out": Names("fc2", "writes", "ffn_W2", "ffn_b2"),
    "norm_ffn": Names("final_layer_norm", "norm", "ffn_ffn_ln_scale", "ffn_ffn_ln_bias"),
}
DECODER_LAYER: dict[str, Names] = {
    **ENCODER_LAYER,
    "cross_attn.q_proj": Names("encoder_attn.q_proj", "reads", "context_Wq", "context_bq"),
    # Keys and values read the encoder's stream.
    "cross_attn.k_proj": Names("encoder_attn.k_proj", "reads", "context_Wk", "context_bk"),
    "cross_attn.v_proj": Names("encoder_attn.v_proj", "reads", "context_Wv", "context_bv"),
    "cross_attn.out_proj": Names("encoder_attn.out_proj", "writes", "context_Wo", "context_bo"),
    "norm_cross_attn": Names("encoder_attn_layer_norm", "norm", "context_Wo_ln_scale", "context_Wo_ln_bias"),
}
# The whole-model tensors, qkv name -> Hugging Face names that may hold it (tied ones are saved once).
SHARED_EMBEDDING = (
    "model.shared.weight",
    "model.encoder.embed_tokens.weight",
    "model.decoder.embed_tokens.weight",
)
SOURCE_EMBEDDING = ("model.encoder.embed_tokens.weight", "model.shared.weight")
TARGET_EMBEDDING = ("model.decoder.embed_tokens.weight",)
OUTPUT_PROJECTION = "lm_head.weight"
LOGITS_BIAS = "final_logits_bias"
POSITION_TABLES = ("model.encoder.embed_positions.weight", "model.decoder.embed_positions.weight")

HF_ACTIVATIONS: dict[str, Activation] = {"relu": "relu", "gelu": "gelu", "swish": "silu", "silu": "silu"}
# Fields of Marian-like configs (BART's family) that change the function; qkv computes Marian's values only.
_FIXED_FIELDS: dict[str, Any] = {
    "normalize_before": False,
    "normalize_embedding": False,
    "add_final_layer_norm": False,
    "add_bias_logits": False,
    "static_position_embeddings": True,
    "layer_norm_eps": MARIAN_LAYER_NORM_EPS,
}
_MARIAN_DEFAULT_PAD = 58100  # MarianConfig's defaults, for a config.json that leaves them out
_MODEL_FILE = "model.safetensors"


class MarianImportError(CheckpointError):
    """A Marian directory qkv cannot read or cannot compute exactly; the message names the file and field."""


def is_marian_directory(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a Hugging Face Marian directory (its config.json says ``model_type`` marian)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        data = read_json_object(config)
    except CheckpointError:
        return False
    return data.get("model_type") == "marian"


def _field(hf: dict[str, Any], name: str, default: Any, kind: type, source: str) -> Any:
    value = hf.get(name, default)
    if value is None:
        value = default
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise MarianImportError(f"{source}: {name}={value!r} must be an integer")
    if kind is bool and not isinstance(value, bool):
        raise MarianImportError(f"{source}: {name}={value!r} must be true or false")
    if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise MarianImportError(f"{source}: {name}={value!r} must be a number")
    return value


def marian_model_config(
    hf: dict[str, Any], generation: dict[str, Any] | None = None, *, source: str = "config.json"
) -> ModelConfig:
    """The qkv config of a ``MarianConfig`` dict (and its generation config, which may move the start id).

    Every field that changes the numbers is read; one qkv cannot honour is a :class:`MarianImportError`.
    """
    if hf.get("model_type") != "marian":
        raise MarianImportError(f"{source}: model_type={hf.get('model_type')!r}, expected 'marian'")
    for name, wanted in _FIXED_FIELDS.items():
        if name in hf and hf[name] != wanted:
            raise MarianImportError(
                f"{source}: {name}={hf[name]!r} is not supported: qkv computes Marian's {name}={wanted!r}"
            )
    for a, b in (
        ("encoder_attention_heads", "decoder_attention_heads"),
        ("encoder_ffn_dim", "decoder_ffn_dim"),
    ):
        if hf.get(a, 16 if "heads" in a else 4096) != hf.get(b, 16 if "heads" in b else 4096):
            raise MarianImportError(
                f"{source}: {a}={hf.get(a)!r} != {b}={hf.get(b)!r}; qkv's encoder and decoder share one shape"
            )
    activation = hf.get("activation_function", "gelu")
    if activation not in HF_ACTIVATIONS:
        raise MarianImportError(
            f"{source}: activation_function={activation!r} is not supported; qkv has {sorted(HF_ACTIVATIONS)}"
        )
    vocab = _field(hf, "vocab_size", 58101, int, source)
    share = _field(hf, "share_encoder_decoder_embeddings", True, bool, source)
    pad = _field(hf, "pad_token_id", _MARIAN_DEFAULT_PAD, int, source)
    start = _field(hf, "decoder_start_token_id", pad, int, source)
    eos = _field(hf, "eos_token_id", 0, int, source)
    if generation:
        start = _field(generation, "decoder_start_token_id", start, int, "generation_config.json")
        eos_value = generation.get("eos_token_id", eos)
        eos = eos_value[0] if isinstance(eos_value, list) and len(eos_value) == 1 else eos_value
        if not isinstance(eos, int) or isinstance(eos, bool):
            raise MarianImportError(
                f"generation_config.json: eos_token_id={eos_value!r}; qkv needs one end id"
            )
    try:
        return ModelConfig(
            src_vocab_size=vocab,
            tgt_vocab_size=vocab if share else _field(hf, "decoder_vocab_size", vocab, int, source),
            d_model=_field(hf, "d_model", 1024, int, source),
            heads=_field(hf, "encoder_attention_heads", 16, int, source),
            d_ff=_field(hf, "encoder_ffn_dim", 4096, int, source),
            encoder_layers=_field(hf, "encoder_layers", 12, int, source),
            decoder_layers=_field(hf, "decoder_layers", 12, int, source),
            dropout=_field(hf, "dropout", 0.1, float, source),
            attention_dropout=_field(hf, "attention_dropout", 0.0, float, source),
            activation=HF_ACTIVATIONS[activation],
            norm_first=False,
            layer_norm_eps=MARIAN_LAYER_NORM_EPS,
            max_positions=_field(hf, "max_position_embeddings", 1024, int, source),
            positions="sinusoidal",
            sinusoid_layout="halves",
            scale_embedding=_field(hf, "scale_embedding", False, bool, source),
            logits_bias=True,
            share_embeddings=share,
            tie_output=_field(hf, "tie_word_embeddings", True, bool, source),
            pad_id=pad,
            bos_id=start,
            eos_id=eos,
        )
    except ConfigError as error:
        raise MarianImportError(f"{source}: {error}") from None


def _first(tensors: dict[str, Tensor], names: tuple[str, ...], file: Path, what: str) -> Tensor:
    for name in names:
        if name in tensors:
            return tensors[name]
    raise MarianImportError(f"{file}: has no {what} (looked for {', '.join(names)})")


def qkv_state_dict(config: ModelConfig, tensors: dict[str, Tensor], file: Path) -> dict[str, Tensor]:
    """Hugging Face Marian's tensors in qkv's names, float32 (see the module docstring).

    Tensors qkv would not use are an error naming them, except the sinusoidal position tables, which are
    checked against qkv's table instead (a model with other positions is refused).
    """
    hf = {name: t.to(torch.float32) for name, t in tensors.items()}
    used: set[str] = set()

    def take(names: tuple[str, ...], what: str) -> Tensor:
        tensor = _first(hf, names, file, what)
        used.update(n for n in names if n in hf)
        return tensor

    out: dict[str, Tensor] = {}
    if config.share_embeddings:
        out["src_embed.weight"] = out["tgt_embed.weight"] = take(SHARED_EMBEDDING, "embedding matrix")
    else:
        out["src_embed.weight"] = take(SOURCE_EMBEDDING, "source embedding matrix")
        out["tgt_embed.weight"] = take(TARGET_EMBEDDING, "target embedding matrix")
    if config.tie_output:
        used.add(OUTPUT_PROJECTION)  # the same matrix as the target embedding when saved twice
    else:
        out["output_proj.weight"] = take((OUTPUT_PROJECTION,), "output projection (lm_head)")
    if LOGITS_BIAS in hf:
        out["output_bias"] = hf[LOGITS_BIAS].reshape(-1)
        used.add(LOGITS_BIAS)
    else:  # MarianMTModel starts it at zero
        out["output_bias"] = torch.zeros(config.tgt_vocab_size)
    for stack, layers, table in (
        ("encoder", config.encoder_layers, ENCODER_LAYER),
        ("decoder", config.decoder_layers, DECODER_LAYER),
    ):
        for i in range(layers):
            for qkv_name, names in table.items():
                for kind in ("weight", "bias"):
                    name = f"model.{stack}.layers.{i}.{names.hf}.{kind}"
                    out[f"{stack}.{i}.{qkv_name}.{kind}"] = take((name,), f"tensor {name}")
    expected = sinusoidal_table(config.max_positions, config.d_model, layout="halves")
    for name in POSITION_TABLES:
        if name in hf:
            used.add(name)
            stored = hf[name]
            rows = min(stored.shape[0], expected.shape[0])
            if stored.shape[1:] != expected.shape[1:] or not torch.allclose(
                stored[:rows], expected[:rows], atol=1e-4, rtol=0
            ):
                raise MarianImportError(
                    f"{file}: {name} is not Marian's sinusoidal table; qkv cannot load other positions"
                )
    unused = sorted(set(hf) - used)
    if unused:
        shown = ", ".join(unused[:5]) + (f" and {len(unused) - 5} more" if len(unused) > 5 else "")
        raise MarianImportError(f"{file}: holds tensors a Marian model does not have: {shown}")
    return out


def _refuse_pickles(directory: Path) -> None:
    pickles = sorted(e.name for e in directory.iterdir() if e.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise MarianImportError(
            f"{directory}: has {', '.join(pickles)} but no {_MODEL_FILE}. qkv never unpickles a checkpoint: "
            "loading a pickle runs whatever code it holds. Safe alternatives: download the model's "
            f"{_MODEL_FILE} (most Helsinki-NLP model pages carry one, e.g. huggingface-cli download "
            f"Helsinki-NLP/opus-mt-zh-en {_MODEL_FILE}), or the Marian release files (.npz) that OPUS-MT "
            f"publishes. {convert_hint(directory / pickles[0], directory / _MODEL_FILE)}"
        )
    raise MarianImportError(f"{directory}: has no {_MODEL_FILE}")


def _token(settings: dict[str, Any], name: str, default: str) -> str:
    """A special token of tokenizer_config.json: a string or an AddedToken's {"content": ...}."""
    value = settings.get(name, default)
    if isinstance(value, dict):
        value = value.get("content", default)
    return value if isinstance(value, str) else default


def marian_tokenizers(directory: Path) -> tuple[SentencePieceTokenizer, SentencePieceTokenizer]:
    """The source and target tokenizers of a Marian directory, as ``MarianTokenizer`` builds them."""
    config_file = directory / "tokenizer_config.json"
    settings = read_json_object(config_file) if config_file.is_file() else {}
    separate = settings.get("separate_vocabs", False) is True
    vocabs = [directory / "vocab.json", directory / ("target_vocab.json" if separate else "vocab.json")]
    loaded = []
    for file in vocabs:
        if not file.is_file():
            raise MarianImportError(f"{file}: missing; a Marian directory needs its vocabulary")
        vocab = read_json_object(file)
        bad = [k for k, v in vocab.items() if isinstance(v, bool) or not isinstance(v, int) or v < 0]
        if bad:
            raise MarianImportError(f"{file}: entry {bad[0]!r} is not a token id (a non-negative integer)")
        loaded.append(vocab)
    source_spm, target_spm = load_spm(directory / "source.spm"), load_spm(directory / "target.spm")
    extra = settings.get("additional_special_tokens") or []
    specials = [t for t in (_token({"t": e}, "t", "") for e in extra) if t] if isinstance(extra, list) else []
    tokens = {
        "unk_token": _token(settings, "unk_token", "<unk>"),
        "eos_token": _token(settings, "eos_token", "</s>"),
        "pad_token": _token(settings, "pad_token", "<pad>"),
    }
    # MarianTokenizer decodes with the source model when the vocabulary is shared, else the target's.
    detokenizer = target_spm if separate else source_spm
    clean_up = settings.get("clean_up_tokenization_spaces", False) is True
    src = SentencePieceTokenizer(
        source_spm,
        source_spm,
        loaded[0],
        specials=specials,
        clean_up_spaces=clean_up,
        source=str(vocabs[0]),
        **tokens,
    )
    tgt = SentencePieceTokenizer(
        target_spm,
        detokenizer,
        loaded[1],
        specials=specials,
        clean_up_spaces=clean_up,
        source=str(vocabs[1]),
        **tokens,
    )
    return src, tgt


def load_marian(
    path: str | os.PathLike[str],
) -> tuple[Transformer, SentencePieceTokenizer, SentencePieceTokenizer]:
    """A Hugging Face Marian directory as a qkv model (float32, on CPU, eval mode) and its tokenizers.

    Raises :class:`MarianImportError` (a :class:`~qkv.storage.CheckpointError`) naming the file and field
    for anything it cannot read or compute exactly; a directory with only ``pytorch_model.bin`` is refused
    before anything is read, and nothing is ever written.
    """
    directory = Path(path)
    if not (directory / _MODEL_FILE).is_file():
        _refuse_pickles(directory)
    config_file = directory / "config.json"
    generation_file = directory / "generation_config.json"
    generation = read_json_object(generation_file) if generation_file.is_file() else None
    config = marian_model_config(read_json_object(config_file), generation, source=str(config_file))
    model_file = directory / _MODEL_FILE
    model = checked_model(config, checkpoint.load_tensors(model_file), model_file)
    src, tgt = marian_tokenizers(directory)
    for name, tok, size in (("source", src, config.src_vocab_size), ("target", tgt, config.tgt_vocab_size)):
        if tok.vocab_size != size:
            raise MarianImportError(
                f"{tok.source}: the {name} vocabulary has {tok.vocab_size} ids but config.json says {size}"
            )
    return model, src, tgt


def checked_model(config: ModelConfig, hf_tensors: dict[str, Tensor], file: Path) -> Transformer:
    """The model of ``config`` with Hugging Face Marian's tensors (float32, CPU, eval mode); their names and
    shapes are checked against the model's on the meta device before anything is allocated."""
    state = qkv_state_dict(config, hf_tensors, file)
    with torch.device("meta"):
        skeleton = Transformer(config)
    checkpoint.check_state_dict(skeleton.state_dict(), state, file)
    model = Transformer(config)
    model.load_state_dict(state)
    return model.eval()
