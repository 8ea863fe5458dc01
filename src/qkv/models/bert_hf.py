"""Hugging Face BERT checkpoints in and out of :mod:`qkv.models.bert`: names matched, shapes checked, tensors
copied; and the same layout written back.

A Hugging Face BERT directory (``config.json`` and ``model.safetensors``, or a sentence-transformers folder)
loads through :func:`from_pretrained`. Every tensor name is translated by the one table :data:`HF_NAMES`;
config keys by :data:`~qkv.models.bert_files.HF_CONFIG_KEYS`. Shapes are checked before anything is loaded,
a truncated file is detected from its header, and pickle files (``pytorch_model.bin``) are refused, never
opened (reading the files is :mod:`qkv.models.bert_files`' part). :func:`save_pretrained` writes the same
layout back, so ``transformers`` opens a qkv BERT.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from qkv.config import BertConfig, ConfigError
from qkv.models import bert_files
from qkv.models.bert import (
    AnyBert,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    Head,
)
from qkv.models.bert_files import (
    HF_CONFIG_KEYS,
    WEIGHTS_INDEX_FILE,
    CheckpointError,
    config_from_hf,
    config_to_hf,
    transformer_dir,
)

__all__ = [
    "HF_CONFIG_KEYS",
    "HF_NAMES",
    "CheckpointError",
    "LoadReport",
    "config_from_hf",
    "config_to_hf",
    "from_pretrained",
    "hf_state_dict",
    "load_hf_state_dict",
    "load_pretrained",
    "save_pretrained",
    "transformer_dir",
]

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


def _name_table(layers: int) -> dict[str, tuple[str, str]]:
    """Hugging Face name (without the prefix) -> (part, qkv name), with ``{i}`` expanded for every layer."""
    table: dict[str, tuple[str, str]] = {}
    for part, hf, ours in HF_NAMES:
        for i in range(layers) if "{i}" in hf else [0]:
            table[hf.format(i=i)] = (part, ours.format(i=i))
    return table


def _has_head(model: nn.Module) -> bool:
    return not isinstance(model, BertModel)


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
    hf_config, config = bert_files.read_hf_config(model_dir)
    config_path = model_dir / bert_files.CONFIG_FILE
    infos = bert_files.weight_files(model_dir)
    has_pooler = any(n.removeprefix(_PREFIX).startswith("pooler.") for n in infos)
    config = dataclasses.replace(config, add_pooler=has_pooler)
    if num_labels is None:
        num_labels = bert_files.num_labels_of(hf_config, config_path) or 2
    model = _build(config, head, num_labels, bert_files.classifier_dropout_of(hf_config, config_path))

    files = sorted({info.file for info in infos.values()})
    source = str(files[0]) if len(files) == 1 else str(model_dir / WEIGHTS_INDEX_FILE)
    plan, report, hf_name_of = _plan(model, list(infos), source)
    _check(
        model, plan, {n: i.shape for n, i in infos.items()}, report, hf_name_of, source=source, strict=strict
    )
    fetch = bert_files.TensorReader(infos)
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
    return bert_files.write_pretrained(out, config, hf_state_dict(model))
