"""BERT: the Transformer encoder alone, pre-trained as a masked language model (Devlin et al., 2019).

    ids, token types -> word + position + token-type embeddings -> LayerNorm -> dropout
                     -> N post-LN encoder layers (self-attention, GELU FFN)          -> hidden states
    hidden[:, 0] (the [CLS] position) -> dense + tanh                                  -> pooled (optional)

Heads: sequence classification (N -> 1, on the pooled [CLS] vector), token tagging (N -> N), and the masked
LM (dense + GELU + LayerNorm, then the word embeddings transposed, tied, plus a bias).

Hugging Face BERT checkpoints (a directory with ``config.json`` and ``model.safetensors``, or a
sentence-transformers folder) load through :func:`from_pretrained`. Every tensor name is translated by the
one table :data:`HF_NAMES`; config keys by :data:`HF_CONFIG_KEYS`. Shapes are checked before anything is
loaded, a truncated file is detected from its header, and pickle files (``pytorch_model.bin``) are refused,
never opened. :func:`save_pretrained` writes the same layout back, so ``transformers`` opens a qkv BERT.

Masks are built here from ``attention_mask`` (1 = real token, Hugging Face's convention) or, when it is
absent, from the ids and the pad id: bool, True = may attend (:mod:`qkv.nn.masks`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from qkv.config import BERT_PRESETS, BertConfig, ConfigError
from qkv.nn import masks
from qkv.nn.dropout import Dropout
from qkv.nn.embedding import TokenEmbedding
from qkv.nn.frozen import FrozenLayer, empty_rows
from qkv.nn.layers import EncoderLayer
from qkv.nn.positional import LearnedPositions
from qkv.nn.snapshot import fast_inference_allowed, model_snapshot

__all__ = [
    "BERT_PRESETS",
    "HF_CONFIG_KEYS",
    "HF_NAMES",
    "BertConfig",
    "BertEmbeddings",
    "BertForMaskedLM",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertModel",
    "BertOutput",
    "CheckpointError",
    "Head",
    "LoadReport",
    "MaskedLMHead",
    "config_from_hf",
    "config_to_hf",
    "from_pretrained",
    "load_hf_state_dict",
    "load_pretrained",
    "save_pretrained",
    "transformer_dir",
]


# ---- the model ----------------------------------------------------------------------------------------------


@dataclass
class BertOutput:
    """What the encoder computes.

    hidden: the last layer's hidden states (batch, length, d_model) (Hugging Face's ``last_hidden_state``);
    pooled: tanh(dense(hidden[:, 0])) (batch, d_model), or None without a pooler;
    may_attend: (batch, 1, 1, length), True = real token;
    weights: when asked for, one (batch, heads, length, length) tensor per layer.
    """

    hidden: Tensor
    pooled: Tensor | None
    may_attend: Tensor
    weights: list[Tensor] | None = None


class BertEmbeddings(nn.Module):
    """Word + learned position + token-type (segment) embeddings, then LayerNorm and dropout.

    Unlike the paper's Transformer, BERT does not scale the word embeddings by sqrt(d_model).
    """

    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.word = TokenEmbedding(c.vocab_size, c.d_model, scale=False, init_std=c.init_std, pad_id=c.pad_id)
        self.positions = LearnedPositions(c.d_model, c.max_positions)
        self.token_types = nn.Embedding(c.type_vocab_size, c.d_model)
        self.norm = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)
        self.dropout = Dropout(c.dropout)

    def forward(self, ids: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        """Shapes: ids, token_type_ids (batch, length) -> (batch, length, d_model)."""
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(ids)  # every token in segment A
        x = self.word(ids) + self.token_types(token_type_ids) + self.positions(ids.shape[1])
        return self.dropout(self.norm(x))


class BertPooler(nn.Module):
    """The [CLS] position's hidden state through dense + tanh: a summary vector for N -> 1 tasks."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)

    def forward(self, hidden: Tensor) -> Tensor:
        """Shapes: (batch, length, d_model) -> (batch, d_model)."""
        return torch.tanh(self.dense(hidden[:, 0]))


