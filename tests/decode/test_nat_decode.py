"""Non-autoregressive decoding: mask-predict with one pass is the single pass, the re-masking schedule,
the length beam, batching invariance, special tokens, and the teacher's rescoring against a hand loop."""

from __future__ import annotations

import pytest
import torch

from qkv.config import NATConfig, preset
from qkv.decode.nat import (
    NATIteration,
    mask_predict,
    predict_lengths,
    single_pass,
    teacher_scores,
    translate_ids,
)
from qkv.models.nat import NATransformer
from qkv.models.seq2seq import Transformer
from tests.reference import randomize_norms_and_biases

VOCAB, PAD, BOS, EOS = 29, 0, 1, 2


def tiny_nat(rng: torch.Generator) -> NATransformer:
    config = NATConfig.from_dict(preset("tiny", VOCAB, dropout=0.0).to_dict())
    model = NATransformer(config)  # type: ignore[arg-type]
    randomize_norms_and_biases(model, rng)
    return model.eval()


def sources(rng: torch.Generator, lengths: list[int]) -> torch.Tensor:
    ids = torch.randint(3, VOCAB, (len(lengths), max(lengths)), generator=rng)
    for row, n in enumerate(lengths):
        ids[row, n - 1] = EOS
        ids[row, n:] = PAD
    return ids


@torch.inference_mode()
def test_mask_predict_with_one_iteration_is_the_single_pass(rng: torch.Generator) -> None:
    model = tiny_nat(rng)
    src = sources(rng, [6, 3, 8])
    for beam in (1, 3):
        assert mask_predict(model, src, iterations=1, length_beam=beam) == single_pass(
            model, src, length_beam=beam
        )


