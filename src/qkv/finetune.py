"""Fine-tuning BERT for N -> 1 classification and N -> N tagging, with qkv's trainer.

Data are TSV files (read with :mod:`qkv.data.corpus`, so bad lines are reported as ``FILE:LINE``):

* classification: a label and a text per line (``--label-col``/``--text-col``, default 1 and 2), or a
  label and a pair of texts (``pair_col``: the column of the second text), read together as
  ``[CLS] text [SEP] text_pair [SEP]`` with token types 0 then 1, as BERT reads sentence pairs;
* tagging: space-separated words and the same number of space-separated tags per line.

Tagging labels the first WordPiece of each word; the other pieces are ignored by the loss (-100), the
usual convention. The run directory is a normal qkv run (checkpoints, resume, best/, metrics.jsonl);
each checkpoint is a model directory that :func:`load` reads, and :func:`export_hf` writes the Hugging
Face layout that ``transformers`` opens.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv import checkpoint
from qkv.config import BertConfig
from qkv.data.batching import ArrayLengths, LengthIndex, collate
from qkv.data.corpus import CorpusError, read_tsv
from qkv.embed import bert_input, load_bert_tokenizer
from qkv.models.bert import BertForSequenceClassification, BertForTokenClassification, Head
from qkv.models.bert_hf import load_pretrained, save_pretrained
from qkv.nn.modes import eval_mode
from qkv.tokenize import Tokenizer
from qkv.train.trainer import TrainConfig, Trainer, TrainResult

Kind = Literal["classify", "tag"]
IGNORE = -100  # label of positions the loss skips ([CLS], [SEP], non-initial word pieces, padding)
HeadModel = BertForSequenceClassification | BertForTokenClassification


class Example(NamedTuple):
    """One encoded example."""

    ids: list[int]  # [CLS] .. [SEP], or [CLS] A [SEP] B [SEP] for a pair
    labels: list[int]  # one (classification), or one per position (tagging; IGNORE where not labelled)
    token_types: list[int]  # BERT's segment of each position: 0 (A), 1 (B)


# -- data ------------------------------------------------------------------------------------------
def read_examples(
    path: str | os.PathLike[str], kind: Kind, *, text_col: int = 2, label_col: int = 1
) -> list[tuple[str, str]]:
    """(text, label) pairs for classification; (words, tags) pairs for tagging, counts checked."""
    corpus = read_tsv(path, text_col, label_col, max_chars=None)
    if kind == "tag":
        for (words, tags), line in zip(corpus.pairs, corpus.line_numbers, strict=True):
            n_words, n_tags = len(words.split()), len(tags.split())
            if n_words != n_tags:
                raise CorpusError(
                    str(path),
                    line,
                    f"{n_words} words but {n_tags} tags; give one tag per space-separated word",
                )
    return corpus.pairs


def read_second_texts(path: str | os.PathLike[str], *, pair_col: int, label_col: int = 1) -> list[str]:
    """The second text of each line (column ``pair_col``), for classification of sentence pairs; the
    lines are those of :func:`read_examples`, so the two lists line up."""
    return [text for text, _ in read_tsv(path, pair_col, label_col, max_chars=None).pairs]


def label_set(pairs: Sequence[tuple[str, str]], kind: Kind) -> list[str]:
    """The labels in a stable order (sorted), from the training data."""
    if kind == "classify":
        return sorted({label for _, label in pairs})
    return sorted({tag for _, tags in pairs for tag in tags.split()})


def encode(
    pairs: Sequence[tuple[str, str]],
    kind: Kind,
    tokenizer: Tokenizer,
    labels: Sequence[str],
    max_len: int,
    *,
    second_texts: Sequence[str] | None = None,
) -> list[Example]:
    """Token ids ([CLS] ... [SEP], truncated to ``max_len``) and label ids; unknown labels are an error.

    With ``second_texts`` (classification), example i is the pair (pairs[i]'s text, second_texts[i]):
    [CLS] A [SEP] B [SEP] with token types 0 then 1, cut as Hugging Face cuts pairs
    (:func:`qkv.embed.bert_input`).
    """
    if second_texts is not None and (kind != "classify" or len(second_texts) != len(pairs)):
        raise ValueError("second_texts: one per example, and for classification only")
    cls_id, sep_id = tokenizer.cls_id, tokenizer.sep_id
    if cls_id is None or sep_id is None:
        raise ValueError("the tokenizer has no [CLS]/[SEP]; fine-tuning needs a BERT WordPiece vocabulary")
    index = {label: i for i, label in enumerate(labels)}

    def label_id(label: str) -> int:
        if label not in index:
            raise ValueError(f"label {label!r} was not in the training data (labels: {list(labels)})")
        return index[label]

    examples: list[Example] = []
    for n, (text, label) in enumerate(pairs):
        if kind == "classify":
            second = None if second_texts is None else tokenizer.encode(second_texts[n])
            ids, types = bert_input(cls_id, sep_id, tokenizer.encode(text), second, max_len)
            examples.append(Example(ids, [label_id(label)], types))
            continue
        ids, tags = [cls_id], [IGNORE]
        for word, tag in zip(text.split(), label.split(), strict=True):
            pieces = tokenizer.encode(word) or ([tokenizer.unk_id] if tokenizer.unk_id is not None else [])
            ids += pieces
            tags += [label_id(tag)] + [IGNORE] * (len(pieces) - 1)
        ids, tags = ids[: max_len - 1] + [sep_id], tags[: max_len - 1] + [IGNORE]
        examples.append(Example(ids, tags, [0] * len(ids)))
    return examples


# -- the tasks the trainer runs --------------------------------------------------------------------
class ClassificationTask:
    """N -> 1: cross-entropy of the sequence's label; the loss is a mean over sentences."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def lengths(self, data: Sequence[Example]) -> LengthIndex:
        lengths = [len(e.ids) for e in data]
        return ArrayLengths(lengths, lengths)

    def tensors(
        self, data: Sequence[Example], indices: Sequence[int], device: torch.device
    ) -> tuple[Tensor, ...]:
        ids = collate([data[i].ids for i in indices], self.pad_id)  # (batch, length)
        token_types = collate([data[i].token_types for i in indices], 0)  # (batch, length)
        labels = torch.tensor([data[i].labels[0] for i in indices])  # (batch,)
        return ids.to(device), labels.to(device), token_types.to(device)

    def count(self, batch: tuple[Tensor, ...]) -> int:
        return int(batch[1].numel())

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...], smoothing: float) -> tuple[Tensor, Tensor]:
        ids, labels, token_types = batch
        logits = model(ids, (ids != self.pad_id).long(), token_types)  # (batch, labels)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=smoothing, reduction="sum")
        nll = F.cross_entropy(logits.detach().float(), labels, reduction="sum")
        return loss, nll