class BertModel(nn.Module):
    """The BERT encoder: embeddings, ``config.layers`` post-LN encoder layers, and the optional pooler."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = c = config
        self.embeddings = BertEmbeddings(c)
        layers = [
            EncoderLayer(
                c.d_model,
                c.heads,
                c.d_ff,
                dropout=c.dropout,
                attention_dropout=c.attention_dropout,
                activation=c.activation,
                norm_first=False,
                layer_norm_eps=c.layer_norm_eps,
            )
            for _ in range(c.layers)
        ]
        for layer in layers:
            # BERT drops out after the FFN's second matrix only (the layer does that), not between the two.
            layer.ffn.dropout.p = 0.0
        self.encoder = nn.ModuleList(layers)
        self.pooler = BertPooler(c.d_model) if c.add_pooler else None
        init_bert_weights(self, c.init_std)

    def forward(
        self,
        ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        *,
        need_weights: bool = False,
        fused: bool = True,
        fast: bool = True,
    ) -> BertOutput:
        """Encode a batch.

        Shapes:
            ids, attention_mask, token_type_ids: (batch, length)
            -> BertOutput(hidden (batch, length, d_model), pooled (batch, d_model) or None, ...)

        ``attention_mask`` is 1 (or True) for real tokens and 0 for padding, as Hugging Face tokenizers
        return it; without it, every id equal to ``config.pad_id`` is padding. (Hugging Face's BertModel
        attends to everything when no mask is given.) ``need_weights`` returns every layer's attention
        weights, per head; it takes the explicit attention path.

        At inference on a CPU (float32, eval mode, no gradients, no weights asked for, ``fused``) the
        encoder layers run frozen (:class:`~qkv.nn.frozen.FrozenLayer`, products packed for oneDNN, built
        once per weights): the same function, ~1.2x faster on MiniLM; ``fast=False`` runs the modules.
        """
        if attention_mask is None:
            may_attend = masks.padding(ids, self.config.pad_id)  # (batch, 1, 1, length)
        else:
            may_attend = masks.padding(attention_mask, 0)  # attention_mask != 0
        x = self.embeddings(ids, token_type_ids)
        if fast and fused and not need_weights and fast_inference_allowed(self, x):
            mask = masks.none_if_all_allowed(may_attend)
            empty = empty_rows(mask)
            for frozen in model_snapshot(self, "bert-encoder", self._frozen_encoder):
                x = frozen(x, mask, empty)
            pooled = self.pooler(x) if self.pooler is not None else None
            return BertOutput(x, pooled, may_attend, None)
        weights: list[Tensor] | None = [] if need_weights else None
        for layer in self.encoder:
            x, w = layer(x, may_attend, need_weights=need_weights, fused=fused)
            if weights is not None and w is not None:
                weights.append(w)  # (batch, heads, length, length)
        pooled = self.pooler(x) if self.pooler is not None else None
        return BertOutput(x, pooled, may_attend, weights)

    def _frozen_encoder(self) -> list[FrozenLayer]:
        return [FrozenLayer(layer, many_rows=True) for layer in self.encoder]  # type: ignore[arg-type]


def init_bert_weights(module: nn.Module, std: float) -> None:
    """BERT's initialisation: every matrix and embedding ~ N(0, std^2), biases 0, LayerNorm gain 1.

    (The seq2seq model's Xavier initialisation is replaced; the pad id's embedding row stays 0.)
    """
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.normal_(sub.weight, std=std)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, (nn.Embedding, LearnedPositions)):
            nn.init.normal_(sub.weight, std=std)
        elif isinstance(sub, TokenEmbedding):
            nn.init.normal_(sub.weight, std=std)
            if isinstance(module, BertModel):
                with torch.no_grad():
                    sub.weight[module.config.pad_id].zero_()
        elif isinstance(sub, nn.LayerNorm):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)


# ---- task heads -------------------------------------------------------------------------------------------


class BertForSequenceClassification(nn.Module):
    """N -> 1: one label per sequence, from the pooled [CLS] vector (dropout, then a linear layer)."""

    def __init__(
        self, config: BertConfig, num_labels: int = 2, *, classifier_dropout: float | None = None
    ) -> None:
        super().__init__()
        if num_labels <= 0:
            raise ConfigError(f"num_labels={num_labels} must be a positive integer")
        self.config = config = dataclasses.replace(config, add_pooler=True)  # the head needs the pooler
        self.bert = BertModel(config)
        self.dropout = Dropout(config.dropout if classifier_dropout is None else classifier_dropout)
        self.classifier = nn.Linear(config.d_model, num_labels)
        init_bert_weights(self.classifier, config.init_std)

    def forward(
        self, ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None
    ) -> Tensor:
        """Shapes: ids (batch, length) -> logits (batch, num_labels)."""
        pooled = self.bert(ids, attention_mask, token_type_ids).pooled
        return self.classifier(self.dropout(pooled))


class BertForTokenClassification(nn.Module):
    """N -> N: one label per token (tagging), from each position's last hidden state."""

    def __init__(
        self, config: BertConfig, num_labels: int = 2, *, classifier_dropout: float | None = None
    ) -> None:
        super().__init__()
        if num_labels <= 0:
            raise ConfigError(f"num_labels={num_labels} must be a positive integer")
        self.config = config = dataclasses.replace(config, add_pooler=False)
        self.bert = BertModel(config)
        self.dropout = Dropout(config.dropout if classifier_dropout is None else classifier_dropout)
        self.classifier = nn.Linear(config.d_model, num_labels)
        init_bert_weights(self.classifier, config.init_std)

    def forward(
        self, ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None
    ) -> Tensor:
        """Shapes: ids (batch, length) -> logits (batch, length, num_labels)."""
        hidden = self.bert(ids, attention_mask, token_type_ids).hidden
        return self.classifier(self.dropout(hidden))


