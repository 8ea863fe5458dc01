"""Training the non-autoregressive model: the conditional masked LM loss of Mask-Predict plus a length loss.

For each target sentence of n tokens, a number m is drawn uniformly from 1..n and m positions chosen at
random are replaced by [MASK] (Ghazvininejad et al., 2019, section 3.2); the decoder predicts them from the
source and the n - m tokens left in place. The loss is the label-smoothed cross-entropy on the masked
positions plus ``length_weight`` times the cross-entropy of the length predictor (fairseq's cmlm recipe
uses 0.1), both per masked token on average:

    loss = sum_masked CE(token) / M  +  length_weight * sum_sentences CE(length) / B

With the ``"cut"`` length method (:class:`~qkv.config.NATConfig`) there is no length loss: each target is
written into ``length_bounds`` positions (source length + max_length_offset, or the target's length + 1
where that is longer), the sentence then </s> at every position after it, and the masks fall on all of
them. The model learns where a sentence ends from the </s> it must write, and those easy </s> positions
count in the mean like any other masked token.

The masks are drawn from torch's global generator, which the trainer reseeds from (seed, step) before
every step, so training stays reproducible and resumable to the bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.data.batching import LengthIndex, MappedLengths, collate
from qkv.data.prepared import length_index
from qkv.models.nat import length_bounds, length_classes
from qkv.train.loss import label_smoothed_loss
from qkv.train.task import Example

DEFAULT_LENGTH_WEIGHT = 0.1


def random_masks(tgt: Tensor, pad_id: int, generator: torch.Generator | None = None) -> Tensor:
    """Which target positions to mask: for a sentence of n tokens, m ~ Uniform{1..n} random positions.

    Shapes: tgt (batch, tgt_len), padded with ``pad_id`` -> bool (batch, tgt_len), True = masked (never
    a padded position; nothing in an empty sentence).
    """
    is_real = tgt != pad_id
    n = is_real.sum(dim=1)  # (batch,)
    keys = torch.rand(tgt.shape, generator=generator, device=tgt.device).masked_fill(~is_real, 2.0)
    ranks = keys.argsort(dim=1).argsort(dim=1)  # a random order of each row's real positions first
    m = (torch.rand(n.shape, generator=generator, device=tgt.device) * n).floor().long() + 1  # 1..n
    return (ranks < m[:, None]) & is_real


class NATTask:
    """What the trainer needs to train a :class:`~qkv.models.nat.NATransformer`.

    An example is the seq2seq one: (source ids ending in </s>, target ids without <s> or </s>).
    ``cut_at`` (the end id, </s>) trains the ``"cut"`` length method; None the length predictor.
    """

    def __init__(
        self,
        pad_id: int,
        mask_id: int,
        max_length_offset: int,
        *,
        length_weight: float = DEFAULT_LENGTH_WEIGHT,
        cut_at: int | None = None,
        max_positions: int | None = None,
    ) -> None:
        if length_weight < 0:
            raise ValueError(f"length_weight={length_weight} must not be negative")
        if cut_at is not None and max_positions is None:
            raise ValueError("the cut length method needs max_positions (the longest target it writes)")
        self.pad_id, self.mask_id = pad_id, mask_id
        self.max_length_offset = max_length_offset
        self.length_weight = length_weight
        self.cut_at, self.max_positions = cut_at, max_positions

    def lengths(self, data: Sequence[Example]) -> LengthIndex:
        return MappedLengths(length_index(data), self._decoder_lengths)

    def _decoder_lengths(
        self, src: npt.NDArray[np.integer], tgt: npt.NDArray[np.integer]
    ) -> tuple[npt.NDArray[np.integer], npt.NDArray[np.integer]]:
        """Batching lengths of pairs (vectorised): the decoder writes at least one position; with the cut
        method, the inference bound (:func:`~qkv.models.nat.length_bounds`), or the target and one </s>
        where that is longer, never more than max_positions."""
        if self.cut_at is None:
            return src, np.maximum(tgt, 1)
        assert self.max_positions is not None
        src_lengths = torch.from_numpy(src.astype(np.int64))
        bounds = length_bounds(src_lengths, self.max_length_offset, self.max_positions).numpy()
        return src, np.minimum(np.maximum(bounds, tgt.astype(np.int64) + 1), self.max_positions)

    def _bound(self, src_len: int, tgt_len: int) -> int:
        """Decoder positions of one example with the cut method: the inference bound, or room for the
        target and one </s> where the target is longer (never more than max_positions)."""
        _, positions = self._decoder_lengths(np.array([src_len]), np.array([tgt_len]))
        return int(positions[0])

    def _targets(self, examples: Sequence[Example]) -> Tensor:
        """The gold targets, padded: as they are, or (cut) each followed by </s> up to its bound and cut
        to it. Shapes: -> (batch, tgt_len) long."""
        if self.cut_at is None:
            return collate([tgt for _, tgt in examples], self.pad_id)
        rows = []
        for src, tgt in examples:
            bound = self._bound(len(src), len(tgt))
            rows.append([*tgt, *[self.cut_at] * (bound - len(tgt))][:bound])
        return collate(rows, self.pad_id)

    def tensors(
        self, data: Sequence[Example], indices: Sequence[int], device: torch.device
    ) -> tuple[Tensor, ...]:
        """(src (batch, src_len), tgt_in (batch, tgt_len) with [MASK]s, tgt_out (batch, tgt_len): the gold
        token where masked, pad elsewhere, length classes (batch,))."""
        examples = [data[i] for i in indices]  # each read once (from disk, for a prepared corpus)
        src = collate([src for src, _ in examples], self.pad_id)
        tgt = self._targets(examples)
        masked = random_masks(tgt, self.pad_id)
        tgt_in = tgt.masked_fill(masked, self.mask_id)
        tgt_out = tgt.masked_fill(~masked, self.pad_id)
        classes = length_classes(
            (tgt != self.pad_id).sum(dim=1), (src != self.pad_id).sum(dim=1), self.max_length_offset
        )
        return src.to(device), tgt_in.to(device), tgt_out.to(device), classes.to(device)

    def count(self, batch: tuple[Tensor, ...]) -> int:
        """Masked target tokens: the loss is their mean (the trainer divides by this)."""
        return int((batch[2] != self.pad_id).sum())

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...], smoothing: float) -> tuple[Tensor, Tensor]:
        """(token loss + weighted length loss, token NLL), both summed so that dividing by the masked token
        count gives the per-token mean plus length_weight times the per-sentence length loss."""
        src, tgt_in, tgt_out, classes = batch
        logits, length_logits = model(src, tgt_in)  # (batch, tgt_len, vocab), (batch, 2K + 1) or None
        loss, nll = label_smoothed_loss(logits, tgt_out, smoothing=smoothing, pad_id=self.pad_id)
        if self.length_weight > 0 and length_logits is not None:
            tokens_per_sentence = (tgt_out != self.pad_id).sum() / max(src.shape[0], 1)
            length_loss = F.cross_entropy(length_logits.float(), classes, reduction="sum")
            loss = loss + self.length_weight * length_loss * tokens_per_sentence
        return loss, nll.detach()
