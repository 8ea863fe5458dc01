"""The fast CPU decoder step equals the reference ``Transformer.decode`` step, and is used only where it may be."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from qkv.config import preset
from qkv.decode import SearchConfig, decode, pad_batch
from qkv.decode.beam import beam_search
from qkv.decode.greedy import greedy_search
from qkv.decode.step import CachedStepper
from qkv.infer import products, stacks
from qkv.infer.products import Int8Linear, SplitTransposedLinear, TransposedLinear, int8_available
from qkv.infer.snapshot import _SNAPSHOTS
from qkv.models.seq2seq import Transformer
from qkv.nn import attention
from qkv.nn.attention import scaled_dot_product
from tests.decode.conftest import random_model

# The fast step does the reference's float32 arithmetic with the same BLAS (packed weights, Q/K/V as one
# product): equal up to rounding.
ATOL = 1e-5


def _variant(**changes: object) -> Transformer:
    """The tiny preset with some config fields changed, random weights, eval mode."""
    torch.manual_seed(4)
    config = dataclasses.replace(preset("tiny", 23, dropout=0.0), **changes)  # type: ignore[arg-type]
    return Transformer(config).eval()


VARIANTS = {
    "post-LN": dict(norm_first=False),
    "pre-LN": dict(norm_first=True),
    "tied output": dict(tie_output=True, share_embeddings=True),
    "gelu": dict(activation="gelu"),
    "learned positions": dict(positions="learned"),
}


# Every kernel choice the fast step can make, whatever CPU the tests run on: the products as on an Intel
# CPU (MKL packed) or elsewhere (oneDNN, transposed at one row); attention fused or as two batched products.
KERNELS = {
    "intel products, fused attention": (True, 10**9),
    "other products, batched attention": (False, 1),
}


@pytest.fixture(params=list(KERNELS.values()), ids=list(KERNELS))
def kernels(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    mkl_fast, bmm_min_rows = request.param
    monkeypatch.setattr(products, "mkl_is_fast_here", lambda: mkl_fast)
    monkeypatch.setattr(attention, "PRODUCTS_MIN_ROWS", bmm_min_rows)
    _SNAPSHOTS.clear()  # no snapshot built under another choice


@pytest.mark.parametrize("changes", VARIANTS.values(), ids=list(VARIANTS))
def test_fast_steps_equal_reference_steps(changes: dict[str, object], kernels: None) -> None:
    """Step by step, with padded sources, a reorder with repeated rows, and a row with no source key."""
    model = _variant(**changes)
    src = pad_batch([[5, 6, 7, 2], [8, 9, 2], [2], [10] * 12 + [2]], model.config.pad_id)
    src[2, 0] = model.config.pad_id  # row 2 has no real source token: its cross-attention is empty
    fast, reference = CachedStepper(model), CachedStepper(model, fast=False)
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        fast_state, ref_state = fast.encode(src), reference.encode(src)
        tokens = torch.full((4, 1), model.config.bos_id)
        for step in range(7):
            fast_lp, fast_state = fast.step(tokens, fast_state)
            ref_lp, ref_state = reference.step(tokens, ref_state)
            torch.testing.assert_close(fast_lp, ref_lp, atol=ATOL, rtol=0)
            if step == 3:
                order = torch.tensor([3, 3, 0, 2])
                fast_state = fast_state.select(order)
                ref_state = ref_state.select(order)
            tokens = torch.randint(3, 23, (4, 1), generator=generator)
    assert fast._step_decoder is not None  # the fast path really ran
    assert reference._step_decoder is None


def test_one_snapshot_follows_each_batch_source_mask() -> None:
    """The step works out a batch's source mask once and keeps it; the next batch, with other padding
    (or none), decoded by the same snapshot, must get its own mask."""
    model = _variant()
    pad = model.config.pad_id
    batches = [
        pad_batch([[5, 6, 7, 2], [8, 2]], pad),  # padded
        pad_batch([[5, 6, 2], [9, 8, 2]], pad),  # nothing masked
        pad_batch([[5, 2], [9, 8, 7, 6, 2]], pad),  # padded the other way round
    ]
    batches[2][0, :] = pad  # and a row with no source key
    fast, reference = CachedStepper(model), CachedStepper(model, fast=False)
    with torch.inference_mode():
        for src in batches:
            fast_state, ref_state = fast.encode(src), reference.encode(src)
            tokens = torch.full((2, 1), model.config.bos_id)
            for _ in range(3):
                fast_lp, fast_state = fast.step(tokens, fast_state)
                ref_lp, ref_state = reference.step(tokens, ref_state)
                torch.testing.assert_close(fast_lp, ref_lp, atol=ATOL, rtol=0)
                tokens = ref_lp.argmax(-1, keepdim=True)
    steps = [key for key in _SNAPSHOTS[model] if key[0] == "step"]
    assert len(steps) == 1  # one step snapshot served all three batches


def test_fast_and_reference_steps_share_one_cache() -> None:
    """The two paths read and write the same KVCache, so they can take turns on one state."""
    model = _variant()
    src = pad_batch([[5, 6, 7, 2], [8, 2]], model.config.pad_id)
    fast, reference = CachedStepper(model), CachedStepper(model, fast=False)
    with torch.inference_mode():
        mixed, ref_state = fast.encode(src), reference.encode(src)
        tokens = torch.full((2, 1), model.config.bos_id)
        for step in range(6):
            stepper = fast if step % 2 else reference
            mixed_lp, mixed = stepper.step(tokens, mixed)
            ref_lp, ref_state = reference.step(tokens, ref_state)
            torch.testing.assert_close(mixed_lp, ref_lp, atol=ATOL, rtol=0)
            tokens = ref_lp.argmax(-1, keepdim=True)


@pytest.mark.parametrize("norm_first", [False, True])
def test_greedy_and_beam_outputs_equal_the_reference(
    norm_first: bool, sources: list[list[int]], kernels: None
) -> None:
    model = random_model(norm_first=norm_first)
    src = pad_batch(sources, model.config.pad_id)
    with torch.inference_mode():
        fast_greedy = greedy_search(CachedStepper(model), src)
        ref_greedy = greedy_search(CachedStepper(model, fast=False), src)
        fast_beam = beam_search(CachedStepper(model), src, beam=3)
        ref_beam = beam_search(CachedStepper(model, fast=False), src, beam=3)
    assert [h.tokens for h in fast_greedy] == [h.tokens for h in ref_greedy]
    assert [h.log_prob for h in fast_greedy] == pytest.approx([h.log_prob for h in ref_greedy], abs=1e-4)
    assert [[h.tokens for h in hs] for hs in fast_beam] == [[h.tokens for h in hs] for hs in ref_beam]


def test_the_reference_path_runs_when_gradients_or_training_are_on(
    model: Transformer, sources: list[list[int]]
) -> None:
    src = pad_batch(sources, model.config.pad_id)
    with torch.no_grad():  # no inference mode, but no gradients: fast
        stepper = CachedStepper(model)
        stepper.step(torch.full((len(sources), 1), 1), stepper.encode(src))
        assert stepper._step_decoder is not None
    stepper = CachedStepper(model)  # gradients on: the reference (the fast step has no backward)
    log_probs, _ = stepper.step(torch.full((len(sources), 1), 1), stepper.encode(src))
    assert stepper._step_decoder is None and log_probs.requires_grad
    model.train()
    try:
        with torch.no_grad():
            stepper = CachedStepper(model)
            stepper.step(torch.full((len(sources), 1), 1), stepper.encode(src))
            assert stepper._step_decoder is None  # training mode (dropout): the reference
    finally:
        model.eval()


def test_snapshot_is_reused_and_follows_weight_changes(model: Transformer, sources: list[list[int]]) -> None:
    _SNAPSHOTS.pop(model, None)
    first = stacks.step_decoder(model, 6)
    assert stacks.step_decoder(model, 6) is first
    assert stacks.step_decoder(model, 7) is not first  # packed for another number of rows
    assert stacks.step_decoder(model, 6) is first  # still kept

    src = pad_batch(sources, model.config.pad_id)
    before = decode(model, sources, SearchConfig(method="greedy"))
    with torch.no_grad():
        assert model.output_proj is not None
        model.output_proj.weight.neg_()  # each step's most likely token becomes its least likely
    assert stacks.step_decoder(model, 6) is not first  # the in-place update is seen
    after = decode(model, sources, SearchConfig(method="greedy"))
    with torch.inference_mode():
        reference = greedy_search(CachedStepper(model, fast=False), src)
    assert [h[0].tokens for h in after] == [h.tokens for h in reference]
    assert [h[0].tokens for h in after] != [h[0].tokens for h in before]


def test_one_row_on_two_threads_splits_the_products_and_equals_the_reference(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Off Intel, one row on 2 threads: each product in one block per thread (SplitTransposedLinear),
    where its outputs split evenly (the tiny preset's 23-word output does not: unsplit)."""
    monkeypatch.setattr(products, "mkl_is_fast_here", lambda: False)
    _SNAPSHOTS.clear()
    model = _variant(norm_first=False)
    src = pad_batch([[5, 6, 7, 2]], model.config.pad_id)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        decoder = stacks.step_decoder(model, 1)
        assert isinstance(decoder.layers[0].fc_in, SplitTransposedLinear)
        assert isinstance(decoder.output, TransposedLinear)
        fast, reference = CachedStepper(model), CachedStepper(model, fast=False)
        with torch.inference_mode():
            fast_state, ref_state = fast.encode(src), reference.encode(src)
            tokens = torch.full((1, 1), model.config.bos_id)
            for _ in range(6):
                fast_lp, fast_state = fast.step(tokens, fast_state)
                ref_lp, ref_state = reference.step(tokens, ref_state)
                torch.testing.assert_close(fast_lp, ref_lp, atol=ATOL, rtol=0)
                tokens = ref_lp.argmax(dim=-1, keepdim=True)
    finally:
        torch.set_num_threads(threads)
        _SNAPSHOTS.clear()