class MaskedLMHead(nn.Module):
    """The masked-LM head: dense + activation + LayerNorm, then the tied word embeddings E^T plus a bias."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.d_model, config.d_model)
        self.norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))  # the output-only bias of each token
        self.activation = config.activation

    def forward(self, hidden: Tensor, word: TokenEmbedding) -> Tensor:
        """Shapes: hidden (batch, length, d_model) -> logits (batch, length, vocab_size)."""
        h = self.dense(hidden)
        h = F.gelu(h) if self.activation == "gelu" else F.relu(h)
        return word.logits(self.norm(h)) + self.bias


class BertForMaskedLM(nn.Module):
    """The pre-training objective: predict the original id at every position (read the masked ones)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config = dataclasses.replace(config, add_pooler=False)
        self.bert = BertModel(config)
        self.mlm_head = MaskedLMHead(config)
        init_bert_weights(self.mlm_head, config.init_std)

    def forward(
        self, ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None
    ) -> Tensor:
        """Shapes: ids (batch, length) -> logits (batch, length, vocab_size)."""
        hidden = self.bert(ids, attention_mask, token_type_ids).hidden
        return self.mlm_head(hidden, self.bert.embeddings.word)


AnyBert = BertModel | BertForSequenceClassification | BertForTokenClassification | BertForMaskedLM
Head = Literal["sequence-classification", "token-classification", "masked-lm"]

# Hugging Face's class name for each of our model classes (config.json "architectures").
_ARCHITECTURES: dict[type[nn.Module], str] = {
    BertModel: "BertModel",
    BertForSequenceClassification: "BertForSequenceClassification",
    BertForTokenClassification: "BertForTokenClassification",
    BertForMaskedLM: "BertForMaskedLM",
}


# ---- Hugging Face names: the one mapping table ---------------------------------------------------------

