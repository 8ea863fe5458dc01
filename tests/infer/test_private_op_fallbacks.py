"""The fast CPU paths use torch's private packing operators (``torch.ops.mkl._mkl_*``,
``torch.ops.mkldnn._*``) where they run, and fall back to public ones where they do not: a torch build
without them, or a release that renamed them. Here every private operator is made to fail as a missing
one does; qkv must notice, take the public products, and decode the same tokens with the same scores,
for every CPU-vendor choice, the autoregressive searches and the NAT. int8, which has no public
equivalent, is refused with a message naming why."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from qkv.config import NATConfig, preset
from qkv.decode import SearchConfig, decode
from qkv.decode.nat import translate_ids
from qkv.infer import products, stacks
from qkv.infer.snapshot import _SNAPSHOTS
from qkv.models.nat import NATransformer
from tests.decode.conftest import random_model

# The same float32 numbers through other GEMM kernels: rounding only.
SCORE_ATOL = 1e-4

PRIVATE_OPERATORS = [
    (torch.ops.mkl, "_mkl_reorder_linear_weight"),
    (torch.ops.mkl, "_mkl_linear"),
    (torch.ops.mkldnn, "_reorder_linear_weight"),
    (torch.ops.mkldnn, "_linear_pointwise"),
    (torch.ops.quantized, "linear_prepack"),
    (torch.ops.quantized, "linear_dynamic"),
]
PROBES: list[Callable[[], bool]] = [
    products.mkl_packing_available,
    products.onednn_packing_available,
    products.int8_available,
]


def _forget() -> None:
    """Drop what was learnt about the operators and every prepared model."""
    for probe in PROBES:
        probe.cache_clear()  # type: ignore[attr-defined]
    _SNAPSHOTS.clear()


@pytest.fixture
def without_private_ops(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def missing(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("No such operator (this torch build does not have it)")

    class Missing:  # an operator packet whose .default fails too
        default = staticmethod(missing)

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return missing()

    _forget()
    for namespace, name in PRIVATE_OPERATORS:
        monkeypatch.setattr(namespace, name, Missing())
    yield
    _forget()  # the real operators come back when monkeypatch undoes; nothing may remember otherwise


def _decodings(model: torch.nn.Module, sources: list[list[int]]) -> list[Any]:
    return [
        decode(model, sources, SearchConfig(method="greedy"), batch_size=4),
        decode(model, sources, SearchConfig(method="beam", beam=4, n_best=2), batch_size=4),
        decode(model, sources[:1], SearchConfig(method="beam", beam=3)),
    ]


def _assert_same(found: list[Any], expected: list[Any]) -> None:
    for got, want in zip(found, expected, strict=True):
        for got_hyps, want_hyps in zip(got, want, strict=True):
            assert [h.tokens for h in got_hyps] == [h.tokens for h in want_hyps]
            for g, w in zip(got_hyps, want_hyps, strict=True):
                assert g.score == pytest.approx(w.score, abs=SCORE_ATOL)


@pytest.mark.parametrize("intel", [True, False])
def test_decoding_without_the_private_operators_gives_the_same_outputs(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, sources: list[list[int]], intel: bool
) -> None:
    monkeypatch.setattr(products, "mkl_is_fast_here", lambda: intel)  # each vendor's choice of products
    model = random_model()
    _forget()
    with_them = _decodings(model, sources)
    if intel and products.mkl_packing_available():  # the x86 CPU build: the private products were in use
        assert stacks.step_decoder(model, 4).output.packed is not None  # type: ignore[union-attr]
    request.getfixturevalue("without_private_ops")
    assert not products.mkl_packing_available() and not products.onednn_packing_available()
    decoder = stacks.step_decoder(model, 4)
    for product in (decoder.layers[0].fc_in, decoder.output):
        assert getattr(product, "packed", None) is None  # a public product, or a packed one told to fall back
    _assert_same(_decodings(model, sources), with_them)


def test_nat_passes_without_the_private_operators_give_the_same_outputs(
    request: pytest.FixtureRequest, sources: list[list[int]]
) -> None:
    torch.manual_seed(0)
    base = preset("tiny", 20, dropout=0.0, max_positions=64).to_dict()
    model = NATransformer(NATConfig.from_dict(base)).eval()  # type: ignore[arg-type]
    _forget()
    with_them = [translate_ids(model, sources, iterations=k, length_beam=2) for k in (1, 3)]
    request.getfixturevalue("without_private_ops")
    without = [translate_ids(model, sources, iterations=k, length_beam=2) for k in (1, 3)]
    _assert_same(without, with_them)


def test_int8_without_its_kernels_is_refused_by_name(without_private_ops: None) -> None:
    assert not products.int8_available()
    with pytest.raises(RuntimeError, match="int8 inference needs torch's fbgemm/x86 quantised kernels"):
        products.product(torch.ones(4, 4), int8=True)
