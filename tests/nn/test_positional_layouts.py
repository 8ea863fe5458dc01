"""The two sinusoid layouts: the paper's interleaving (qkv's default) and Marian's halves, against Hugging Face's
``MarianSinusoidalPositionalEmbedding`` and a hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from qkv.config import ConfigError, ModelConfig
from qkv.models.seq2seq import Transformer
from qkv.nn import sinusoidal_table
from qkv.nn.positional import SinusoidalPositions

# Hugging Face builds its table with numpy in float64 and rounds it to float32, as qkv does: the two differ
# by the float32 rounding of values in [-1, 1] (6e-8), plus numpy's and torch's pow disagreeing in the
# last float64 bit, amplified by positions up to ~100 (angles ~1e2, 1e-14).
HF_ATOL = 1e-7


def test_halves_by_hand() -> None:
    table = sinusoidal_table(2, 4, layout="halves", dtype=torch.float64)
    # pos 1: sin(1), sin(1/100), then cos(1), cos(1/100): the interleaved table's [0, 2, 1, 3].
    assert table[0].tolist() == [0.0, 0.0, 1.0, 1.0]
    expected = [math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)]
    torch.testing.assert_close(table[1], torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("d_model", [4, 16, 7])
@pytest.mark.parametrize("offset", [0, 30])
def test_halves_match_hugging_face_marian(d_model: int, offset: int) -> None:
    modeling = pytest.importorskip("transformers.models.marian.modeling_marian")
    hf = modeling.MarianSinusoidalPositionalEmbedding(128, d_model)
    with torch.no_grad():
        hf.weight.copy_(hf.create_weight())
        expected = hf(torch.Size([1, 50]), offset)  # positions offset .. offset + 49
    ours = SinusoidalPositions(d_model, 128, layout="halves")
    torch.testing.assert_close(ours(50, offset), expected, atol=HF_ATOL, rtol=0)
    # Past the precomputed table it is computed, in the same layout.
    torch.testing.assert_close(
        SinusoidalPositions(d_model, 8, layout="halves")(50, offset), expected, atol=HF_ATOL, rtol=0
    )


def test_halves_is_the_interleaved_table_permuted() -> None:
    d_model = 10
    perm = torch.cat([torch.arange(0, d_model, 2), torch.arange(1, d_model, 2)])
    interleaved = sinusoidal_table(40, d_model, dtype=torch.float64)
    assert torch.equal(
        sinusoidal_table(40, d_model, layout="halves", dtype=torch.float64), interleaved[:, perm]
    )


def test_the_config_names_the_layout() -> None:
    model = Transformer(
        ModelConfig(
            12, 12, d_model=8, heads=2, d_ff=16, encoder_layers=1, decoder_layers=1, sinusoid_layout="halves"
        )
    )
    assert isinstance(model.positions, SinusoidalPositions)
    assert torch.equal(model.positions(5), sinusoidal_table(5, 8, layout="halves"))
    assert ModelConfig(12, 12).sinusoid_layout == "interleaved"  # the paper's, the default
    with pytest.raises(ConfigError, match="sinusoid_layout"):
        ModelConfig(12, 12, sinusoid_layout="split")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="sinusoid_layout"):
        ModelConfig.from_dict({"src_vocab_size": 12, "tgt_vocab_size": 12, "sinusoid_layout": 3})
