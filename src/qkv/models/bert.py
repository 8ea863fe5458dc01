"""BERT: the Transformer encoder alone, pre-trained as a masked language model (Devlin et al., 2019).

    ids, token types -> word + position + token-type embeddings -> LayerNorm -> dropout
                     -> N post-LN encoder layers (self-attention, GELU FFN)          -> hidden states
    hidden[:, 0] (the [CLS] position) -> dense + tanh                                  -> pooled (optional)

Heads: sequence classification (N -> 1, on the pooled [CLS] vector), token tagging (N -> N), and the masked
LM (dense + GELU + LayerNorm, then the word embeddings transposed, tied, plus a bias).

Hugging Face checkpoints load and save through :mod:`qkv.models.bert_hf`, which builds these classes.

Masks are built here from ``attention_mask`` (1 = real token, Hugging Face's convention) or, when it is
absent, from the ids and the pad id: bool, True = may attend (:mod:`qkv.nn.masks`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv import infer
from qkv.config import BERT_PRESETS, BertConfig, ConfigError
from qkv.infer.layers import frozen_layer
from qkv.infer.snapshot import model_snapshot
from qkv.nn import masks
from qkv.nn.attention import KeyMask
from qkv.nn.dropout import Dropout
from qkv.nn.embedding import TokenEmbedding
from qkv.nn.layers import EncoderLayer, LayerOps, encoder_layer
from qkv.nn.positional import LearnedPositions

__all__ = [
    "BERT_PRESETS",
    "AnyBert",
    "BertConfig",
    "BertEmbeddings",
    "BertForMaskedLM",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertModel",
    "BertOutput",
    "Head",
    "MaskedLMHead",
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

        Where :func:`qkv.infer.backend` picks prepared weights (a CPU, float32, eval mode, no gradients, no
        weights asked for, ``fused``) the layers run on them (products packed for hundreds of rows, built
        once per weights): the same function; ``fast=False`` runs the modules.
        """
        if attention_mask is None:
            may_attend = masks.padding(ids, self.config.pad_id)  # (batch, 1, 1, length)
        else:
            may_attend = masks.padding(attention_mask, 0)  # attention_mask != 0
        x = self.embeddings(ids, token_type_ids)
        mask = KeyMask.of(may_attend)  # worked out once for the stack
        weights: list[Tensor] | None = [] if need_weights else None
        if fast and fused and not need_weights and infer.backend(self, x) is not None:
            stack = model_snapshot(self, "bert-encoder", self._prepared_layers)
        else:
            layers: list[EncoderLayer] = list(self.encoder)  # type: ignore[arg-type]
            stack = [layer.ops(need_weights=need_weights, fused=fused) for layer in layers]
        for ops in stack:
            x, w = encoder_layer(ops, x, mask)
            if weights is not None and w is not None:
                weights.append(w)  # (batch, heads, length, length)
        pooled = self.pooler(x) if self.pooler is not None else None
        return BertOutput(x, pooled, may_attend, weights)

    def _prepared_layers(self) -> list[LayerOps]:
        return [frozen_layer(layer, many_rows=True) for layer in self.encoder]  # type: ignore[arg-type]


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