# (part, Hugging Face name, qkv name). "{i}" is the layer index. "encoder" names sit under the "bert."
# prefix on both sides in the models with a head (HF BertFor*, our Bert*For*), and under no prefix in a bare
# BertModel; "head" names never have the prefix. Nothing else in qkv spells a Hugging Face tensor name.
HF_NAMES: tuple[tuple[Literal["encoder", "head"], str, str], ...] = (
    ("encoder", "embeddings.word_embeddings.weight", "embeddings.word.weight"),
    ("encoder", "embeddings.position_embeddings.weight", "embeddings.positions.weight"),
    ("encoder", "embeddings.token_type_embeddings.weight", "embeddings.token_types.weight"),
    ("encoder", "embeddings.LayerNorm.weight", "embeddings.norm.weight"),
    ("encoder", "embeddings.LayerNorm.bias", "embeddings.norm.bias"),
    ("encoder", "encoder.layer.{i}.attention.self.query.weight", "encoder.{i}.self_attn.q_proj.weight"),
    ("encoder", "encoder.layer.{i}.attention.self.query.bias", "encoder.{i}.self_attn.q_proj.bias"),
    ("encoder", "encoder.layer.{i}.attention.self.key.weight", "encoder.{i}.self_attn.k_proj.weight"),
    ("encoder", "encoder.layer.{i}.attention.self.key.bias", "encoder.{i}.self_attn.k_proj.bias"),
    ("encoder", "encoder.layer.{i}.attention.self.value.weight", "encoder.{i}.self_attn.v_proj.weight"),
    ("encoder", "encoder.layer.{i}.attention.self.value.bias", "encoder.{i}.self_attn.v_proj.bias"),
    ("encoder", "encoder.layer.{i}.attention.output.dense.weight", "encoder.{i}.self_attn.out_proj.weight"),
    ("encoder", "encoder.layer.{i}.attention.output.dense.bias", "encoder.{i}.self_attn.out_proj.bias"),
    ("encoder", "encoder.layer.{i}.attention.output.LayerNorm.weight", "encoder.{i}.norm_self_attn.weight"),
    ("encoder", "encoder.layer.{i}.attention.output.LayerNorm.bias", "encoder.{i}.norm_self_attn.bias"),
    ("encoder", "encoder.layer.{i}.intermediate.dense.weight", "encoder.{i}.ffn.fc_in.weight"),
    ("encoder", "encoder.layer.{i}.intermediate.dense.bias", "encoder.{i}.ffn.fc_in.bias"),
    ("encoder", "encoder.layer.{i}.output.dense.weight", "encoder.{i}.ffn.fc_out.weight"),
    ("encoder", "encoder.layer.{i}.output.dense.bias", "encoder.{i}.ffn.fc_out.bias"),
    ("encoder", "encoder.layer.{i}.output.LayerNorm.weight", "encoder.{i}.norm_ffn.weight"),
    ("encoder", "encoder.layer.{i}.output.LayerNorm.bias", "encoder.{i}.norm_ffn.bias"),
    ("encoder", "pooler.dense.weight", "pooler.dense.weight"),
    ("encoder", "pooler.dense.bias", "pooler.dense.bias"),
    ("head", "classifier.weight", "classifier.weight"),
    ("head", "classifier.bias", "classifier.bias"),
    ("head", "cls.predictions.transform.dense.weight", "mlm_head.dense.weight"),
    ("head", "cls.predictions.transform.dense.bias", "mlm_head.dense.bias"),
    ("head", "cls.predictions.transform.LayerNorm.weight", "mlm_head.norm.weight"),
    ("head", "cls.predictions.transform.LayerNorm.bias", "mlm_head.norm.bias"),
    ("head", "cls.predictions.bias", "mlm_head.bias"),
)
_PREFIX = "bert."
# Spellings that mean the same tensor as a table entry: TensorFlow-era LayerNorm names, and the MLM decoder's
# bias, which Hugging Face ties to cls.predictions.bias.
_ALIASES = (("LayerNorm.gamma", "LayerNorm.weight"), ("LayerNorm.beta", "LayerNorm.bias"))
_DECODER_BIAS = "cls.predictions.decoder.bias"
# In checkpoints, loaded by nothing: buffers (recomputed from the config) and the MLM decoder matrix, which
# is the word embedding matrix (tied) in BERT.
_IGNORED = ("embeddings.position_ids", "embeddings.token_type_ids", "cls.predictions.decoder.weight")

# Hugging Face config.json key -> BertConfig field.
HF_CONFIG_KEYS: tuple[tuple[str, str], ...] = (
    ("vocab_size", "vocab_size"),
    ("hidden_size", "d_model"),
    ("num_attention_heads", "heads"),
    ("intermediate_size", "d_ff"),
    ("num_hidden_layers", "layers"),
    ("max_position_embeddings", "max_positions"),
    ("type_vocab_size", "type_vocab_size"),
    ("hidden_act", "activation"),
    ("hidden_dropout_prob", "dropout"),
    ("attention_probs_dropout_prob", "attention_dropout"),
    ("layer_norm_eps", "layer_norm_eps"),
    ("pad_token_id", "pad_id"),
    ("initializer_range", "init_std"),
)


def _name_table(layers: int) -> dict[str, tuple[str, str]]:
    """Hugging Face name (without the prefix) -> (part, qkv name), with ``{i}`` expanded for every layer."""
    table: dict[str, tuple[str, str]] = {}
    for part, hf, ours in HF_NAMES:
        for i in range(layers) if "{i}" in hf else [0]:
            table[hf.format(i=i)] = (part, ours.format(i=i))
    return table


def _has_head(model: nn.Module) -> bool:
    return not isinstance(model, BertModel)


# ---- config.json ----------------------------------------------------------------------------------------