@torch.inference_mode()
def test_each_pass_remasks_the_least_confident_and_keeps_the_rest(rng: torch.Generator) -> None:
    model = tiny_nat(rng)
    src = sources(rng, [7, 4])
    iterations = 4
    trace: list[NATIteration] = []
    mask_predict(model, src, iterations=iterations, trace=trace)
    lengths = (trace[0].inputs != PAD).sum(dim=1)
    assert torch.equal((trace[0].inputs == BOS).sum(dim=1), lengths)  # pass 1: all [MASK] (= <s> id)
    for t in range(1, len(trace)):
        step, before = trace[t], trace[t - 1]
        remasked = step.inputs == BOS
        assert torch.equal(remasked.sum(dim=1), lengths * (iterations - t) // iterations)
        assert torch.equal(step.inputs[~remasked], before.tokens[~remasked])  # the rest is kept
        assert torch.equal(step.tokens[~remasked], before.tokens[~remasked])


@torch.inference_mode()
def test_remasking_picks_the_lowest_probabilities(rng: torch.Generator) -> None:
    """Recompute pass 1's token probabilities by hand (softmax of the logits) and check pass 2 masks the
    n lowest of them."""
    model = tiny_nat(rng)
    src = sources(rng, [9])
    trace: list[NATIteration] = []
    mask_predict(model, src, iterations=3, trace=trace)
    first = trace[0]
    logits = model.decode(first.inputs, model.encode(src)).logits[0]  # (tgt_len, vocab)
    probs = torch.softmax(logits.double(), dim=-1)
    chosen = [float(probs[i, tok]) for i, tok in enumerate(first.tokens[0].tolist())]
    n = len(chosen) * 2 // 3
    lowest = sorted(range(len(chosen)), key=lambda i: chosen[i])[:n]
    assert sorted(torch.nonzero(trace[1].inputs[0] == BOS).flatten().tolist()) == sorted(lowest)


@torch.inference_mode()
def test_length_beam_ranks_candidates_and_never_does_worse(rng: torch.Generator) -> None:
    model = tiny_nat(rng)
    src = sources(rng, [5, 9])
    one = single_pass(model, src, length_beam=1)
    five = single_pass(model, src, length_beam=5)
    for a, b in zip(one, five, strict=True):
        assert len(b) == 5
        assert [h.score for h in b] == sorted((h.score for h in b), reverse=True)
        # The most probable length is among the candidates (scores to rounding: five lengths make a
        # bigger batch, whose attention may take the other kernel, qkv.nn.attention.products_win).
        same = [h for h in b if h.tokens == a[0].tokens]
        assert any(abs(h.log_prob - a[0].log_prob) < 1e-4 for h in same)
        assert b[0].score >= a[0].score - 1e-5
        for h in b:
            assert abs(h.score - h.log_prob / max(len(h.tokens), 1)) < 1e-5


@torch.inference_mode()
def test_outputs_never_hold_special_tokens(rng: torch.Generator) -> None:
    model = tiny_nat(rng)
    with torch.no_grad():  # make the specials the most likely tokens everywhere
        model.src_embed.weight[[PAD, BOS, EOS]] *= 50
    for hyps in mask_predict(model, sources(rng, [6, 4]), iterations=3, length_beam=2):
        for h in hyps:
            assert not {PAD, BOS, EOS} & set(h.tokens)


@pytest.mark.parametrize("adaptive", [False, True])
def test_translate_ids_is_batch_invariant_and_keeps_order(rng: torch.Generator, adaptive: bool) -> None:
    model = tiny_nat(rng)
    src = [[5, 6, 7, EOS], [], [8, EOS], [9, 10, 11, 12, 13, EOS], [EOS], [14, 15, 16, 17, 18, 19, 20, EOS]]
    together = translate_ids(model, src, iterations=5, length_beam=2, batch_size=32, adaptive=adaptive)
    alone = [translate_ids(model, [s], iterations=5, length_beam=2, adaptive=adaptive)[0] for s in src]
    assert [h[0].tokens for h in together] == [h[0].tokens for h in alone]
    for a, b in zip(together, alone, strict=True):
        assert abs(a[0].score - b[0].score) < 1e-5
    assert together[1][0].tokens == [] and together[4][0].tokens == []
    assert model.training is False


def test_teacher_scores_match_a_per_sentence_loop(rng: torch.Generator) -> None:
    """Reference: for each sentence alone, sum over positions of log softmax at the gold token, in float64."""
    teacher = Transformer(preset("tiny", VOCAB, dropout=0.0)).eval()
    srcs = [[5, 6, EOS], [7, 8, 9, 10, EOS]]
    outs = [[11, 12, 13], [14]]
    got = teacher_scores(teacher, srcs, outs)
    for s, o, value in zip(srcs, outs, got, strict=True):
        with torch.no_grad():
            logits = teacher(torch.tensor([s]), torch.tensor([[BOS, *o]]))[0].double()
        gold = [*o, EOS]
        total = sum(float(torch.log_softmax(logits[i], -1)[tok]) for i, tok in enumerate(gold))
        assert abs(value - total / len(gold)) < 1e-5


def hand_mask_predict(
    model: NATransformer, src: torch.Tensor, length: int, iterations: int, *, adaptive: bool
) -> tuple[list[int], int]:
    """Mask-predict on one candidate length of one sentence, the rule written out in Python: the tokens
    and how many passes ran. ``adaptive``: stop after a pass (not the first) that changes no token."""
    banned = {PAD, BOS, EOS, model.config.mask_id}
    encoded = model.encode(src)
    tokens = [model.config.mask_id] * length
    log_probs = [0.0] * length
    masked = list(range(length))
    passes = 0
    for t in range(iterations):
        if t > 0:
            n = length * (iterations - t) // iterations
            if n == 0:
                break
            masked = sorted(range(length), key=lambda i: (log_probs[i], i))[:n]
        inputs = [model.config.mask_id if i in masked else tok for i, tok in enumerate(tokens)]
        logits = model.decode(torch.tensor([inputs]), encoded).logits[0].double()
        passes += 1
        changed = False
        for i in masked:
            row = torch.log_softmax(logits[i], dim=-1)
            row[sorted(banned)] = float("-inf")
            best = int(row.argmax())
            changed |= best != tokens[i]
            tokens[i], log_probs[i] = best, float(row[best])
        if adaptive and t > 0 and not changed:
            break
    return tokens, passes


@torch.inference_mode()
def test_adaptive_mask_predict_matches_a_hand_loop_and_stops_when_nothing_changes(
    rng: torch.Generator,
) -> None:
    """Each candidate of each sentence, decoded alone by the hand loop, equals the batched decoder's (fast
    passes and reference modules), with and without ``adaptive``; adaptive candidates stop early."""
    model = tiny_nat(rng)
    src = sources(rng, [9, 5, 12])
    iterations, beam = 6, 3
    lengths = predict_lengths(model, model.encode(src), src, beam)[0]
    hand_passes = []
    for adaptive in (False, True):
        for fast in (True, False):
            found = mask_predict(
                model, src, iterations=iterations, length_beam=beam, fast=fast, adaptive=adaptive
            )
            for i, hyps in enumerate(found):
                n = int((src[i] != PAD).sum())
                by_length = {len(h.tokens): h.tokens for h in hyps}
                for length in lengths[i].tolist():
                    expected, passes = hand_mask_predict(
                        model, src[i : i + 1, :n], length, iterations, adaptive=adaptive
                    )
                    assert by_length[length] == expected
                    if adaptive and fast:
                        hand_passes.append(passes)
    full = [min(iterations, n) for n in lengths.flatten().tolist()]  # what a candidate may run at most
    assert any(p < f for p, f in zip(hand_passes, full, strict=True))  # some stop early ...
    assert max(hand_passes) > 2  # ... and some refine past the second pass


@torch.inference_mode()
def test_adaptive_changes_nothing_at_two_passes_and_trace_ends_on_an_unchanged_pass(
    rng: torch.Generator,
) -> None:
    model = tiny_nat(rng)
    src = sources(rng, [10])
    assert mask_predict(model, src, iterations=2, length_beam=2, adaptive=True) == mask_predict(
        model, src, iterations=2, length_beam=2
    )
    trace: list[NATIteration] = []
    mask_predict(model, src, iterations=8, trace=trace, adaptive=True)
    length = int(trace[0].tokens.shape[1])
    assert 2 < len(trace) < min(8, length)  # stopped early, after refining
    assert torch.equal(trace[-1].tokens, trace[-2].tokens)  # the last pass re-predicted what was there
    for t in range(1, len(trace) - 1):  # every pass before it changed a token
        assert not torch.equal(trace[t].tokens, trace[t - 1].tokens)
