"""Parameter accounting: where every parameter of a Transformer goes, line by line.

:func:`seq2seq_rows` computes the count from the configuration with written-out formulas;
:func:`module_rows` counts an instantiated model by walking its parameters. The two must agree, and
``qkv params --check`` shows that they do.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from qkv.config import BertConfig, ModelConfig, NATConfig
from qkv.models.bert import AnyBert
from qkv.models.nat import NATransformer
from qkv.models.seq2seq import Transformer


@dataclass(frozen=True)
class Row:
    """One line of the table: a component, the formula that counts it, and the count."""

    component: str
    formula: str
    count: int


def seq2seq_rows(c: ModelConfig) -> list[Row]:
    """The encoder-decoder's parameters by component, from the configuration alone.

    Per layer: an attention block has W_Q, W_K, W_V, W_O (d x d) and their biases (d); the FFN has
    W1 (d x d_ff), b1, W2 (d_ff x d), b2; each LayerNorm has a gain and a bias (2d).
    """
    d, f = c.d_model, c.d_ff
    attn = 4 * (d * d + d)
    ffn = d * f + f + f * d + d
    norm = 2 * d
    ne, nd = c.encoder_layers, c.decoder_layers
    rows: list[Row] = []
    if c.share_embeddings:
        rows.append(
            Row("embeddings (shared src/tgt)", f"V x d = {c.src_vocab_size:,} x {d}", c.src_vocab_size * d)
        )
    else:
        rows.append(Row("source embeddings", f"V_src x d = {c.src_vocab_size:,} x {d}", c.src_vocab_size * d))
        rows.append(Row("target embeddings", f"V_tgt x d = {c.tgt_vocab_size:,} x {d}", c.tgt_vocab_size * d))
    if c.positions == "learned":
        rows.append(Row("learned positions", f"{c.max_positions} x {d}", c.max_positions * d))
    else:
        rows.append(Row("sinusoidal positions", "fixed, no parameters", 0))
    rows += [
        Row("encoder self-attention", f"{ne} x 4 x ({d}*{d} + {d})", ne * attn),
        Row("encoder feed-forward", f"{ne} x ({d}*{f} + {f} + {f}*{d} + {d})", ne * ffn),
        Row("encoder LayerNorm", f"{ne} x 2 x 2*{d}", ne * 2 * norm),
        Row("decoder masked self-attention", f"{nd} x 4 x ({d}*{d} + {d})", nd * attn),
        Row("decoder cross-attention", f"{nd} x 4 x ({d}*{d} + {d})", nd * attn),
        Row("decoder feed-forward", f"{nd} x ({d}*{f} + {f} + {f}*{d} + {d})", nd * ffn),
        Row("decoder LayerNorm", f"{nd} x 3 x 2*{d}", nd * 3 * norm),
    ]
    if c.norm_first:
        rows.append(Row("final LayerNorms (pre-LN)", f"2 x 2*{d}", 2 * norm))
    if c.tie_output:
        rows.append(Row("output projection", "tied to the target embeddings", 0))
    else:
        rows.append(Row("output projection", f"d x V_tgt = {d} x {c.tgt_vocab_size:,}", d * c.tgt_vocab_size))
    if isinstance(c, NATConfig) and c.length_method == "classifier":
        classes = 2 * c.max_length_offset + 1
        rows.append(Row("length predictor (NAT)", f"{d} x {classes} + {classes}", d * classes + classes))
    return rows


def _seq2seq_component(name: str, shared_embeddings: bool) -> str:
    """Map a parameter name of qkv's Transformer to its row in :func:`seq2seq_rows`."""
    stack, _, rest = name.partition(".")
    if stack in ("src_embed", "tgt_embed"):
        if shared_embeddings:
            return "embeddings (shared src/tgt)"
        return "source embeddings" if stack == "src_embed" else "target embeddings"
    if stack == "positions":
        return "learned positions"
    if stack in ("encoder_norm", "decoder_norm"):
        return "final LayerNorms (pre-LN)"
    if stack == "output_proj":
        return "output projection"
    if stack == "length_proj":
        return "length predictor (NAT)"
    if stack in ("encoder", "decoder"):
        part = rest.split(".")[1]
        label = {"self_attn": "self-attention", "cross_attn": "cross-attention", "ffn": "feed-forward"}.get(
            part, "LayerNorm"
        )
        if stack == "decoder" and part == "self_attn":
            label = "masked self-attention"
        return f"{stack} {label}"
    return name