def config_from_hf(data: Mapping[str, Any], *, source: str = "config.json") -> BertConfig:
    """A :class:`BertConfig` from a Hugging Face BERT ``config.json`` dict.

    Missing keys take Hugging Face's defaults (which are BERT-base's, as are ours). Architectures that differ
    from BERT in computation (another model_type, relative positions, a decoder, an approximate GELU) are
    refused with a message naming the key, rather than loaded and silently computed differently.
    """
    model_type = data.get("model_type", "bert")
    if model_type != "bert":
        raise ConfigError(
            f"{source}: model_type={model_type!r}; qkv loads BERT-architecture checkpoints "
            f"(model_type 'bert', as BERT, MiniLM and many sentence-transformers models are)"
        )
    for key, allowed in (("position_embedding_type", "absolute"), ("is_decoder", False)):
        if key in data and data[key] != allowed:
            raise ConfigError(f"{source}: {key}={data[key]!r} is not supported; qkv's BERT needs {allowed!r}")
    if data.get("add_cross_attention"):
        raise ConfigError(f"{source}: add_cross_attention=true is not supported (BERT as a decoder)")
    values: dict[str, Any] = {}
    for hf_key, ours in HF_CONFIG_KEYS:
        if hf_key in data and data[hf_key] is not None:
            values[ours] = data[hf_key]
    if values.get("activation", "gelu") not in ("gelu", "relu"):
        raise ConfigError(
            f"{source}: hidden_act={values['activation']!r} is not supported; qkv's BERT has 'gelu' "
            f"(exact, erf-based, as Hugging Face's 'gelu') and 'relu'"
        )
    try:
        return BertConfig(**values)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from error


def config_to_hf(
    config: BertConfig, architecture: str = "BertModel", num_labels: int | None = None
) -> dict[str, Any]:
    """The Hugging Face ``config.json`` dict of ``config`` (with ``id2label`` when there are labels)."""
    data: dict[str, Any] = {"architectures": [architecture], "model_type": "bert"}
    for hf_key, ours in HF_CONFIG_KEYS:
        data[hf_key] = getattr(config, ours)
    data["position_embedding_type"] = "absolute"
    if num_labels is not None:
        data["id2label"] = {str(i): f"LABEL_{i}" for i in range(num_labels)}
        data["label2id"] = {f"LABEL_{i}": i for i in range(num_labels)}
    return data


# ---- finding and reading checkpoint files ---------------------------------------------------------------


class CheckpointError(ValueError):
    """A checkpoint cannot be loaded; the message names the file and the tensor."""


# Files that hold pickles (or formats we do not read): named in the refusal, never opened.
_REFUSED_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")
_REFUSED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"


