"""Positional encodings against the paper's closed formula (section 3.5), evaluated with Python's math."""

from __future__ import annotations

import math

import pytest
import torch

from qkv.nn import LearnedPositions, SinusoidalPositions, sinusoidal_table
from tests.reference import sinusoid, sinusoidal_formula

# float64 table vs float64 formula: they differ only in how 10000^(2i/d) and the angle are rounded,
# ~1e-16 relative on angles up to ~1e4, i.e. ~1e-12 absolute after sin/cos.
FLOAT64_ATOL = 1e-11
# float32 table: rounding a value in [-1, 1] to float32 costs at most 6e-8.
FLOAT32_ATOL = 1e-7


def test_first_entries_by_hand() -> None:
    table = sinusoidal_table(2, 4, dtype=torch.float64)
    # pos 0: sin(0)=0, cos(0)=1 for every pair. pos 1: sin(1), cos(1), sin(1/100), cos(1/100) (10000^(2/4)=100).
    assert table[0].tolist() == [0.0, 1.0, 0.0, 1.0]
    torch.testing.assert_close(
        table[1],
        torch.tensor([math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)], dtype=torch.float64),
        atol=FLOAT64_ATOL,
        rtol=0,
    )


@pytest.mark.parametrize("d_model", [8, 7, 1, 2])
@pytest.mark.parametrize("offset", [0, 13])
def test_table_equals_formula(d_model: int, offset: int) -> None:
    expected = sinusoidal_formula(20, d_model, offset)
    table64 = sinusoidal_table(20, d_model, offset=offset, dtype=torch.float64)
    assert table64.shape == (20, d_model)
    torch.testing.assert_close(table64, expected, atol=FLOAT64_ATOL, rtol=0)
    table32 = sinusoidal_table(20, d_model, offset=offset)
    assert table32.dtype == torch.float32
    torch.testing.assert_close(table32.double(), expected, atol=FLOAT32_ATOL, rtol=0)


def test_large_positions_keep_their_precision() -> None:
    # Computed in float64 before the cast: position 10^6 is still right to float32 rounding.
    table32 = sinusoidal_table(3, 16, offset=1_000_000)
    torch.testing.assert_close(
        table32.double(), sinusoidal_formula(3, 16, 1_000_000), atol=FLOAT32_ATOL, rtol=0
    )


def test_module_within_and_beyond_its_table() -> None:
    positions = SinusoidalPositions(6, max_positions=16)
    assert list(positions.parameters()) == []
    assert "table" not in positions.state_dict()  # a function of the config, not stored in checkpoints
    for length, offset in [(16, 0), (4, 3), (1, 15), (5, 14), (3, 40)]:  # the last two pass the table's end
        out = positions(length, offset)
        assert out.shape == (length, 6) and out.dtype == torch.float32
        torch.testing.assert_close(
            out.double(), sinusoidal_formula(length, 6, offset), atol=FLOAT32_ATOL, rtol=0
        )


def test_module_odd_d_model_single_position() -> None:
    out = SinusoidalPositions(5, max_positions=4)(1, offset=9)
    expected = torch.tensor([[sinusoid(9, dim, 5) for dim in range(5)]], dtype=torch.float64)
    torch.testing.assert_close(out.double(), expected, atol=FLOAT32_ATOL, rtol=0)


def test_learned_positions_are_rows_of_the_weight() -> None:
    positions = LearnedPositions(4, max_positions=8)
    out = positions(3, offset=5)
    assert out.shape == (3, 4)
    assert torch.equal(out, positions.weight.detach()[5:8])


@pytest.mark.parametrize(("length", "offset"), [(9, 0), (2, 7), (1, 8)])
def test_learned_positions_beyond_max_raise(length: int, offset: int) -> None:
    positions = LearnedPositions(4, max_positions=8)
    with pytest.raises(ValueError, match=r"exceeds the 8 learned positions.*truncate"):
        positions(length, offset)


def rotation(k: int, d_model: int) -> torch.Tensor:
    """The matrix that moves a sinusoidal encoding k positions on, from the angle-sum formulas:

        sin((p + k) w) =  cos(k w) sin(p w) + sin(k w) cos(p w)
        cos((p + k) w) = -sin(k w) sin(p w) + cos(k w) cos(p w)

    one 2x2 rotation by k w per frequency w = 1 / 10000^(2i / d_model), evaluated with math; it does not
    depend on p. Shapes: -> (d_model, d_model), float64, for even d_model.
    """
    matrix = torch.zeros(d_model, d_model, dtype=torch.float64)
    for i in range(d_model // 2):
        angle = k / 10000 ** (2 * i / d_model)
        c, s = math.cos(angle), math.sin(angle)
        matrix[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = torch.tensor([[c, s], [-s, c]], dtype=torch.float64)
    return matrix


@pytest.mark.parametrize("k", [1, 3, 17])
def test_a_shift_by_k_positions_is_one_fixed_rotation(k: int) -> None:
    """PE(pos + k) = M_k PE(pos) for every pos, with M_k block-diagonal 2x2 rotations (section 3.5: "for any
    fixed offset k, PE(pos+k) can be represented as a linear function of PE(pos)")."""
    d_model, length = 8, 1000  # frequencies 1, 1/10, 1/100, 1/1000: the slowest turns 1 radian in 1000
    table = sinusoidal_table(length + k, d_model, dtype=torch.float64)
    m = rotation(k, d_model)
    torch.testing.assert_close(table[k:], table[:length] @ m.T, atol=FLOAT64_ATOL, rtol=0)
    # The map is a rotation: it keeps lengths (every encoding has norm sqrt(d_model / 2)).
    torch.testing.assert_close(m @ m.T, torch.eye(d_model, dtype=torch.float64), atol=1e-12, rtol=0)
    # And it is the only linear map that does this: fitted by least squares over the positions, it is M_k.
    fitted = torch.linalg.lstsq(table[:length], table[k:]).solution.T
    torch.testing.assert_close(fitted, m, atol=1e-6, rtol=0)