def module_rows(model: Transformer | NATransformer) -> list[Row]:
    """Count an instantiated qkv Transformer (or NAT) by walking its parameters (a tied matrix counts once)."""
    counts: OrderedDict[str, int] = OrderedDict()
    for name, p in model.named_parameters():  # named_parameters() already yields a shared tensor once
        key = _seq2seq_component(name, model.config.share_embeddings)
        counts[key] = counts.get(key, 0) + p.numel()
    return [Row(k, "counted", v) for k, v in counts.items()]


def total(rows: list[Row]) -> int:
    return sum(r.count for r in rows)


def format_table(rows: list[Row], title: str = "") -> str:
    """A plain-text table with a share-of-total column and the total."""
    grand = total(rows) or 1
    width_c = max([len(r.component) for r in rows] + [len("component"), len("total")])
    width_f = max([len(r.formula) for r in rows] + [len("formula")])
    lines = [title] if title else []
    lines.append(f"{'component':<{width_c}}  {'formula':<{width_f}}  {'parameters':>13}  {'share':>6}")
    lines.append("-" * (width_c + width_f + 27))
    for r in rows:
        lines.append(
            f"{r.component:<{width_c}}  {r.formula:<{width_f}}  {r.count:>13,}  {r.count / grand:>6.1%}"
        )
    lines.append("-" * (width_c + width_f + 27))
    lines.append(f"{'total':<{width_c}}  {'':<{width_f}}  {total(rows):>13,}")
    return "\n".join(lines)


# ---- BERT ---------------------------------------------------------------------------------------------------

# The rows of a BERT table, in order; bert_module_rows() files each parameter under one of them.
_BERT_COMPONENTS = ("embeddings", "self-attention", "feed-forward", "LayerNorm", "pooler")


def bert_rows(c: BertConfig, *, with_biases: bool, with_pooler: bool | None = None) -> list[Row]:
    """BERT's parameters by component, from the configuration alone.

    ``with_biases=False`` is the seeds' hand count: the embedding tables, the weight matrices W_Q, W_K, W_V,
    W_O, W1, W2, and every LayerNorm's gain and bias (2d each; one after the embeddings, two per layer), but
    no projection biases and no pooler. ``with_biases=True`` adds the biases of the four attention
    projections and of the FFN, and the pooler (dense d x d + bias; leave it out with ``with_pooler=False``;
    by default it follows ``c.add_pooler``): the exact count of an instantiated BertModel.
    """
    d, f, n = c.d_model, c.d_ff, c.layers
    pooler = with_biases and c.add_pooler if with_pooler is None else with_pooler
    rows = [
        Row(
            "embeddings",
            f"(V + positions + types) x d = ({c.vocab_size:,} + {c.max_positions} + {c.type_vocab_size}) x {d}",
            (c.vocab_size + c.max_positions + c.type_vocab_size) * d,
        )
    ]
    if with_biases:
        rows += [
            Row("self-attention", f"{n} x 4 x ({d}*{d} + {d})", n * 4 * (d * d + d)),
            Row("feed-forward", f"{n} x ({d}*{f} + {f} + {f}*{d} + {d})", n * (2 * d * f + f + d)),
        ]
    else:
        rows += [
            Row("self-attention", f"{n} x 4 x {d}*{d}", n * 4 * d * d),
            Row("feed-forward", f"{n} x 2 x {d}*{f}", n * 2 * d * f),
        ]
    rows.append(Row("LayerNorm", f"(1 + 2 x {n}) x 2*{d}", (1 + 2 * n) * 2 * d))
    if pooler:
        rows.append(Row("pooler", f"{d}*{d} + {d}", d * d + d))
    return rows


