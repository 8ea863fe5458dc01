"""The fast whole-sequence passes equal the reference modules: the encoder, the NAT's decoder, the causal
teacher-forced decoder; NAT decoding and teacher rescoring give the same results on both paths."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from qkv.config import NATConfig, preset
from qkv.decode.nat import NATIteration, mask_predict, single_pass, teacher_scores
from qkv.infer import products, stacks
from qkv.infer.products import int8_available
from qkv.infer.snapshot import _SNAPSHOTS
from qkv.models.nat import NATransformer
from qkv.models.seq2seq import Transformer
from qkv.nn.layers import cross_queries
from tests.reference import randomize_norms_and_biases

VOCAB, PAD, BOS, EOS = 29, 0, 1, 2
ATOL = 1e-5  # the same float32 products, fused differently: equal up to rounding

VARIANTS = {
    "post-LN": dict(norm_first=False),
    "pre-LN": dict(norm_first=True),
    "untied output": dict(tie_output=False, share_embeddings=False),
    "gelu": dict(activation="gelu"),
    "learned positions": dict(positions="learned"),
}


@pytest.fixture(autouse=True, params=[True, False], ids=["intel products", "other products"])
def _cpu_policy(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test here runs with both of :func:`qkv.nn.products.cpu_linear`'s policies, whatever the CPU."""
    monkeypatch.setattr(products, "mkl_is_fast_here", lambda: request.param)
    _SNAPSHOTS.clear()


def _nat(**changes: object) -> NATransformer:
    rng = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    config = dataclasses.replace(preset("tiny", VOCAB, dropout=0.0), **changes)  # type: ignore[arg-type]
    model = NATransformer(NATConfig.from_dict(config.to_dict()))  # type: ignore[arg-type]
    randomize_norms_and_biases(model, rng)
    return model.eval()


def _at(**changes: object) -> Transformer:
    rng = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    config = dataclasses.replace(preset("tiny", VOCAB, dropout=0.0), **changes)  # type: ignore[arg-type]
    model = Transformer(config)
    randomize_norms_and_biases(model, rng)
    return model.eval()


def _sources() -> torch.Tensor:
    """Four padded sources; row 2 holds no real token at all (its attention must give zeros)."""
    src = torch.tensor(
        [
            [5, 6, 7, 8, 9, EOS],
            [10, 11, EOS, PAD, PAD, PAD],
            [PAD, PAD, PAD, PAD, PAD, PAD],
            [12, EOS, PAD, PAD, PAD, PAD],
        ]
    )
    return src


@pytest.mark.parametrize("changes", VARIANTS.values(), ids=list(VARIANTS))
@torch.inference_mode()
def test_encoder_equals_the_reference(changes: dict[str, object]) -> None:
    model = _nat(**changes)
    src = _sources()
    fast, reference = stacks.passes(model).encode(src), model.encode(src)
    torch.testing.assert_close(fast.memory, reference.memory, atol=ATOL, rtol=0)
    assert torch.equal(fast.may_attend, reference.may_attend)
    assert not fast.memory.isnan().any()


@pytest.mark.parametrize("changes", VARIANTS.values(), ids=list(VARIANTS))
@torch.inference_mode()
def test_nat_decoder_equals_the_reference(changes: dict[str, object]) -> None:
    """Padded targets with [MASK]s and known tokens; every position's logits, padding included."""
    model = _nat(**changes)
    src = _sources()[[0, 1, 3]]
    encoded = model.encode(src)
    tgt = torch.tensor([[1, 7, 1, 1, 9], [1, 1, 1, PAD, PAD], [4, PAD, PAD, PAD, PAD]])
    passes = stacks.passes(model)
    hidden = passes.decode_hidden(
        tgt, passes.cross_keys_values(encoded.memory), encoded.may_attend, causal=False
    )
    torch.testing.assert_close(passes.logits(hidden), model.decode(tgt, encoded).logits, atol=ATOL, rtol=0)


@pytest.mark.parametrize("changes", VARIANTS.values(), ids=list(VARIANTS))
@torch.inference_mode()
def test_first_pass_prefix_equals_the_reference(changes: dict[str, object]) -> None:
    """[MASK] everywhere, no padding: the first layer's kept self-attention output and cross-attention
    queries give the reference's logits, for several sentences at once, for each length, and again when
    the kept prefix is reused (nothing writes into it)."""
    model = _nat(**changes)
    mask = model.config.mask_id
    src = _sources()[[0, 1, 3]]
    encoded = model.encode(src)
    passes = stacks.passes(model)
    cross = passes.cross_keys_values(encoded.memory)
    for length in (4, 1, 4, 6):
        tgt = torch.full((3, length), mask)
        hidden = passes.decode_hidden(tgt, cross, encoded.may_attend, causal=False, every_token=mask)
        expected = model.decode(tgt, encoded).logits
        torch.testing.assert_close(passes.logits(hidden), expected, atol=ATOL, rtol=0)
    assert sorted(passes._prefixes) == [(mask, 1), (mask, 4), (mask, 6)]
    # With padding the prefix does not apply (the padded rows attend to fewer keys): the full pass runs.
    tgt = torch.tensor([[mask, mask, mask], [mask, mask, PAD], [mask, mask, mask]])
    hidden = passes.decode_hidden(tgt, cross, encoded.may_attend, causal=False, every_token=mask)
    torch.testing.assert_close(passes.logits(hidden), model.decode(tgt, encoded).logits, atol=ATOL, rtol=0)
    assert (mask, 3) not in passes._prefixes