def transformer_dir(path: str | os.PathLike[str]) -> Path:
    """The directory holding the BERT ``config.json`` and weights.

    That is ``path`` itself, except in an older sentence-transformers folder whose ``modules.json`` puts the
    Transformer module in a subdirectory (``0_Transformer/``).
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory; --model expects a Hugging Face BERT directory")
    modules_file = root / "modules.json"
    if modules_file.is_file():
        for module in _read_json(modules_file):
            if str(module.get("type", "")).endswith("models.Transformer"):
                return root / str(module.get("path", ""))
    return root


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: cannot read it as JSON ({error})") from error


@dataclass(frozen=True)
class _TensorInfo:
    file: Path
    shape: tuple[int, ...]
    dtype: str


def _read_safetensors_header(path: Path) -> dict[str, _TensorInfo]:
    """Names, shapes and dtypes from a safetensors header, after checking every tensor's bytes are there.

    A safetensors file is an 8-byte little-endian header length, a JSON header with each tensor's byte range
    in the data section, then the data. A copy cut short loses the last tensors' bytes: name them.
    """
    size = path.stat().st_size
    with path.open("rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path}: truncated ({size} bytes): too short for a safetensors header")
        header_len = int.from_bytes(prefix, "little")
        if header_len > size - 8:
            raise CheckpointError(
                f"{path}: truncated inside its header ({size} bytes, the header alone needs {header_len + 8}); "
                f"copy or download the file again"
            )
        try:
            header = json.loads(file.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointError(f"{path}: not a safetensors file (unreadable header: {error})") from error
    data_size = size - 8 - header_len
    header.pop("__metadata__", None)
    infos: dict[str, _TensorInfo] = {}
    cut: list[tuple[int, str, int]] = []
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        if end > data_size:
            cut.append((begin, name, end))
        infos[name] = _TensorInfo(path, tuple(entry["shape"]), entry["dtype"])
    if cut:
        begin, name, end = min(cut)
        more = f" (and {len(cut) - 1} more tensors after it)" if len(cut) > 1 else ""
        raise CheckpointError(
            f"{path}: truncated: tensor {name!r} needs bytes {begin}..{end} of the data section, but the file "
            f"holds only {data_size}{more}; copy or download the file again"
        )
    return infos


def _weight_files(model_dir: Path) -> dict[str, _TensorInfo]:
    """Every tensor in the directory's safetensors weights (one file or an index of shards).

    Refuses a directory that has only pickle weights: unpickling runs whatever code the file contains.
    """
    single = model_dir / WEIGHTS_FILE
    index = model_dir / WEIGHTS_INDEX_FILE
    if single.is_file():
        return _read_safetensors_header(single)
    if index.is_file():
        weight_map: dict[str, str] = _read_json(index).get("weight_map", {})
        infos: dict[str, _TensorInfo] = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = model_dir / shard
            if not shard_path.is_file():
                raise CheckpointError(f"{index}: lists shard {shard!r}, which is not in {model_dir}")
            infos.update(_read_safetensors_header(shard_path))
        absent = sorted(set(weight_map) - set(infos))
        if absent:
            raise CheckpointError(
                f"{index}: tensor {absent[0]!r} is not in its shard {weight_map[absent[0]]}"
            )
        return infos
    refused = sorted(
        p.name for p in model_dir.iterdir() if p.name in _REFUSED_FILES or p.suffix in _REFUSED_SUFFIXES
    )
    if refused:
        raise CheckpointError(
            f"{model_dir}: has no {WEIGHTS_FILE}, only {', '.join(refused)}. qkv loads safetensors only and "
            f"never unpickles a checkpoint (a pickle can run arbitrary code). Convert it once, where you "
            f"trust the file, e.g. with transformers: BertModel.from_pretrained(DIR).save_pretrained(DIR) "
            f"(writes {WEIGHTS_FILE})"
        )
    raise CheckpointError(
        f"{model_dir}: no {WEIGHTS_FILE}; expected a Hugging Face BERT directory (config.json + {WEIGHTS_FILE})"
    )


# ---- matching names, checking shapes, loading --------------------------------------------------------------


@dataclass
class LoadReport:
    """How a checkpoint's tensors met the model's.

    loaded: qkv names filled from the checkpoint;
    missing: encoder tensors the checkpoint lacks (an error unless ``strict=False``);
    initialised: pooler and head tensors the checkpoint lacks, left at their random initialisation
                 (a fine-tuning start: train them before use);
    unexpected: checkpoint names that nothing in this model takes (e.g. the pre-training heads);
    ignored: checkpoint names deliberately not loaded (buffers, the tied MLM decoder matrix).
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def _plan(model: AnyBert, names: list[str], source: str) -> tuple[dict[str, str], LoadReport, dict[str, str]]:
    """Match checkpoint names to the model's parameters.

    Returns plan (qkv name -> checkpoint name), the report, and each qkv name's Hugging Face name (for
    messages about tensors that are absent).
    """
    table = _name_table(model.config.layers)
    has_head = _has_head(model)
    ours = dict(model.state_dict())
    report = LoadReport()
    plan: dict[str, str] = {}
    uses_prefix = any(n.startswith(_PREFIX) for n in names)
    hf_name_of: dict[str, str] = {}
    for hf, (part, qkv) in table.items():
        target = _PREFIX + qkv if part == "encoder" and has_head else qkv
        hf_name_of[target] = _PREFIX + hf if part == "encoder" and uses_prefix else hf

    for name in names:
        bare = name.removeprefix(_PREFIX)
        for old, new in _ALIASES:
            if bare.endswith(old):
                bare = bare[: -len(old)] + new
        if bare in _IGNORED:
            report.ignored.append(name)
            continue
        if bare == _DECODER_BIAS:
            if any(n.removeprefix(_PREFIX) == "cls.predictions.bias" for n in names):
                report.ignored.append(name)  # the same tensor as cls.predictions.bias
                continue
            bare = "cls.predictions.bias"
        entry = table.get(bare)
        if entry is None:
            report.unexpected.append(name)
            continue
        part, qkv = entry
        target = _PREFIX + qkv if part == "encoder" and has_head else qkv
        if target not in ours:
            report.unexpected.append(name)
        elif target in plan:
            raise CheckpointError(f"{source}: tensors {plan[target]!r} and {name!r} both hold {target}")
        else:
            plan[target] = name
    for target in ours:
        in_head = has_head and not target.startswith(_PREFIX)
        in_pooler = (target.removeprefix(_PREFIX) if has_head else target).startswith("pooler.")
        if target in plan:
            report.loaded.append(target)
        elif in_head or in_pooler:
            report.initialised.append(target)  # a fine-tuning start, as in Hugging Face
        else:
            report.missing.append(target)
    return plan, report, hf_name_of