class TaggingTask(ClassificationTask):
    """N -> N: cross-entropy of each word's tag; the loss is a mean over tagged positions."""

    def tensors(
        self, data: Sequence[Example], indices: Sequence[int], device: torch.device
    ) -> tuple[Tensor, ...]:
        ids = collate([data[i].ids for i in indices], self.pad_id)  # (batch, length)
        labels = torch.full(ids.shape, IGNORE, dtype=torch.long)
        for row, i in enumerate(indices):
            labels[row, : len(data[i].labels)] = torch.tensor(data[i].labels)
        return ids.to(device), labels.to(device), torch.zeros_like(ids).to(device)

    def count(self, batch: tuple[Tensor, ...]) -> int:
        return int((batch[1] != IGNORE).sum())

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...], smoothing: float) -> tuple[Tensor, Tensor]:
        ids, labels, token_types = batch
        logits = model(ids, (ids != self.pad_id).long(), token_types)  # (batch, length, labels)
        logits = logits.flatten(0, 1).float()  # (batch * length, labels)
        flat = labels.flatten()
        loss = F.cross_entropy(logits, flat, ignore_index=IGNORE, label_smoothing=smoothing, reduction="sum")
        nll = F.cross_entropy(logits.detach(), flat, ignore_index=IGNORE, reduction="sum")
        return loss, nll


# -- predictions and accuracy ----------------------------------------------------------------------
@torch.inference_mode()
def predict(
    model: HeadModel, examples: Sequence[Example], pad_id: int, batch_size: int = 64
) -> list[list[int]]:
    """Predicted label ids: one per example (classification) or one per labelled position (tagging)."""
    device = next(model.parameters()).device
    out: list[list[int]] = []
    with eval_mode(model):
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            ids = collate([e.ids for e in chunk], pad_id).to(device)
            token_types = collate([e.token_types for e in chunk], 0).to(device)
            best = model(ids, (ids != pad_id).long(), token_types).argmax(-1).cpu()
            for row, (_, labels, _) in enumerate(chunk):
                if isinstance(model, BertForSequenceClassification):
                    out.append([int(best[row])])
                else:
                    out.append([int(best[row, p]) for p, label in enumerate(labels) if label != IGNORE])
    return out


def accuracy(model: HeadModel, examples: Sequence[Example], pad_id: int) -> float:
    """Share of labels predicted right (sentences for classification, words for tagging)."""
    predicted = predict(model, examples, pad_id)
    right = total = 0
    for guess, (_, labels, _) in zip(predicted, examples, strict=True):
        gold = [label for label in labels if label != IGNORE]
        right += sum(g == t for g, t in zip(guess, gold, strict=True))
        total += len(gold)
    return right / max(total, 1)


# -- building, saving, loading ---------------------------------------------------------------------
def build(kind: Kind, config: BertConfig, num_labels: int) -> HeadModel:
    if kind == "classify":
        return BertForSequenceClassification(config, num_labels)
    return BertForTokenClassification(config, num_labels)


def _model_json(kind: Kind, config: BertConfig, labels: Sequence[str]) -> dict[str, Any]:
    return {
        checkpoint.CONFIG_FILE: {
            "model_type": "qkv-bert-finetuned",
            "task": kind,
            "labels": list(labels),
            "bert": dataclasses.asdict(config),
        }
    }


@dataclass
class FineTuned:
    model: HeadModel
    tokenizer: Tokenizer
    kind: Kind
    labels: list[str]


