"""Work over wide rows (one score per vocabulary entry): reductions faster than torch's own on a CPU,
and the log-softmax written in place.

Every step of a search reduces rows as wide as the target vocabulary (8,000 to 65,001 columns): greedy
decoding and non-autoregressive passes take each row's maximum and its column, beam search each
sentence's best ``2 * beam`` candidates. torch's ``max(dim)`` and ``topk`` walk such rows element by
element, while ``amax`` (no column wanted) runs vectorised, several times faster
(docs/inference-backends.md). The two reductions here, :func:`row_max` and :func:`top_candidates`,
therefore take every chunk's maximum with ``amax`` and search only the chunks that can hold the answer,
which gives the same values (and, for :func:`row_max`, the same columns) as torch's reductions.
:func:`log_softmax_` saves a (rows, vocab) tensor per step where the caller owns the logits.
"""

from __future__ import annotations

import torch
from torch import Tensor

CHUNK = 512  # columns per chunk: small enough to search a few cheaply, large enough for amax to stream
# Below this many scores in all (rows x columns), torch's max(dim) is as fast as the chunked search.
_ROW_MAX_MIN_SCORES = 2**18


def row_max(scores: Tensor, *, chunk: int = CHUNK) -> tuple[Tensor, Tensor]:
    """Each row's maximum and its column: ``scores.max(dim=1)``, the same values and the same (first)
    column among equal maxima, faster for many wide rows.

    The first chunk whose maximum is the row's maximum holds the row's first maximal column; only that
    chunk is searched, plus the ragged tail that fills no whole chunk (which wins only when strictly
    greater, since it comes last). A row of NaN or of -inf everywhere gives what ``max(dim=1)`` gives.

    Shapes: scores (rows, width) -> values (rows,), columns (rows,) long.
    """
    rows, width = scores.shape
    chunks = width // chunk
    if chunks < 4 or scores.numel() < _ROW_MAX_MIN_SCORES or not scores.is_contiguous():
        return scores.max(dim=1)
    body = scores[:, : chunks * chunk].view(rows, chunks, chunk)
    values, best_chunk = body.amax(dim=2).max(dim=1)  # (rows,) each: the first chunk holding the maximum
    inside = body.gather(1, best_chunk[:, None, None].expand(-1, 1, chunk)).view(rows, chunk).max(dim=1)
    columns = best_chunk * chunk + inside.indices
    if width > chunks * chunk:
        tail_values, tail_columns = scores[:, chunks * chunk :].max(dim=1)
        later = tail_values > values  # NaN in the body stays: a comparison with NaN is False
        values = torch.where(later, tail_values, values)
        columns = torch.where(later, tail_columns + chunks * chunk, columns)
    return values, columns


def top_candidates(candidates: Tensor, count: int, *, chunk: int = CHUNK) -> tuple[Tensor, Tensor]:
    """``candidates.topk(count, dim=1)`` (values best first, and their columns) for wide rows, faster.

    A row's best ``count`` values lie in the ``count`` chunks (of ``chunk`` columns) with the highest
    maxima: a value outside them is beaten by at least ``count`` chunk maxima. So one pass takes every
    chunk's maximum and only the best chunks (plus the ragged tail) are searched. Narrow rows go
    straight to ``torch.topk``. Among equal values the columns may differ from ``torch.topk``'s choice
    (which torch leaves unspecified too); the values are the same.

    Shapes: candidates (rows, width) -> values (rows, count), columns (rows, count) long.
    """
    rows, width = candidates.shape
    chunks = width // chunk
    if chunks < 4 * count:
        return candidates.topk(count, dim=1)
    body = candidates[:, : chunks * chunk].view(rows, chunks, chunk)
    best_chunks = body.amax(dim=2).topk(count, dim=1).indices  # (rows, count)
    picked = body.gather(1, best_chunks[:, :, None].expand(-1, -1, chunk)).view(rows, count * chunk)
    offsets = torch.arange(chunk, device=candidates.device)
    columns = (best_chunks[:, :, None] * chunk + offsets).view(rows, count * chunk)
    if width > chunks * chunk:  # the tail that fills no whole chunk is always searched
        picked = torch.cat([picked, candidates[:, chunks * chunk :]], dim=1)
        tail = torch.arange(chunks * chunk, width, device=candidates.device).expand(rows, -1)
        columns = torch.cat([columns, tail], dim=1)
    values, where = picked.topk(count, dim=1)
    return values, columns.gather(1, where)


def log_softmax_(logits: Tensor) -> Tensor:
    """``torch.log_softmax(logits, dim=-1)`` written into ``logits`` and returned: the same numbers (the
    same kernel), without a second (rows, vocab) tensor per step. For logits the caller owns and reads
    no more (a step's fresh output). Shapes: (..., vocab) -> the same tensor."""
    if not logits.is_contiguous():
        return torch.log_softmax(logits, dim=-1)
    return torch._log_softmax(logits, -1, False, out=logits)
