"""Source preparation, shared by the autoregressive and the non-autoregressive decoders: padding, empty
sources, truncation, the longest-first batches, and warnings that name the caller's line."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from qkv.config import NATConfig, preset
from qkv.decode import decode, pad_batch, prepare_sources
from qkv.decode import nat as nat_decode
from qkv.decode.sources import SourceBatch
from qkv.models.nat import NATransformer
from tests.decode.conftest import random_model

EOS = 2


def test_pad_batch() -> None:
    assert pad_batch([[5, 6, 2], [7, 2], []], 0).tolist() == [[5, 6, 2], [7, 2, 0], [0, 0, 0]]
    assert pad_batch([], 0).shape == (0, 0)


def test_empty_sources_are_in_no_batch() -> None:
    batches = prepare_sources([[], [EOS], [5, EOS], []], eos_id=EOS, max_positions=8, batch_size=4)
    assert batches == [SourceBatch([2], [[5, EOS]])]
    assert prepare_sources([[], [EOS]], eos_id=EOS, max_positions=8, batch_size=4) == []


def test_batches_hold_the_longest_first_ties_in_input_order() -> None:
    """Lengths 3, 5, 3, 7, 5 in batches of 2: by hand, input indices 3 | 1, 4 | 0, 2."""
    sources = [[5] * (n - 1) + [EOS] for n in (3, 5, 3, 7, 5)]
    batches = prepare_sources(sources, eos_id=EOS, max_positions=8, batch_size=2)
    assert [b.indices for b in batches] == [[3, 1], [4, 0], [2]]
    assert [b.ids for b in batches] == [[sources[3], sources[1]], [sources[4], sources[0]], [sources[2]]]
    assert batches[1].padded(0).tolist() == [[5, 5, 5, 5, EOS], [5, 5, EOS, 0, 0]]


def prepare_like_a_decoder(sources: Sequence[Sequence[int]]) -> list[SourceBatch]:
    """Stands for decode(): the warnings should name the line that called it."""
    return prepare_sources(sources, eos_id=EOS, max_positions=4, batch_size=8)


def test_over_long_sources_are_cut_keeping_their_final_eos_with_a_warning() -> None:
    with pytest.warns(UserWarning) as caught:
        (batch,) = prepare_like_a_decoder([[5, 6, 7, 8, 9, EOS], [5, 6, 7, 8, 9], [5, 6, 7, EOS]])
    assert batch.indices == [0, 1, 2]
    assert batch.ids == [[5, 6, 7, EOS], [5, 6, 7, 8], [5, 6, 7, EOS]]  # no </s>: the first 4 ids
    assert [str(w.message) for w in caught] == [
        "source 0 has 6 tokens, more than the model's 4 positions; truncated to 4",
        "source 1 has 5 tokens, more than the model's 4 positions; truncated to 4",
    ]
    assert {w.filename for w in caught} == {__file__}


def test_batch_size_below_one_is_an_error() -> None:
    with pytest.raises(ValueError, match="batch_size=0 must be at least 1"):
        prepare_sources([[5, EOS]], eos_id=EOS, max_positions=8, batch_size=0)


def test_both_decoders_truncate_alike_and_warn_at_their_caller() -> None:
    """decode() and the NAT's translate_ids() prepare sources with prepare_sources: the same warning,
    naming the line of this file that called them."""
    at = random_model()
    nat_config = NATConfig.from_dict(preset("tiny", 20, dropout=0.0).to_dict())
    nat = NATransformer(nat_config).eval()  # type: ignore[arg-type]
    too_long = [5] * (at.config.max_positions + 3) + [EOS]
    assert nat.config.max_positions == at.config.max_positions
    with pytest.warns(UserWarning) as caught:
        decode(at, [too_long])
        nat_decode.translate_ids(nat, [too_long])
    assert len(caught) == 2 and str(caught[0].message) == str(caught[1].message)
    assert {w.filename for w in caught} == {__file__}
    with torch.inference_mode():
        assert [h.tokens for (h,) in nat_decode.translate_ids(nat, [[], [EOS]])] == [[], []]
