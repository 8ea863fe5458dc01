"""Model configurations as frozen dataclasses, and the named presets.

A config is validated when it is built, before any tensor is allocated, so a bad value fails with a
message naming the field rather than deep inside a matmul. Validation uses ``raise``, never ``assert``,
so it also holds under ``python -O``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Activation = Literal["relu", "gelu", "silu"]
PositionKind = Literal["sinusoidal", "learned"]
# Where a sinusoidal table puts its sines: "interleaved" in the even dimensions and cosines in the odd ones
# (the paper, qkv's default); "halves": every sine in the first half, every cosine in the second (Marian,
# fairseq, Hugging Face Marian).
SinusoidLayout = Literal["interleaved", "halves"]
_C = TypeVar("_C", bound="DataclassInstance")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


def _positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name}={value!r} must be a positive integer")


def _probability(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{name}={value!r} must be in [0, 1)")


# The Literal aliases above, by the name a field's annotation gives them (annotations are strings here).
_CHOICES: dict[str, tuple[str, ...]] = {
    "Activation": ("relu", "gelu", "silu"),
    "PositionKind": ("sinusoidal", "learned"),
    "SinusoidLayout": ("interleaved", "halves"),
}


def _check_types(config: Any) -> None:
    """Each field of a config dataclass holds its annotated type (a JSON file can hold anything), checked
    before any other rule compares or divides it."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        kind = str(f.type)
        if kind == "int":
            ok, wanted = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif kind == "float":
            ok, wanted = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        elif kind == "bool":
            ok, wanted = isinstance(value, bool), "true or false"
        elif kind in _CHOICES:
            ok = isinstance(value, str) and value in _CHOICES[kind]
            wanted = " or ".join(repr(choice) for choice in _CHOICES[kind])
        else:
            continue
        if not ok:
            raise ConfigError(f"{f.name}={_short(value)} must be {wanted}")


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _config_from_dict(cls: type[_C], data: Any, source: str | None, *, ignore: Sequence[str] = ()) -> _C:
    """``cls(**data)`` for a dict read from a file: not an object, unknown keys, missing fields and bad
    values are all a :class:`ConfigError` naming ``source`` (the file) and the field."""
    where = f"{source}: " if source else ""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}expected a JSON object of config fields, got {type(data).__name__}")
    data = {k: v for k, v in data.items() if k not in ignore}
    fields = dataclasses.fields(cls)
    known = {f.name for f in fields}
    unknown = sorted(str(k) for k in set(data) - known)
    if unknown:
        raise ConfigError(f"{where}unknown config keys {unknown}; known keys are {sorted(known)}")
    required = [
        f.name
        for f in fields
        if f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and f.name not in data
    ]
    if required:
        raise ConfigError(f"{where}missing config field {required[0]!r} (required: {', '.join(required)})")
    try:
        return cls(**data)
    except ConfigError as error:
        raise ConfigError(f"{where}{error}") from None


def _check_layer_shape(
    d_model: int, heads: int, dropout: float, attention_dropout: float, activation: str
) -> None:
    """The checks every Transformer layer config shares."""
    if d_model % heads:
        raise ConfigError(
            f"d_model={d_model} must be divisible by heads={heads} (each head gets d_model/heads dimensions)"
        )
    _probability("dropout", dropout)
    _probability("attention_dropout", attention_dropout)
    if activation not in ("relu", "gelu", "silu"):
        raise ConfigError(f"activation={activation!r} must be 'relu', 'gelu' or 'silu'")