def test_snapshot_depends_on_the_thread_count(model: Transformer) -> None:
    """MKL packs for the thread count it packs with; a snapshot packed on 1 thread is not reused on 2."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = stacks.step_decoder(model, 4)
        torch.set_num_threads(2)
        two = stacks.step_decoder(model, 4)
        assert two is not one
        torch.set_num_threads(1)
        assert stacks.step_decoder(model, 4) is one
    finally:
        torch.set_num_threads(threads)


def test_snapshot_does_not_keep_its_model_alive() -> None:
    import gc
    import weakref

    model = _variant()
    stacks.step_decoder(model, 2)
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None


needs_int8 = pytest.mark.skipif(not int8_available(), reason="no fbgemm/x86 int8 kernels in this torch")


@needs_int8
@pytest.mark.parametrize("rows", [3, 16])
def test_int8_steps_are_close_to_float32_steps(rows: int) -> None:
    model = random_model()
    generator = torch.Generator().manual_seed(rows)
    src = torch.randint(4, 20, (rows, 7), generator=generator)
    src[:, -1] = model.config.eos_id
    int8, reference = CachedStepper(model, int8=True), CachedStepper(model, fast=False)
    agree = total = 0
    with torch.inference_mode():
        int8_state, ref_state = int8.encode(src), reference.encode(src)
        tokens = torch.full((rows, 1), model.config.bos_id)
        for _ in range(8):
            int8_lp, int8_state = int8.step(tokens, int8_state)
            ref_lp, ref_state = reference.step(tokens, ref_state)
            # Probabilities within 0.1: this random model's doubled weights amplify quantisation error
            # (a real model: README, 0.13 BLEU at beam 4); identical would mean nothing was quantised.
            assert float((int8_lp.exp() - ref_lp.exp()).abs().max()) < 0.1
            assert not torch.equal(int8_lp, ref_lp)
            agree += int((int8_lp.argmax(-1) == ref_lp.argmax(-1)).sum())
            total += rows
            tokens = ref_lp.argmax(-1, keepdim=True)
    assert agree >= 0.85 * total  # a random model has near-ties; the cmn-eng model loses 0.13 BLEU
    assert int8._step_decoder is not None and int8._step_decoder.int8
    assert isinstance(int8._step_decoder.output, Int8Linear)
    assert isinstance(int8._step_decoder.layers[0].fc_in, Int8Linear)


@needs_int8
def test_int8_decode_and_its_errors(sources: list[list[int]]) -> None:
    model = random_model()
    found = decode(model, sources, SearchConfig(method="beam", beam=3), int8=True)
    assert len(found) == len(sources) and all(hyps for hyps in found)
    with pytest.raises(ValueError, match="cached"):
        decode(model, sources, int8=True, cached=False)
    with pytest.raises(ValueError, match="fast=True"):
        CachedStepper(model, fast=False, int8=True)
    stepper = CachedStepper(model, int8=True)  # gradients on: the fast step cannot run, int8 refuses
    with pytest.raises(ValueError, match="int8 decoding runs on a CPU"):
        stepper.step(torch.full((1, 1), 1), stepper.encode(torch.tensor([[5, 2]])))


def test_grouped_beam_state_refuses_selections_that_split_a_sentence(model: Transformer) -> None:
    stepper = CachedStepper(model)
    with torch.inference_mode():
        state = stepper.encode(pad_batch([[5, 6, 2], [7, 2]], model.config.pad_id)).repeat_each(3)
        assert state.beams == 3 and state.cache_rows() == 6
        kept = state.select(torch.tensor([5, 3, 4]))  # sentence 1's beams, reordered
        assert kept.encoded.memory.shape[0] == 1 and kept.beams == 3
        with pytest.raises(ValueError, match="mixes beams"):
            state.select(torch.tensor([0, 1, 3]))
        with pytest.raises(ValueError, match="groups of 3"):
            state.select(torch.tensor([0, 1]))
        flat = state.ungrouped()
        assert flat.beams == 1 and flat.encoded.memory.shape[0] == 6
        torch.testing.assert_close(flat.encoded.memory[3], state.encoded.memory[1])


@pytest.mark.parametrize("min_rows", [1, 10**9], ids=["batched products", "fused kernel"])
def test_attention_equals_float64_softmax(min_rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """softmax(Q K^T / sqrt(d)) V on cache-like views, with a padding mask; a query whose keys are all
    masked is left to the caller (NaN or zeros), every other row equals the float64 formula."""
    monkeypatch.setattr(attention, "PRODUCTS_MIN_ROWS", min_rows)
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(3, 2, 4, 8, generator=generator)
    buffer = torch.randn(3, 2, 16, 8, generator=generator)  # capacity 16, 5 valid positions
    k, v = buffer[:, :, :5], buffer.flip(0)[:, :, :5].contiguous()
    may_attend = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    may_attend = may_attend[:, None, None, :]  # (3, 1, 1, 5); source 2 has no key
    scores = q.double() @ k.double().transpose(-1, -2) / 8**0.5
    scores = scores.masked_fill(~may_attend, float("-inf"))
    expected = torch.softmax(scores, dim=-1) @ v.double()
    out, _ = scaled_dot_product(q, k, v, may_attend)
    assert out.shape == (3, 2, 4, 8)
    torch.testing.assert_close(out[:2].double(), expected[:2], atol=1e-5, rtol=0)
    unmasked, _ = scaled_dot_product(q, k, v, None)
    full = torch.softmax(q.double() @ k.double().transpose(-1, -2) / 8**0.5, dim=-1) @ v.double()
    torch.testing.assert_close(unmasked.double(), full, atol=1e-5, rtol=0)