def _check(
    model: AnyBert,
    plan: dict[str, str],
    shapes: Mapping[str, tuple[int, ...]],
    report: LoadReport,
    hf_name_of: dict[str, str],
    *,
    source: str,
    strict: bool,
) -> None:
    """Every planned tensor must have the parameter's shape; with ``strict``, no encoder tensor may lack."""
    params = model.state_dict()
    for target, name in plan.items():
        expected = tuple(params[target].shape)
        if tuple(shapes[name]) != expected:
            raise CheckpointError(
                f"{source}: tensor {name!r} has shape {tuple(shapes[name])}, but the model built from "
                f"config.json needs {expected} for it (qkv {target}); the weights do not match config.json"
            )
    if strict and report.missing:
        first = report.missing[0]
        more = f" (and {len(report.missing) - 1} more)" if len(report.missing) > 1 else ""
        c = model.config
        raise CheckpointError(
            f"{source}: missing tensor {hf_name_of.get(first, first)!r} (qkv {first}){more}, needed by "
            f"config.json (num_hidden_layers={c.layers}, hidden_size={c.d_model}); the checkpoint is "
            f"incomplete or belongs to another config"
        )


def _copy(model: AnyBert, plan: dict[str, str], fetch: Callable[[str], Tensor]) -> None:
    params = model.state_dict()
    with torch.no_grad():
        for target, name in plan.items():
            params[target].copy_(fetch(name))  # casts to the parameter's dtype (e.g. a float16 checkpoint)


def load_hf_state_dict(
    model: AnyBert, tensors: Mapping[str, Tensor], *, strict: bool = True, source: str = "state dict"
) -> LoadReport:
    """Load Hugging Face-named tensors (e.g. a ``transformers`` model's ``state_dict()``) into ``model``."""
    names = list(tensors)
    plan, report, hf_name_of = _plan(model, names, source)
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    _check(model, plan, shapes, report, hf_name_of, source=source, strict=strict)
    _copy(model, plan, lambda name: tensors[name])
    return report


def _build(
    config: BertConfig, head: Head | None, num_labels: int, classifier_dropout: float | None = None
) -> AnyBert:
    if head is None:
        return BertModel(config)
    if head == "sequence-classification":
        return BertForSequenceClassification(config, num_labels, classifier_dropout=classifier_dropout)
    if head == "token-classification":
        return BertForTokenClassification(config, num_labels, classifier_dropout=classifier_dropout)
    if head == "masked-lm":
        return BertForMaskedLM(config)
    raise ConfigError(
        f"head={head!r} must be None, 'sequence-classification', 'token-classification' or 'masked-lm'"
    )


def load_pretrained(
    path: str | os.PathLike[str],
    *,
    head: Head | None = None,
    num_labels: int | None = None,
    strict: bool = True,
) -> tuple[AnyBert, LoadReport]:
    """Load a Hugging Face BERT directory; return the model (in eval mode) and the :class:`LoadReport`.

    ``path`` holds ``config.json`` and ``model.safetensors`` (or an index of safetensors shards); a
    sentence-transformers folder works too. ``head=None`` gives the bare :class:`BertModel` (with a pooler
    when the checkpoint has one). ``num_labels`` defaults to the size of config.json's ``id2label``, else 2.
    Raises :class:`CheckpointError` naming the file and tensor for a truncated file, a wrong shape, a missing
    encoder tensor (unless ``strict=False``), or a directory with only pickle weights, which is never opened.
    """
    model_dir = transformer_dir(path)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: not found; a Hugging Face BERT directory has a config.json")
    hf_config = _read_json(config_path)
    config = config_from_hf(hf_config, source=str(config_path))
    infos = _weight_files(model_dir)
    has_pooler = any(n.removeprefix(_PREFIX).startswith("pooler.") for n in infos)
    config = dataclasses.replace(config, add_pooler=has_pooler)
    if num_labels is None:
        num_labels = len(hf_config.get("id2label") or {}) or 2
    model = _build(config, head, num_labels, hf_config.get("classifier_dropout"))

    files = sorted({info.file for info in infos.values()})
    source = str(files[0]) if len(files) == 1 else str(model_dir / WEIGHTS_INDEX_FILE)
    plan, report, hf_name_of = _plan(model, list(infos), source)
    _check(
        model, plan, {n: i.shape for n, i in infos.items()}, report, hf_name_of, source=source, strict=strict
    )
    handles: dict[Path, Any] = {}

    def fetch(name: str) -> Tensor:
        file = infos[name].file
        if file not in handles:
            handles[file] = safe_open(str(file), framework="pt")
        try:
            return handles[file].get_tensor(name)  # type: ignore[no-any-return]
        except Exception as error:  # safetensors raises its own SafetensorError
            raise CheckpointError(f"{file}: cannot read tensor {name!r} ({error})") from error

    _copy(model, plan, fetch)
    return model.eval(), report


