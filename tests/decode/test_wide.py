"""Reductions over wide rows (qkv.decode.wide) against torch's own: max(dim) and topk give the
reference values and columns; the in-place log-softmax equals torch.log_softmax bit for bit."""

from __future__ import annotations

import pytest
import torch

from qkv.decode.wide import log_softmax_, row_max, top_candidates


def _hard_rows(rows: int, width: int, seed: int) -> torch.Tensor:
    """Random rows plus the cases a search meets: ties, banned (-inf) rows, a maximum in the ragged tail,
    a maximum in the first and in the last column of a chunk, and NaN from a broken model."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(rows, width, generator=generator)
    scores[1] = torch.randint(0, 3, (width,), generator=generator).float()  # many equal maxima
    scores[2] = float("-inf")  # every token banned
    scores[3, -1] = 100.0  # the tail (or the last column) holds the maximum
    scores[4, 511] = 50.0  # the last column of the first chunk ...
    scores[4, 512] = 50.0  # ... and the first of the next: the first one wins
    scores[5, width // 3] = float("nan")  # NaN wins in max(dim), wherever it is
    scores[5, -1] = 1e9
    scores[6, width // 2 :] = 7.0  # equal maxima across many chunks and the tail
    return scores


@pytest.mark.parametrize(("rows", "width"), [(32, 65001), (64, 8192), (600, 8000), (8, 65001), (8, 1000)])
def test_row_max_equals_torch_max(rows: int, width: int) -> None:
    """The same values and the same (first) columns as max(dim=1), on the chunked path (the first three
    shapes) and on the plain one (few scores, narrow rows)."""
    scores = _hard_rows(rows, width, seed=rows + width)
    values, columns = row_max(scores)
    expected = scores.max(dim=1)
    torch.testing.assert_close(values, expected.values, atol=0, rtol=0, equal_nan=True)
    assert columns.tolist() == expected.indices.tolist()


def test_row_max_reads_a_view_of_rows() -> None:
    """A non-contiguous block (every other row) gives max(dim=1)'s answer too."""
    scores = _hard_rows(64, 65001, seed=3)[::2]
    values, columns = row_max(scores)
    assert columns.tolist() == scores.max(dim=1).indices.tolist()
    torch.testing.assert_close(values, scores.max(dim=1).values, atol=0, rtol=0, equal_nan=True)


def test_log_softmax_in_place_equals_torch() -> None:
    """Bit-identical to torch.log_softmax, written into the tensor it was given (no new tensor); a
    non-contiguous view gets a new tensor with the same numbers and is left unchanged."""
    logits = 4 * torch.randn(40, 65001, generator=torch.Generator().manual_seed(0))
    expected = torch.log_softmax(logits, dim=-1)
    given = logits.clone()
    out = log_softmax_(given)
    assert out.data_ptr() == given.data_ptr()
    assert torch.equal(out, expected)
    view = logits.t()
    before = view.clone()
    assert torch.equal(log_softmax_(view), torch.log_softmax(before, dim=-1))
    assert torch.equal(view, before)


@pytest.mark.parametrize("width", [4 * 512 * 8, 4 * 512 * 8 + 300, 100])
def test_top_candidates_equal_torch_topk(width: int) -> None:
    """The chunked search returns topk's values, best first, and columns that hold them; rows with ties,
    with -inf everywhere but a few columns (beam search's first step), and a ragged tail."""
    generator = torch.Generator().manual_seed(width)
    candidates = torch.randn(6, width, generator=generator)
    candidates[1] = torch.randint(0, 5, (width,), generator=generator).float()  # many ties
    candidates[2] = float("-inf")
    candidates[2, [3, width - 1, width // 2]] = torch.tensor([1.0, 2.0, 3.0])  # best value in the tail
    candidates[3, -1] = 100.0  # the tail holds the maximum
    for count in (1, 8):
        values, columns = top_candidates(candidates, count)
        expected = candidates.topk(count, dim=1).values
        torch.testing.assert_close(values, expected, atol=0, rtol=0)
        torch.testing.assert_close(candidates.gather(1, columns), values, atol=0, rtol=0)
        assert all(len(set(row)) == count for row in columns.tolist())  # distinct columns