def bert_layer_rows(c: BertConfig, *, with_biases: bool) -> list[Row]:
    """One encoder layer's parameters: its attention, its FFN and its two LayerNorms.

    The hand count of the lectures (``with_biases=False``) is 4 d^2 + 2 d d_ff + 2 x 2d: for BERT-base,
    2,359,296 + 4,718,592 + 3,072 = 7,080,960. With the biases of W_Q, W_K, W_V, W_O (4d) and of the FFN
    (d_ff + d) it is the exact count of one layer, 7,087,872 for BERT-base.
    """
    d, f = c.d_model, c.d_ff
    if with_biases:
        return [
            Row("self-attention", f"4 x ({d}*{d} + {d})", 4 * (d * d + d)),
            Row("feed-forward", f"{d}*{f} + {f} + {f}*{d} + {d}", 2 * d * f + f + d),
            Row("LayerNorm", f"2 x 2*{d}", 2 * 2 * d),
        ]
    return [
        Row("self-attention", f"4 x {d}*{d}", 4 * d * d),
        Row("feed-forward", f"2 x {d}*{f}", 2 * d * f),
        Row("LayerNorm", f"2 x 2*{d}", 2 * 2 * d),
    ]


def layer_line(rows: list[Row]) -> str:
    """``total = part + part + part``, e.g. ``7,080,960 = 2,359,296 + 4,718,592 + 3,072``."""
    return f"{total(rows):,} = " + " + ".join(f"{r.count:,}" for r in rows)


def _bert_component(name: str) -> str:
    """Map a parameter name of qkv's BERT models to its row (the task heads get rows of their own)."""
    name = name.removeprefix("bert.")
    top, _, rest = name.partition(".")
    if top == "embeddings":
        return "LayerNorm" if rest.startswith("norm.") else "embeddings"
    if top == "encoder":
        part = rest.split(".")[1]
        return {"self_attn": "self-attention", "ffn": "feed-forward"}.get(part, "LayerNorm")
    return {"pooler": "pooler", "classifier": "classifier", "mlm_head": "masked-LM head"}.get(top, name)


def bert_module_rows(model: AnyBert) -> list[Row]:
    """Count an instantiated qkv BERT model by walking its parameters, in the rows of :func:`bert_rows`."""
    counts: OrderedDict[str, int] = OrderedDict((k, 0) for k in _BERT_COMPONENTS)
    for name, p in model.named_parameters():  # the tied MLM decoder is the word embedding: counted once
        key = _bert_component(name)
        counts[key] = counts.get(key, 0) + p.numel()
    return [Row(k, "counted", v) for k, v in counts.items() if v or k != "pooler"]


def bert_report(c: BertConfig) -> str:
    """The seeds' hand count and the exact count side by side, with the difference explained line by line."""
    seed = bert_rows(c, with_biases=False)
    exact = bert_rows(c, with_biases=True)
    before = {r.component: r.count for r in seed}
    lines = [
        format_table(seed, title="Weights only, as the seeds count BERT (no biases, no pooler):"),
        "",
        format_table(exact, title="Exact count, with biases and pooler (= Hugging Face BertModel):"),
        "",
        f"difference: {total(exact) - total(seed):,} parameters",
    ]
    d, f, n = c.d_model, c.d_ff, c.layers
    why = {
        "self-attention": f"biases of W_Q, W_K, W_V, W_O: {n} x 4 x {d}",
        "feed-forward": f"biases b1, b2: {n} x ({f} + {d})",
        "pooler": f"the pooler (dense + tanh on [CLS]): {d}*{d} + {d}",
    }
    for row in exact:
        extra = row.count - before.get(row.component, 0)
        if extra:
            lines.append(f"  + {extra:>9,}  {why.get(row.component, row.component)}")
    hand, full = bert_layer_rows(c, with_biases=False), bert_layer_rows(c, with_biases=True)
    lines += [
        "",
        f"One encoder layer (x {n}): self-attention + feed-forward + 2 LayerNorms",
        f"  weights only:     {layer_line(hand)}   ({' + '.join(r.formula for r in hand)})",
        f"  with the biases:  {layer_line(full)}   ({' + '.join(r.formula for r in full)})",
    ]
    return "\n".join(lines)