def from_pretrained(
    path: str | os.PathLike[str],
    *,
    head: Head | None = None,
    num_labels: int | None = None,
    strict: bool = True,
) -> AnyBert:
    """:func:`load_pretrained`, warning about newly initialised and unused tensors as Hugging Face does."""
    model, report = load_pretrained(path, head=head, num_labels=num_labels, strict=strict)
    if report.initialised:
        warnings.warn(
            f"{path}: not in the checkpoint, randomly initialised (train before use): "
            f"{_short_list(report.initialised)}",
            stacklevel=2,
        )
    if report.unexpected:
        warnings.warn(
            f"{path}: checkpoint tensors this model does not use: {_short_list(report.unexpected)}",
            stacklevel=2,
        )
    return model


def _short_list(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


# ---- saving -------------------------------------------------------------------------------------------------


def hf_state_dict(model: AnyBert) -> dict[str, Tensor]:
    """The model's tensors under Hugging Face names (``bert.``-prefixed encoder in the models with a head)."""
    has_head = _has_head(model)
    to_hf = {
        (_PREFIX + qkv if part == "encoder" and has_head else qkv): (
            _PREFIX + hf if part == "encoder" and has_head else hf
        )
        for hf, (part, qkv) in _name_table(model.config.layers).items()
    }
    tensors: dict[str, Tensor] = {}
    for name, tensor in model.state_dict().items():
        if name not in to_hf:
            raise CheckpointError(f"no Hugging Face name for qkv tensor {name!r}; add it to HF_NAMES")
        tensors[to_hf[name]] = tensor.detach().to("cpu").contiguous()
    return tensors


def save_pretrained(
    model: AnyBert, path: str | os.PathLike[str], *, labels: Sequence[str] | None = None
) -> Path:
    """Write ``config.json`` and ``model.safetensors`` in Hugging Face's BERT layout; return the directory.

    ``transformers.BertModel.from_pretrained(path)`` (or the matching ``BertFor...`` class) opens it. Each
    file is written to a temporary name and renamed. Tokenizer files are not written: copy them alongside.
    ``labels`` names the classes of a head in ``id2label`` (default ``LABEL_i``).
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    num_labels = (
        model.classifier.out_features
        if isinstance(model, (BertForSequenceClassification, BertForTokenClassification))
        else None
    )
    config = config_to_hf(model.config, _ARCHITECTURES[type(model)], num_labels)
    if labels is not None:
        if num_labels != len(labels):
            raise ValueError(f"{len(labels)} label names for a head of {num_labels} labels")
        config["id2label"] = {str(i): label for i, label in enumerate(labels)}
        config["label2id"] = {label: i for i, label in enumerate(labels)}
    tensors = hf_state_dict(model)

    def write_weights(temp: Path) -> None:
        save_file(tensors, str(temp), metadata={"format": "pt"})  # transformers requires the format key

    def write_config(temp: Path) -> None:
        temp.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    _write_atomic(out / WEIGHTS_FILE, write_weights)
    _write_atomic(out / "config.json", write_config)
    return out


def _write_atomic(target: Path, write: Callable[[Path], None]) -> None:
    """``write`` a temporary sibling of ``target``, make it 0644, then rename it over ``target``."""
    fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    os.close(fd)
    temp = Path(temp_name)
    try:
        write(temp)
        os.chmod(temp, 0o644)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