def load(path: str | os.PathLike[str]) -> FineTuned:
    """A fine-tuned model directory (a checkpoint, or a run's best/) with its tokenizer, in eval mode."""
    root = Path(path)
    if not (root / checkpoint.MODEL_FILE).is_file() and root.is_dir():
        best = checkpoint.recover(root / "best")  # restored if a writer was killed while replacing it
        if (best / checkpoint.MODEL_FILE).is_file():
            root = best
    config, tensors = checkpoint.load_directory(root)
    config_file = root / checkpoint.CONFIG_FILE
    if config.get("model_type") != "qkv-bert-finetuned":
        raise checkpoint.CheckpointError(f"{config_file}: not a fine-tuned qkv BERT model")
    kind = config.get("task")
    if kind not in ("classify", "tag"):
        raise checkpoint.CheckpointError(f"{config_file}: task={kind!r} must be 'classify' or 'tag'")
    labels = config.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(label, str) for label in labels):
        raise checkpoint.CheckpointError(f"{config_file}: labels must be a non-empty list of label names")
    bert_config = BertConfig.from_dict(config.get("bert"), source=f"{config_file} (key 'bert')")
    model = build(kind, bert_config, len(labels))
    checkpoint.check_state_dict(model.state_dict(), tensors, root / checkpoint.MODEL_FILE)
    model.load_state_dict(tensors)
    return FineTuned(model.eval(), Tokenizer.load(root / "tokenizer.json"), kind, list(labels))


def export_hf(tuned: FineTuned, path: str | os.PathLike[str]) -> Path:
    """Write the Hugging Face layout (config.json with id2label, model.safetensors, tokenizer.json)."""
    out = save_pretrained(tuned.model, path, labels=tuned.labels)
    tuned.tokenizer.save(out / "tokenizer.json")
    return out


# -- the whole job ---------------------------------------------------------------------------------
def finetune(
    run_dir: str | os.PathLike[str],
    *,
    kind: Kind,
    train_path: str | os.PathLike[str],
    valid_path: str | os.PathLike[str] | None = None,
    pretrained: str | os.PathLike[str] | None = None,
    config: BertConfig | None = None,
    tokenizer: Tokenizer | None = None,
    train_config: TrainConfig,
    text_col: int = 2,
    label_col: int = 1,
    pair_col: int | None = None,
    device: str = "cpu",
    progress: bool = True,
    resume: bool = False,
) -> tuple[TrainResult, float | None]:
    """Fine-tune a pretrained BERT directory (or train a ``config`` from scratch with ``tokenizer``).

    Returns the training result and the validation accuracy of the final model (None without validation
    data). Validation accuracy is also logged at each validation. ``pair_col`` (classification): the
    column of a second text, so that each example is a sentence pair (segments A and B).
    """
    if pair_col is not None and kind != "classify":
        raise ValueError("pair_col: sentence pairs are for classification; tagging reads one text per line")
    train_pairs = read_examples(train_path, kind, text_col=text_col, label_col=label_col)
    valid_pairs = (
        read_examples(valid_path, kind, text_col=text_col, label_col=label_col) if valid_path else []
    )

    def seconds(path: str | os.PathLike[str] | None) -> list[str] | None:
        if pair_col is None or path is None:
            return None
        return read_second_texts(path, pair_col=pair_col, label_col=label_col)

    labels = label_set(train_pairs, kind)
    if pretrained is not None:
        tok = load_bert_tokenizer(pretrained)
        head: Head = "sequence-classification" if kind == "classify" else "token-classification"
        model, _ = load_pretrained(pretrained, head=head, num_labels=len(labels))
        if not isinstance(model, (BertForSequenceClassification, BertForTokenClassification)):
            raise TypeError(f"expected a model with a {head} head")
        bert_config = model.config
    elif config is not None and tokenizer is not None:
        tok, bert_config = tokenizer, config
        torch.manual_seed(train_config.seed)
        model = build(kind, config, len(labels))
    else:
        raise ValueError(
            "give a pretrained BERT directory, or a config and a tokenizer to train from scratch"
        )
    pad_id = bert_config.pad_id
    max_len = bert_config.max_positions
    train_examples = encode(train_pairs, kind, tok, labels, max_len, second_texts=seconds(train_path))
    valid_examples = encode(valid_pairs, kind, tok, labels, max_len, second_texts=seconds(valid_path))
    task = ClassificationTask(pad_id) if kind == "classify" else TaggingTask(pad_id)

    def valid_accuracy(m: Any, step: int) -> dict[str, float]:
        return {"valid_accuracy": accuracy(m, valid_examples, pad_id)}

    trainer = Trainer(
        model,
        train_config,
        run_dir,
        train=train_examples,
        valid=valid_examples,
        task=task,
        model_json=_model_json(kind, bert_config, labels),
        model_text={"tokenizer.json": tok.to_json()},
        hooks=[valid_accuracy] if valid_examples else [],
        device=device,
        progress=progress,
    )
    if resume:
        trainer.resume()
    result = trainer.fit()
    final = accuracy(model, valid_examples, pad_id) if valid_examples else None
    return result, final