@dataclass(frozen=True)
class ModelConfig:
    """The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al., 2017).

    Defaults are the paper's base model (Table 3): d_model 512, 8 heads, d_ff 2048, 6+6 layers,
    dropout 0.1, post-LN, sinusoidal positions, shared source/target/output embeddings.

    ``bos_id`` is the decoder's first input (the start token): <s> in qkv's models, the pad id in Marian's
    (Hugging Face's ``decoder_start_token_id``); a start token equal to ``pad_id`` is never masked as padding.
    ``logits_bias`` adds a vector to the logits (Marian's ``final_logits_bias``), ``scale_embedding``
    multiplies embeddings by sqrt(d_model) (section 3.4) or not, ``sinusoid_layout`` places the sines.
    """

    src_vocab_size: int
    tgt_vocab_size: int
    d_model: int = 512
    heads: int = 8
    d_ff: int = 2048
    encoder_layers: int = 6
    decoder_layers: int = 6
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation: Activation = "relu"
    norm_first: bool = False  # False: post-LN as in the paper; True: pre-LN (more stable when deep)
    layer_norm_eps: float = 1e-5
    max_positions: int = 1024
    positions: PositionKind = "sinusoidal"
    sinusoid_layout: SinusoidLayout = "interleaved"
    scale_embedding: bool = True  # embeddings times sqrt(d_model) (section 3.4)
    logits_bias: bool = False  # a bias added to the logits (Marian's final_logits_bias)
    share_embeddings: bool = True  # one table for source and target (needs a joint vocabulary)
    tie_output: bool = True  # output projection = target embedding matrix (paper section 3.4)
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self) -> None:
        _check_types(self)
        for name in ("src_vocab_size", "tgt_vocab_size", "d_model", "heads", "d_ff", "max_positions"):
            _positive(name, getattr(self, name))
        for name in ("encoder_layers", "decoder_layers"):
            _positive(name, getattr(self, name))
        _check_layer_shape(self.d_model, self.heads, self.dropout, self.attention_dropout, self.activation)
        if not self.layer_norm_eps > 0:
            raise ConfigError(f"layer_norm_eps={self.layer_norm_eps!r} must be > 0")
        if self.positions not in ("sinusoidal", "learned"):
            raise ConfigError(f"positions={self.positions!r} must be 'sinusoidal' or 'learned'")
        if self.sinusoid_layout not in ("interleaved", "halves"):
            raise ConfigError(f"sinusoid_layout={self.sinusoid_layout!r} must be 'interleaved' or 'halves'")
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ConfigError(
                f"share_embeddings=True needs one joint vocabulary, but src_vocab_size="
                f"{self.src_vocab_size} != tgt_vocab_size={self.tgt_vocab_size}; "
                f"set share_embeddings=False for separate vocabularies"
            )
        for name in ("pad_id", "bos_id", "eos_id"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not 0 <= value < min(self.src_vocab_size, self.tgt_vocab_size)
            ):
                raise ConfigError(
                    f"{name}={value} must be a valid token id (vocabulary sizes "
                    f"{self.src_vocab_size}/{self.tgt_vocab_size})"
                )

    @property
    def d_head(self) -> int:
        return self.d_model // self.heads

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": "qkv-seq2seq", **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: Any, *, source: str | None = None) -> Self:
        """Build from a config.json dict; unknown keys, missing fields and wrong types are a
        :class:`ConfigError` naming the field (and ``source``, the file, when given)."""
        return _config_from_dict(cls, data, source, ignore=("model_type",))


# How a NAT chooses its output length (NATConfig.length_method).
LENGTH_METHODS = ("classifier", "cut")


@dataclass(frozen=True)
class NATConfig(ModelConfig):
    """The non-autoregressive Transformer (:mod:`qkv.models.nat`): the encoder-decoder's shape, plus a
    [MASK] token and a way to choose the output length (``length_method``):

    * ``"classifier"``: a length predictor classifies the offset ``target length - source length`` into
      ``2 * max_length_offset + 1`` classes (longer offsets are clipped), Gu et al. (2018);
    * ``"cut"``: no predictor; the decoder is given ``source length + max_length_offset`` positions (an
      upper bound) and learns to fill those after the sentence with </s>; the output is cut at its
      first </s>.

    The decoder needs no <s> (nothing is shifted right), so by default its [MASK] input is the <s>
    embedding (``mask_id = bos_id = 1``): no vocabulary slot is added and the tokenizers stay those of
    the autoregressive model.
    """

    max_length_offset: int = 32
    mask_id: int = 1
    length_method: str = "classifier"

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("max_length_offset", self.max_length_offset)
        if self.length_method not in LENGTH_METHODS:
            raise ConfigError(
                f"length_method={self.length_method!r} must be one of {', '.join(LENGTH_METHODS)}"
            )
        if (
            isinstance(self.mask_id, bool)
            or not isinstance(self.mask_id, int)
            or not 0 <= self.mask_id < self.tgt_vocab_size
            or self.mask_id in (self.pad_id, self.eos_id)
        ):
            raise ConfigError(
                f"mask_id={self.mask_id} must be a target token id other than pad_id={self.pad_id} and "
                f"eos_id={self.eos_id} (the default, bos_id, is unused by the NAT decoder)"
            )

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "model_type": "qkv-nat"}


MODEL_TYPES: dict[str, type[ModelConfig]] = {"qkv-seq2seq": ModelConfig, "qkv-nat": NATConfig}


def model_config_from_dict(data: Any, *, source: str | None = None) -> ModelConfig:
    """The config of a saved translation model, of the class its ``model_type`` names.

    A config.json without ``model_type`` (written before there were kinds) is the seq2seq model. Every
    problem is a :class:`ConfigError` naming the field, and ``source`` (the file) when given.
    """
    where = f"{source}: " if source else ""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}expected a JSON object of config fields, got {type(data).__name__}")
    kind = data.get("model_type", "qkv-seq2seq")
    if not isinstance(kind, str) or kind not in MODEL_TYPES:
        raise ConfigError(
            f"{where}model_type={_short(kind)} is not a qkv translation model; known: {sorted(MODEL_TYPES)}"
        )
    return MODEL_TYPES[kind].from_dict(data, source=source)