@pytest.mark.parametrize("changes", VARIANTS.values(), ids=list(VARIANTS))
@torch.inference_mode()
def test_causal_pass_equals_teacher_forcing(changes: dict[str, object]) -> None:
    model = _at(**changes)
    src = _sources()[[0, 1, 3]]
    tgt_in = torch.tensor([[BOS, 5, 6, 7], [BOS, 8, PAD, PAD], [BOS, PAD, PAD, PAD]])
    passes = stacks.passes(model)
    encoded = passes.encode(src)
    hidden = passes.decode_hidden(
        tgt_in, passes.cross_keys_values(encoded.memory), encoded.may_attend, causal=True
    )
    torch.testing.assert_close(passes.logits(hidden), model(src, tgt_in), atol=ATOL, rtol=0)


@torch.inference_mode()
def test_causal_pass_does_not_look_ahead() -> None:
    """Changing a later target token leaves every earlier position's output unchanged; without the
    triangle (the NAT's pass) it does not."""
    model = _at()
    passes = stacks.passes(model)
    encoded = passes.encode(_sources()[:1])
    cross = passes.cross_keys_values(encoded.memory)
    a = torch.tensor([[BOS, 5, 6, 7, 8]])
    b = a.clone()
    b[0, 3] = 20
    for causal in (True, False):
        ha = passes.decode_hidden(a, cross, encoded.may_attend, causal=causal)
        hb = passes.decode_hidden(b, cross, encoded.may_attend, causal=causal)
        assert torch.equal(ha[0, :3], hb[0, :3]) is causal
        assert not torch.allclose(ha[0, 3:], hb[0, 3:])


@pytest.mark.parametrize("iterations, length_beam", [(1, 1), (1, 3), (4, 1), (4, 3), (10, 2)])
@torch.inference_mode()
def test_nat_decoding_gives_the_reference_hypotheses(iterations: int, length_beam: int) -> None:
    """Tokens equal, scores equal up to rounding, on a batch with padding, for single pass and
    mask-predict (the fast path projects only the [MASK] positions to the vocabulary)."""
    model = _nat()
    src = _sources()[[0, 1, 3]]
    fast = mask_predict(model, src, iterations=iterations, length_beam=length_beam)
    reference = mask_predict(model, src, iterations=iterations, length_beam=length_beam, fast=False)
    if iterations == 1:
        assert single_pass(model, src, length_beam=length_beam) == fast
        assert single_pass(model, src, length_beam=length_beam, fast=False) == reference
    for f_hyps, r_hyps in zip(fast, reference, strict=True):
        assert [h.tokens for h in f_hyps] == [h.tokens for h in r_hyps]
        for f, r in zip(f_hyps, r_hyps, strict=True):
            assert abs(f.log_prob - r.log_prob) < 1e-4 and abs(f.score - r.score) < 1e-5


@pytest.mark.parametrize("iterations, length_beam", [(1, 1), (1, 3), (4, 1), (4, 3)])
@pytest.mark.parametrize("rows", [[0], [1, 1], [0, 0, 0]], ids=["one sentence", "two", "three"])
@torch.inference_mode()
def test_unpadded_batches_give_the_reference_hypotheses(
    rows: list[int], iterations: int, length_beam: int
) -> None:
    """Sources without padding take the shortcuts of the fast path (lengths read off the logits and the
    shape, the first pass's kept prefix): the same candidates and lengths as the modules."""
    model = _nat()
    src = _sources()[rows][:, : 6 if rows[0] == 0 else 3]  # row 1 without its padding: [10, 11, EOS]
    assert bool((src != PAD).all())
    fast = mask_predict(model, src, iterations=iterations, length_beam=length_beam)
    reference = mask_predict(model, src, iterations=iterations, length_beam=length_beam, fast=False)
    if iterations == 1:
        assert single_pass(model, src, length_beam=length_beam) == fast
    for f_hyps, r_hyps in zip(fast, reference, strict=True):
        assert [h.tokens for h in f_hyps] == [h.tokens for h in r_hyps]
        for f, r in zip(f_hyps, r_hyps, strict=True):
            assert abs(f.log_prob - r.log_prob) < 1e-4 and abs(f.score - r.score) < 1e-5


