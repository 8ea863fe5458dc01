"""The convenience entry: id lists in any order and length, empty ones, over-long ones, model mode."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from qkv.decode import Lengths, Method, SearchConfig, decode, pad_batch, translate_ids
from qkv.decode.beam import beam_search
from qkv.decode.greedy import greedy_search
from qkv.decode.step import CachedStepper
from qkv.models.seq2seq import Transformer
from tests.decode.conftest import random_model


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_results_come_back_in_input_order(
    model: Transformer, sources: list[list[int]], method: Method
) -> None:
    """Sorted into batches of 2 by length, padded; each result equals that sentence decoded alone."""
    found = decode(model, sources, SearchConfig(method=method, beam=3), batch_size=2)
    with torch.inference_mode():
        for source, hyps in zip(sources, found, strict=True):
            src = pad_batch([source], 0)
            if method == "greedy":
                alone = greedy_search(CachedStepper(model), src)[0].tokens
            else:
                alone = beam_search(CachedStepper(model), src, beam=3)[0][0].tokens
            assert hyps[0].tokens == alone


def test_empty_sources_give_empty_outputs_without_running_the_model(model: Transformer) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model ran")

    model.encode = fail  # type: ignore[method-assign, assignment]
    assert translate_ids(model, [[], [2], []]) == [[], [], []]
    assert decode(model, [[]], SearchConfig(method="greedy"))[0][0].tokens == []


def test_empty_sources_beside_real_ones(model: Transformer, sources: list[list[int]]) -> None:
    mixed = [[], sources[0], [2], sources[1]]
    greedy = SearchConfig(method="greedy")
    out = translate_ids(model, mixed, greedy)
    assert out[0] == [] and out[2] == []
    assert out[1] == translate_ids(model, [sources[0]], greedy)[0]
    assert out[3] == translate_ids(model, [sources[1]], greedy)[0]
    assert translate_ids(model, []) == []


def test_n_best_and_sampling(model: Transformer, sources: list[list[int]]) -> None:
    nbest = decode(model, sources[:2], SearchConfig(method="beam", beam=4, n_best=3))
    assert [len(h) for h in nbest] == [3, 3]
    once = decode(model, sources, SearchConfig(method="sample", seed=3, top_k=5))
    again = decode(model, sources, SearchConfig(method="sample", seed=3, top_k=5))
    assert [h[0].tokens for h in once] == [h[0].tokens for h in again]


def test_over_long_source_is_truncated_with_a_warning() -> None:
    model = random_model()
    too_long = [5] * (model.config.max_positions + 20) + [2]
    with pytest.warns(UserWarning, match="truncated"):
        out = decode(model, [too_long], SearchConfig(method="greedy", lengths=Lengths(max_len=4)))
    assert len(out[0][0].tokens) <= 4


def test_decodes_in_eval_mode_and_restores_the_mode() -> None:
    model = random_model()
    expected = translate_ids(model, [[5, 6, 7, 2]], SearchConfig(method="greedy"))
    dropout_model = Transformer(dataclasses.replace(model.config, dropout=0.5))
    dropout_model.load_state_dict(model.state_dict())
    dropout_model.train()
    assert translate_ids(dropout_model, [[5, 6, 7, 2]], SearchConfig(method="greedy")) == expected
    assert dropout_model.training


def test_unknown_method_is_an_error() -> None:
    with pytest.raises(ValueError, match="method='nucleus'"):
        SearchConfig(method="nucleus")  # type: ignore[arg-type]