# The presets fix the shape; vocabulary sizes come from the tokenizer, so presets are built with a
# placeholder and `preset(name, vocab)` replaces it.
_PLACEHOLDER_VOCAB = 32

PRESETS: dict[str, ModelConfig] = {
    # For tests: runs in milliseconds.
    "tiny": ModelConfig(
        _PLACEHOLDER_VOCAB,
        _PLACEHOLDER_VOCAB,
        d_model=32,
        heads=4,
        d_ff=64,
        encoder_layers=2,
        decoder_layers=2,
        max_positions=256,
    ),
    # For a 2-core CPU: the size of the peer MarianMT small model.
    "small": ModelConfig(
        _PLACEHOLDER_VOCAB,
        _PLACEHOLDER_VOCAB,
        d_model=256,
        heads=4,
        d_ff=1024,
        encoder_layers=3,
        decoder_layers=3,
        max_positions=512,
    ),
    # The paper's base and big models (Table 3).
    "base": ModelConfig(_PLACEHOLDER_VOCAB, _PLACEHOLDER_VOCAB),
    "big": ModelConfig(
        _PLACEHOLDER_VOCAB, _PLACEHOLDER_VOCAB, d_model=1024, heads=16, d_ff=4096, dropout=0.3
    ),
}


def preset(name: str, vocab_size: int, tgt_vocab_size: int | None = None, **overrides: Any) -> ModelConfig:
    """A named preset with real vocabulary sizes and explicit field overrides.

    >>> preset("base", 37000).d_model
    512
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    tgt = vocab_size if tgt_vocab_size is None else tgt_vocab_size
    if tgt != vocab_size and "share_embeddings" not in overrides:
        overrides["share_embeddings"] = False
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown config fields {unknown}; known fields are {sorted(known)}")
    return dataclasses.replace(PRESETS[name], src_vocab_size=vocab_size, tgt_vocab_size=tgt, **overrides)


@dataclass(frozen=True)
class BertConfig:
    """BERT, the encoder-only Transformer (Devlin et al., 2019); defaults are BERT-base (uncased).

    Vocabulary 30,522 WordPiece ids, 512 learned positions, 2 token types (segments A and B), hidden size
    768, 12 post-LN layers of 12 heads, FFN 3,072 with GELU, LayerNorm eps 1e-12, dropout 0.1 on hidden
    states and on attention weights. ``add_pooler`` adds the dense + tanh layer on the [CLS] position.
    Field names are qkv's; :mod:`qkv.models.bert_files` maps them to and from Hugging Face's config.json.
    """

    vocab_size: int = 30522
    d_model: int = 768  # hidden_size
    heads: int = 12
    d_ff: int = 3072  # intermediate_size
    layers: int = 12
    max_positions: int = 512
    type_vocab_size: int = 2
    activation: Activation = "gelu"
    dropout: float = 0.1  # hidden_dropout_prob: embeddings, after each sublayer
    attention_dropout: float = 0.1  # attention_probs_dropout_prob: on the attention weights
    layer_norm_eps: float = 1e-12
    pad_id: int = 0
    add_pooler: bool = True
    init_std: float = 0.02  # initializer_range: std of the normal init of every matrix

    def __post_init__(self) -> None:
        _check_types(self)
        for name in ("vocab_size", "d_model", "heads", "d_ff", "layers", "max_positions", "type_vocab_size"):
            _positive(name, getattr(self, name))
        _check_layer_shape(self.d_model, self.heads, self.dropout, self.attention_dropout, self.activation)
        if not self.layer_norm_eps > 0:
            raise ConfigError(f"layer_norm_eps={self.layer_norm_eps!r} must be > 0")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ConfigError(f"pad_id={self.pad_id} must be a valid token id (vocab_size {self.vocab_size})")
        if not self.init_std > 0:
            raise ConfigError(f"init_std={self.init_std!r} must be > 0")

    @classmethod
    def from_dict(cls, data: Any, *, source: str | None = None) -> BertConfig:
        """Build from a dict of qkv field names (as ``dataclasses.asdict`` wrote it); unknown keys, missing
        fields and wrong types are a :class:`ConfigError` naming the field (and ``source``, the file)."""
        return _config_from_dict(cls, data, source)

    @property
    def d_head(self) -> int:
        return self.d_model // self.heads


BERT_PRESETS: dict[str, BertConfig] = {
    # BERT-base, uncased (Devlin et al., 2019, section 3): the seeds count its parameters by hand.
    "bert-base": BertConfig(),
    # MiniLM-L6-H384 (the encoder of sentence-transformers' all-MiniLM-L6-v2): 6 layers, 384 wide.
    "minilm": BertConfig(d_model=384, heads=12, d_ff=1536, layers=6),
}