@torch.inference_mode()
def test_teacher_scores_are_the_same_on_both_paths() -> None:
    """Two candidates of one source and one of another, as a length beam hands them over."""
    teacher = _at()
    srcs = [[5, 6, EOS], [5, 6, EOS], [7, 8, 9, 10, EOS]]
    outs = [[11, 12, 13], [11, 12], [14]]
    fast, reference = teacher_scores(teacher, srcs, outs), teacher_scores(teacher, srcs, outs, fast=False)
    assert fast == pytest.approx(reference, abs=1e-5)
    assert fast[0] != fast[1]


def test_fast_path_is_used_only_where_it_may() -> None:
    """With gradients wanted, or in training mode, NAT decoding runs the modules (gradients flow)."""
    model = _nat()
    src = _sources()[[0]]
    calls = []
    handle = model.decoder[0].register_forward_hook(lambda *_: calls.append(1))
    try:
        with torch.inference_mode():
            single_pass(model, src)
        assert calls == []
        with torch.no_grad():
            single_pass(model, src, fast=False)
        assert calls == [1]
        single_pass(model, src)  # gradients enabled: the reference modules
        assert calls == [1, 1]
    finally:
        handle.remove()


def test_snapshot_follows_weight_changes() -> None:
    """An in-place update and a replaced submodule both give a fresh snapshot with the new weights."""
    model = _nat()
    src = _sources()[[0]]
    with torch.inference_mode():
        first = stacks.passes(model)
        assert stacks.passes(model) is first
    with torch.no_grad():
        model.encoder[0].ffn.fc_in.weight.mul_(1.5)
    with torch.inference_mode():
        second = stacks.passes(model)
        assert second is not first
        torch.testing.assert_close(second.encode(src).memory, model.encode(src).memory, atol=ATOL, rtol=0)
    model.encoder[1].ffn.fc_out = nn.Linear(model.config.d_ff, model.config.d_model)
    with torch.inference_mode():
        third = stacks.passes(model)
        assert third is not second
        torch.testing.assert_close(third.encode(src).memory, model.encode(src).memory, atol=ATOL, rtol=0)


def test_an_encoder_layer_has_no_cross_attention() -> None:
    model = _nat()
    passes = stacks.passes(model)
    with pytest.raises(TypeError, match="no cross-attention"):
        cross_queries(passes.encoder[0], torch.zeros(1, 2, model.config.d_model))


needs_int8 = pytest.mark.skipif(not int8_available(), reason="no fbgemm/x86 int8 kernels in this torch build")


@needs_int8
@torch.inference_mode()
def test_int8_passes_approximate_the_float32_reference() -> None:
    """int8 products (weights per row, activations per call): within a few percent of the reference's
    scale, everywhere; the decoding and the teacher's scores run and stay close."""
    model = _nat()
    src = _sources()[[0, 1, 3]]
    passes, reference = stacks.passes(model, int8=True), model.encode(src)
    assert passes is not stacks.passes(model)  # a snapshot of its own
    memory = passes.encode(src).memory
    scale = reference.memory.abs().mean()
    assert (memory - reference.memory).abs().mean() < 0.05 * scale
    tgt = torch.tensor([[1, 7, 1, 1, 9], [1, 1, 1, PAD, PAD], [4, PAD, PAD, PAD, PAD]])
    hidden = passes.decode_hidden(tgt, passes.cross_keys_values(memory), reference.may_attend, causal=False)
    logits, expected = passes.logits(hidden), model.decode(tgt, reference).logits
    assert (logits - expected).abs().mean() < 0.05 * expected.abs().mean()
    for adaptive in (False, True):  # adaptive: later passes over the candidates still changing only
        hyps = mask_predict(model, src, iterations=5, length_beam=2, int8=True, adaptive=adaptive)
        assert [len(h) for h in hyps] == [2, 2, 2]
        assert all(3 <= t < VOCAB for h in hyps for c in h for t in c.tokens)  # no special token
    teacher = _at()
    srcs, outs = [[5, 6, EOS], [7, 8, 9, 10, EOS]], [[11, 12, 13], [14]]
    assert teacher_scores(teacher, srcs, outs, int8=True) == pytest.approx(
        teacher_scores(teacher, srcs, outs), abs=0.05
    )


@needs_int8
def test_int8_where_the_fast_passes_cannot_run_is_an_error() -> None:
    model = _nat()
    src = _sources()[[0]]
    with pytest.raises(ValueError, match="int8 decoding runs on a CPU"):
        single_pass(model, src, int8=True)  # gradients enabled
    with torch.inference_mode(), pytest.raises(ValueError, match="without attention weights"):
        trace: list[NATIteration] = []
        mask_predict(model, src, iterations=2, trace=trace, int8=True)
    with torch.inference_mode(), pytest.raises(ValueError, match="int8"):
        teacher_scores(_at(), [[5, EOS]], [[6]], fast=False, int8=True)
