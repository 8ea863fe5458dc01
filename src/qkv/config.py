"""Model configurations as frozen dataclasses, and the named presets.

A config is validated when it is built, before any tensor is allocated, so a bad value fails with a
message naming the field rather than deep inside a matmul. Validation uses ``raise``, never ``assert``,
so it also holds under ``python -O``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

Activation = Literal["relu", "gelu"]
PositionKind = Literal["sinusoidal", "learned"]


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


def _positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name}={value!r} must be a positive integer")


def _probability(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{name}={value!r} must be in [0, 1)")


@dataclass(frozen=True)
class ModelConfig:
    """The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al., 2017).

    Defaults are the paper's base model (Table 3): d_model 512, 8 heads, d_ff 2048, 6+6 layers,
    dropout 0.1, post-LN, sinusoidal positions, shared source/target/output embeddings.
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
    share_embeddings: bool = True  # one table for source and target (needs a joint vocabulary)
    tie_output: bool = True  # output projection = target embedding matrix (paper section 3.4)
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self) -> None:
        for name in ("src_vocab_size", "tgt_vocab_size", "d_model", "heads", "d_ff", "max_positions"):
            _positive(name, getattr(self, name))
        for name in ("encoder_layers", "decoder_layers"):
            _positive(name, getattr(self, name))
        if self.d_model % self.heads:
            raise ConfigError(
                f"d_model={self.d_model} must be divisible by heads={self.heads} "
                f"(each head gets d_model/heads dimensions)"
            )
        _probability("dropout", self.dropout)
        _probability("attention_dropout", self.attention_dropout)
        if self.activation not in ("relu", "gelu"):
            raise ConfigError(f"activation={self.activation!r} must be 'relu' or 'gelu'")
        if self.positions not in ("sinusoidal", "learned"):
            raise ConfigError(f"positions={self.positions!r} must be 'sinusoidal' or 'learned'")
        if not self.layer_norm_eps > 0:
            raise ConfigError(f"layer_norm_eps={self.layer_norm_eps!r} must be > 0")
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ConfigError(
                f"share_embeddings=True needs one joint vocabulary, but src_vocab_size="
                f"{self.src_vocab_size} != tgt_vocab_size={self.tgt_vocab_size}; "
                f"set share_embeddings=False for separate vocabularies"
            )
        for name in ("pad_id", "bos_id", "eos_id"):
            value = getattr(self, name)
            if not 0 <= value < min(self.src_vocab_size, self.tgt_vocab_size):
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
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a config.json dict; unknown keys are an error naming them."""
        data = {k: v for k, v in data.items() if k != "model_type"}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)


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
