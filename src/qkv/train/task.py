"""What the trainer trains: a task turns examples into tensors and a batch into a summed loss.

The training loop (:mod:`qkv.train.trainer`) is the same for every model; a task says what one example
is, how long it is (for token-budget batching) and what the loss is. :class:`Seq2SeqTask` is teacher
forcing for the encoder-decoder; BERT fine-tuning brings its own tasks (:mod:`qkv.finetune`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from qkv.data.batching import LengthIndex, MappedLengths, collate
from qkv.data.encode import Example as Example  # re-exported: the seq2seq example type
from qkv.data.prepared import length_index
from qkv.train.loss import label_smoothed_loss


class Task(Protocol):
    """The model-specific part of training."""

    def lengths(self, data: Sequence[Any]) -> LengthIndex:
        """Two lengths per example (e.g. source and target tokens) for token-budget batching, read for the
        examples batching asks about (from a prepared corpus's index, with no pair read)."""
        ...

    def tensors(
        self, data: Sequence[Any], indices: Sequence[int], device: torch.device
    ) -> tuple[Tensor, ...]:
        """The tensors of one batch."""
        ...

    def count(self, batch: tuple[Tensor, ...]) -> int:
        """How many loss terms the batch has (target tokens, sentences...): the loss is their mean."""
        ...

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...], smoothing: float) -> tuple[Tensor, Tensor]:
        """(training loss summed over the batch's terms, plain negative log-likelihood summed likewise)."""
        ...


class Seq2SeqTask:
    """Teacher forcing: the decoder reads the target shifted right (<s> t1 .. tn) and predicts t1 .. tn </s>."""

    def __init__(self, pad_id: int, bos_id: int, eos_id: int) -> None:
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id

    def lengths(self, data: Sequence[Example]) -> LengthIndex:
        return MappedLengths(length_index(data), _with_bos)

    def tensors(
        self, data: Sequence[Example], indices: Sequence[int], device: torch.device
    ) -> tuple[Tensor, ...]:
        """(src (batch, src_len), tgt_in (batch, tgt_len) starting with <s>, tgt_out ending with </s>)."""
        examples = [data[i] for i in indices]  # each read once (from disk, for a prepared corpus)
        src = collate([src for src, _ in examples], self.pad_id)
        tgt_in = collate([[self.bos_id, *tgt] for _, tgt in examples], self.pad_id)
        tgt_out = collate([[*tgt, self.eos_id] for _, tgt in examples], self.pad_id)
        return src.to(device), tgt_in.to(device), tgt_out.to(device)

    def count(self, batch: tuple[Tensor, ...]) -> int:
        return int((batch[2] != self.pad_id).sum())

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...], smoothing: float) -> tuple[Tensor, Tensor]:
        src, tgt_in, tgt_out = batch
        is_real_token = tgt_out != self.pad_id  # (batch, tgt_len)
        logits = model(src, tgt_in, logits_at=is_real_token)  # (real tokens, vocab): none wasted on pads
        return label_smoothed_loss(logits, tgt_out[is_real_token], smoothing=smoothing, pad_id=self.pad_id)


def _with_bos(
    src: npt.NDArray[np.integer], tgt: npt.NDArray[np.integer]
) -> tuple[npt.NDArray[np.integer], npt.NDArray[np.integer]]:
    """Batching lengths of pairs: the decoder reads <s> + target and predicts target + </s>, one more."""
    return src, tgt + 1
