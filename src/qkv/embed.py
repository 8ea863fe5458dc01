"""Sentence embeddings: a BERT encoder's token vectors pooled into one vector per sentence.

A sentence-transformers folder declares its pipeline in ``modules.json``: the Transformer (our
:class:`~qkv.models.bert.BertModel`), then Pooling (``1_Pooling/config.json``: mean, [CLS], max or
mean/sqrt(length) over the real tokens, concatenated when several are on), then optionally Normalize
(L2 normalisation). :class:`SentenceEmbedder` runs exactly that pipeline; for all-MiniLM-L6-v2 it is mean
pooling and normalisation. A plain Hugging Face BERT directory (no ``modules.json``) gets mean pooling, as
sentence-transformers gives it. Modules we do not implement (Dense, ...) are refused rather than skipped.

    embedder = SentenceEmbedder.from_pretrained(path)
    vectors = embedder.embed(["A man is eating.", "Someone eats."])   # (2, d)
    cosine_similarity(vectors)                                        # (2, 2)

A pair of texts is one input, as BERT reads a question and its passage or two sentences to compare:
``[CLS] A [SEP] B [SEP]``, with token type 0 (segment A) up to the first [SEP] and 1 (segment B) after it
(:func:`bert_input`; ``embedder.embed_pairs([("A", "B")])``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from qkv.config import ConfigError
from qkv.models.bert import BertModel
from qkv.models.bert_files import read_json_file, read_modules
from qkv.models.bert_hf import CheckpointError, from_pretrained, transformer_dir
from qkv.tokenize import Tokenizer

__all__ = [
    "BertInput",
    "Pooling",
    "PoolingMode",
    "SentenceEmbedder",
    "bert_input",
    "cosine_similarity",
    "pool",
]

PoolingMode = Literal["cls", "max", "mean", "mean_sqrt_len"]

# sentence-transformers' 1_Pooling/config.json keys, in the order it concatenates the pooled vectors.
_POOLING_KEYS: tuple[tuple[str, PoolingMode], ...] = (
    ("pooling_mode_cls_token", "cls"),
    ("pooling_mode_max_tokens", "max"),
    ("pooling_mode_mean_tokens", "mean"),
    ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len"),
)
_UNSUPPORTED_POOLING = ("pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")
_KNOWN_MODULES = ("models.Transformer", "models.Pooling", "models.Normalize")


# ---- pooling --------------------------------------------------------------------------------------------


def pool(hidden: Tensor, is_real_token: Tensor, mode: PoolingMode) -> Tensor:
    """One vector per sentence from its tokens' vectors; padding never counts.

    Shapes: hidden (batch, length, d), is_real_token (batch, length) bool -> (batch, d).
    ``cls``: the first position ([CLS]); ``max``: the elementwise maximum over real tokens; ``mean``: their
    average; ``mean_sqrt_len``: their sum divided by sqrt(number of real tokens).
    """
    if mode == "cls":
        return hidden[:, 0]
    real = is_real_token[:, :, None]  # (batch, length, 1)
    if mode == "max":
        return hidden.masked_fill(~real, float("-inf")).amax(dim=1)
    total = (hidden * real).sum(dim=1)  # (batch, d)
    count = real.sum(dim=1).clamp(min=1).to(hidden.dtype)  # (batch, 1); an empty row stays 0
    if mode == "mean":
        return total / count
    if mode == "mean_sqrt_len":
        return total / count.sqrt()
    raise ValueError(f"pooling mode {mode!r} must be 'cls', 'max', 'mean' or 'mean_sqrt_len'")


def cosine_similarity(a: Tensor, b: Tensor | None = None) -> Tensor:
    """The cosine of every pair of rows: a_i . b_j / (|a_i| |b_j|).

    Shapes: a (n, d), b (m, d) (default: a) -> (n, m). A zero vector has cosine 0 with everything.
    """
    b = a if b is None else b
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


@dataclass(frozen=True)
class Pooling:
    """How token vectors become a sentence vector: pooling modes (concatenated in this order), then
    optional L2 normalisation."""

    modes: tuple[PoolingMode, ...] = ("mean",)
    normalize: bool = False

    def __post_init__(self) -> None:
        if not self.modes:
            raise ValueError("Pooling needs at least one mode ('cls', 'max', 'mean' or 'mean_sqrt_len')")

    @classmethod
    def from_folder(cls, path: str | os.PathLike[str]) -> Pooling:
        """The pooling a sentence-transformers folder declares (mean pooling for a plain BERT directory)."""
        root = Path(path)
        modules_file = root / "modules.json"
        if not modules_file.is_file():
            return cls()
        modules = read_modules(modules_file)
        unknown = [str(m["type"]) for m in modules if not str(m["type"]).endswith(_KNOWN_MODULES)]
        if unknown:
            raise CheckpointError(
                f"{modules_file}: module {unknown[0]!r} is not supported; qkv embeds with Transformer, "
                f"Pooling and Normalize modules only"
            )
        normalize = any(str(m["type"]).endswith("models.Normalize") for m in modules)
        pooling = [m for m in modules if str(m["type"]).endswith("models.Pooling")]
        if not pooling:
            return cls(normalize=normalize)
        config_file = root / str(pooling[0].get("path", "")) / "config.json"
        if not config_file.is_file():
            raise CheckpointError(f"{config_file}: not found, but {modules_file} lists a Pooling module")
        config: dict[str, Any] = read_json_file(config_file)
        on = [key for key in _UNSUPPORTED_POOLING if config.get(key)]
        if on:
            raise CheckpointError(f"{config_file}: {on[0]}=true is not supported; qkv pools cls/max/mean")
        modes = tuple(mode for key, mode in _POOLING_KEYS if config.get(key))
        if not modes:
            raise CheckpointError(f"{config_file}: no pooling mode is switched on")
        return cls(modes, normalize)

    def __call__(self, hidden: Tensor, is_real_token: Tensor) -> Tensor:
        """Shapes: hidden (batch, length, d), is_real_token (batch, length) -> (batch, d x len(modes))."""
        pooled = torch.cat([pool(hidden, is_real_token, mode) for mode in self.modes], dim=-1)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled


def _setting(settings: dict[str, Any], key: str, kind: type, default: Any, source: Path) -> Any:
    """``settings[key]`` (a JSON settings file's value), which must be of ``kind`` (or null/absent)."""
    value = settings.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(
            f"{source}: {key}={value!r} must be {'true or false' if kind is bool else 'an integer'}"
        )
    return value


# ---- tokenizer ----------------------------------------------------------------------------------------------


def load_bert_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """The WordPiece tokenizer of a BERT directory: ``tokenizer.json``, else ``vocab.txt``.

    Special tokens written in the text (``[MASK]``) are recognised, as Hugging Face's tokenizers do. The
    truncation and padding that a tokenizer.json may carry are switched off: :class:`SentenceEmbedder`
    truncates and pads itself. For ``vocab.txt``, ``do_lower_case`` comes from tokenizer_config.json
    (default true, as in Hugging Face).
    """
    root = Path(path)
    if (root / "tokenizer.json").is_file():
        tokenizer = Tokenizer.load(root / "tokenizer.json", specials_in_text=True)
    elif (root / "vocab.txt").is_file():
        settings_file = root / "tokenizer_config.json"
        settings: dict[str, Any] = read_json_file(settings_file) if settings_file.is_file() else {}
        tokenizer = Tokenizer.from_vocab_txt(
            root / "vocab.txt", lowercase=_setting(settings, "do_lower_case", bool, True, settings_file)
        )
    else:
        raise FileNotFoundError(f"{root}: no tokenizer.json or vocab.txt; a BERT directory needs one of them")
    tokenizer.inner.no_truncation()
    tokenizer.inner.no_padding()
    return tokenizer


# ---- one text or a pair, as BERT reads it ----------------------------------------------------------------

BertInput = tuple[list[int], list[int]]  # (ids with [CLS] .. [SEP], token type ids), of equal length


def _pair_lengths(first: int, second: int, room: int) -> tuple[int, int]:
    """How many tokens of each text a pair keeps in ``room`` tokens, as Hugging Face's tokenizers cut
    ("longest_first"): the shorter text stays whole if the longer one still gets at least as many tokens;
    otherwise each gets half the room, the longer one (the second on a tie) the odd token."""
    if first + second <= room:
        return first, second
    shorter = min(first, second)
    if 2 * shorter <= room:
        keep_shorter, keep_longer = shorter, room - shorter
    else:
        keep_shorter, keep_longer = room // 2, room // 2 + room % 2
    return (keep_longer, keep_shorter) if first > second else (keep_shorter, keep_longer)


def bert_input(
    cls_id: int, sep_id: int, first: list[int], second: list[int] | None, max_length: int
) -> BertInput:
    """The ids and token types of one text, ``[CLS] first [SEP]``, or of a pair, ``[CLS] first [SEP]
    second [SEP]``: token type 0 for [CLS], the first text and its [SEP], 1 for the second text and its [SEP]
    (BERT's segments A and B). Cut to ``max_length`` tokens: a single text loses its end, a pair as
    Hugging Face's tokenizers cut it (:func:`_pair_lengths`).
    """
    if second is None:
        ids = [cls_id, *first[: max(max_length - 2, 0)], sep_id]
        return ids, [0] * len(ids)
    keep_first, keep_second = _pair_lengths(len(first), len(second), max(max_length - 3, 0))
    a, b = first[:keep_first], second[:keep_second]
    return [cls_id, *a, sep_id, *b, sep_id], [0] * (len(a) + 2) + [1] * (len(b) + 1)


# ---- the embedder -----------------------------------------------------------------------------------------


class SentenceEmbedder:
    """Texts -> one vector each: WordPiece, [CLS] ... [SEP], the BERT encoder, then the pooling.

    Sentences longer than ``max_length`` tokens (special tokens included) are truncated, as
    sentence-transformers does. Batches are formed from sentences of similar length, padded, and the
    results are returned in the input order.
    """

    def __init__(
        self,
        model: BertModel,
        tokenizer: Tokenizer,
        pooling: Pooling,
        *,
        max_length: int | None = None,
        lowercase: bool = False,
    ) -> None:
        cls_id, sep_id = tokenizer.cls_id, tokenizer.sep_id
        if cls_id is None or sep_id is None:
            raise ValueError("the tokenizer has no [CLS] or [SEP] token; a BERT vocabulary has both")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.cls_id, self.sep_id = cls_id, sep_id
        limit = model.config.max_positions
        self.max_length = limit if max_length is None else min(max_length, limit)
        if self.max_length < 2:
            raise ValueError(f"max_length={self.max_length} leaves no room for [CLS] and [SEP]")
        self.lowercase = lowercase  # sentence-transformers' do_lower_case: lowercases before tokenizing

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str]) -> SentenceEmbedder:
        """Load a sentence-transformers folder (or a plain Hugging Face BERT directory)."""
        root = Path(path)
        model_dir = transformer_dir(root)
        model = from_pretrained(model_dir)
        if not isinstance(model, BertModel):  # for mypy: no head was asked for
            raise TypeError(f"expected a BertModel, got {type(model).__name__}")
        settings_file = model_dir / "sentence_bert_config.json"
        settings: dict[str, Any] = read_json_file(settings_file) if settings_file.is_file() else {}
        max_length = _setting(settings, "max_seq_length", int, None, settings_file)
        if max_length is not None and max_length < 2:
            raise ConfigError(
                f"{settings_file}: max_seq_length={max_length} leaves no room for [CLS] and [SEP]"
            )
        return cls(
            model,
            load_bert_tokenizer(model_dir),
            Pooling.from_folder(root),
            max_length=max_length,
            lowercase=_setting(settings, "do_lower_case", bool, False, settings_file),
        )

    @property
    def dim(self) -> int:
        """Length of each embedding."""
        return self.model.config.d_model * len(self.pooling.modes)

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text: [CLS] WordPiece ids [SEP], truncated to ``max_length``."""
        return [ids for ids, _ in self.inputs(texts)]

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tokenizer.encode_batch([t.lower() for t in texts] if self.lowercase else list(texts))

    def inputs(self, texts: Sequence[str]) -> list[BertInput]:
        """(ids, token types) of each text: [CLS] text [SEP], all of segment A."""
        return [
            bert_input(self.cls_id, self.sep_id, ids, None, self.max_length) for ids in self._encode(texts)
        ]

    def pair_inputs(self, pairs: Sequence[tuple[str, str]]) -> list[BertInput]:
        """(ids, token types) of each pair: [CLS] A [SEP] B [SEP], types 0 then 1 (:func:`bert_input`)."""
        firsts = self._encode([a for a, _ in pairs])
        seconds = self._encode([b for _, b in pairs])
        return [
            bert_input(self.cls_id, self.sep_id, a, b, self.max_length)
            for a, b in zip(firsts, seconds, strict=True)
        ]

    def batch(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Padded ids and attention mask (1 = real token). Shapes: -> (n, longest), (n, longest)."""
        ids, attention_mask, _ = self.pad(self.inputs(texts))
        return ids, attention_mask

    def pad(self, rows: Sequence[BertInput]) -> tuple[Tensor, Tensor, Tensor]:
        """Padded ids, attention mask (1 = real token) and token type ids (0 on padding).
        Shapes: n rows -> (n, longest) each."""
        longest = max((len(ids) for ids, _ in rows), default=0)
        pad_id = self.model.config.pad_id
        ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
        token_types = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, (row, types) in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, : len(row)] = 1
            token_types[i, : len(types)] = torch.tensor(types, dtype=torch.long)
        return ids, attention_mask, token_types

    def embed(self, texts: Sequence[str], *, batch_size: int = 32) -> Tensor:
        """One embedding per text, in order. Shapes: n texts -> (n, dim); no texts -> (0, dim)."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts; wrap a single text in a list")
        return self._embed(self.inputs(texts), batch_size)

    def embed_pairs(self, pairs: Sequence[tuple[str, str]], *, batch_size: int = 32) -> Tensor:
        """One embedding per pair of texts, read together as [CLS] A [SEP] B [SEP] (the pooling runs over
        both texts). Shapes: n pairs -> (n, dim)."""
        if any(isinstance(p, str) or len(p) != 2 for p in pairs):
            raise TypeError("embed_pairs() takes a sequence of (text, text_pair) tuples")
        return self._embed(self.pair_inputs(pairs), batch_size)

    def _embed(self, rows: list[BertInput], batch_size: int) -> Tensor:
        if batch_size <= 0:
            raise ValueError(f"batch_size={batch_size} must be positive")
        param = next(self.model.parameters())
        out = torch.empty(len(rows), self.dim, dtype=param.dtype)
        # Similar lengths together waste less compute on padding; the order is restored on the way out.
        order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]), reverse=True)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chosen = order[start : start + batch_size]
                ids, attention_mask, token_types = (
                    t.to(param.device) for t in self.pad([rows[i] for i in chosen])
                )
                hidden = self.model(ids, attention_mask, token_types).hidden  # (batch, length, d_model)
                out[chosen] = self.pooling(hidden, attention_mask.bool()).to("cpu", out.dtype)
        return out
