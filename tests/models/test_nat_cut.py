"""The NAT's second length method, ``length_method="cut"``: the decoder gets ``source length +
max_length_offset`` positions, is trained to write </s> after the sentence, and its output is cut at
the first </s>. Checked against hand-written targets, a float64 recomputation of the decoder's argmax,
and a toy task the method must learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qkv import params
from qkv.config import ConfigError, NATConfig, model_config_from_dict, preset
from qkv.decode.nat import mask_predict, single_pass, translate_ids
from qkv.models.nat import NATransformer
from qkv.train.loss import label_smoothed_loss
from qkv.train.nat_task import NATTask
from tests.reference import randomize_norms_and_biases

VOCAB, PAD, BOS, EOS, MASK = 23, 0, 1, 2, 1
OFFSET = 4


def cut_config(vocab: int = VOCAB, **fields: object) -> NATConfig:
    base = preset("tiny", vocab, dropout=0.0, max_positions=64).to_dict()
    # A logits bias (Marian's), so that tests can make </s> win where they need it.
    nat = {"max_length_offset": OFFSET, "length_method": "cut", "logits_bias": True}
    return NATConfig.from_dict({**base, **nat, **fields})  # type: ignore[return-value]


def cut_model(seed: int = 0, **fields: object) -> NATransformer:
    torch.manual_seed(seed)
    model = NATransformer(cut_config(**fields))
    randomize_norms_and_biases(model, torch.Generator().manual_seed(seed))
    return model.eval()


def test_config_names_the_method_round_trips_and_old_configs_use_the_classifier() -> None:
    config = cut_config()
    assert model_config_from_dict(config.to_dict()) == config
    legacy = {k: v for k, v in config.to_dict().items() if k != "length_method"}
    assert model_config_from_dict(legacy).length_method == "classifier"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="length_method='guess' must be one of classifier, cut"):
        cut_config(length_method="guess")


def test_a_cut_model_has_no_length_predictor_and_its_count_says_so() -> None:
    model = cut_model()
    assert model.length_proj is None
    assert not any(name.startswith("length_proj") for name, _ in model.named_parameters())
    rows = params.seq2seq_rows(model.config)
    assert all(row.component != "length predictor (NAT)" for row in rows)
    assert params.total(rows) == params.total(params.module_rows(model)) == model.num_parameters()
    src = torch.tensor([[5, 6, EOS]])
    logits, length_logits = model(src, torch.full((1, 4), MASK))
    assert logits.shape == (1, 4, VOCAB) and length_logits is None
    with pytest.raises(ValueError, match="no length predictor: its length method is 'cut'"):
        model.length_logits(model.encode(src))


def test_training_targets_are_the_sentence_then_eos_up_to_the_bound() -> None:
    task = NATTask(PAD, MASK, OFFSET, cut_at=EOS, max_positions=9)
    # Sources of 3 and 2 tokens (</s> included): bounds 3 + 4 = 7 and 2 + 4 = 6; a target of 6 tokens
    # needs 7 positions (6 + its </s>) and gets them; one of 9 tokens is cut to max_positions.
    data = [([5, 6, EOS], [7, 8]), ([5, EOS], [7, 8, 9, 10, 11, 12]), ([5, EOS], [3] * 9)]
    src, tgt = task.lengths(data).lengths_of(np.arange(3))
    assert (src.tolist(), tgt.tolist()) == ([3, 2, 2], [7, 7, 9])
    torch.manual_seed(0)
    src, tgt_in, tgt_out, _ = task.tensors(data, [0, 1, 2], torch.device("cpu"))
    gold = torch.tensor(
        [
            [7, 8, EOS, EOS, EOS, EOS, EOS, PAD, PAD],
            [7, 8, 9, 10, 11, 12, EOS, PAD, PAD],
            [3] * 9,
        ]
    )
    is_masked = tgt_in == MASK
    assert torch.equal(torch.where(is_masked, tgt_out, tgt_in), gold)
    assert torch.equal(tgt_out != PAD, is_masked)
    assert not bool((is_masked & (gold == PAD)).any())


def test_the_cut_loss_is_the_token_loss_alone() -> None:
    model = cut_model().train()
    task = NATTask(PAD, MASK, OFFSET, length_weight=1.0, cut_at=EOS, max_positions=64)
    torch.manual_seed(1)
    batch = task.tensors([([5, 6, EOS], [7, 8]), ([5, EOS], [9])], [0, 1], torch.device("cpu"))
    loss, _ = task.loss(model, batch, 0.1)
    logits = model.decode(batch[1], model.encode(batch[0])).logits
    expected, _ = label_smoothed_loss(logits, batch[2], smoothing=0.1, pad_id=PAD)
    assert torch.allclose(loss, expected)


def _reference_single_pass(model: NATransformer, src: list[int]) -> tuple[list[int], float, float]:
    """The single pass by hand, in float64: bound = source length + offset positions of [MASK], argmax
    over every id but <pad>, <s>/[MASK], cut before the first </s>; log_prob counts that </s>."""
    reference = NATransformer(model.config).double().eval()
    reference.load_state_dict(model.state_dict())
    bound = min(len(src) + OFFSET, model.config.max_positions)
    with torch.no_grad():
        logits = reference.decode(torch.full((1, bound), MASK), reference.encode(torch.tensor([src]))).logits
    log_probs = torch.log_softmax(logits[0], dim=-1)
    log_probs[:, [PAD, BOS, MASK]] = -math.inf
    best, tokens = log_probs.max(dim=-1)
    ids = tokens.tolist()
    n = ids.index(EOS) if EOS in ids else bound
    kept = float(best[:n].sum())
    total = kept + (float(best[n]) if n < bound else 0.0)
    return ids[:n], total, kept / max(n, 1)


def _eos_bias_for_cuts(model: NATransformer, sources: list[list[int]]) -> None:
    """Raise </s>'s output bias to the median margin it loses by, so that </s> wins at about half of the
    positions: outputs then end at varied places (and some sources need the whole bound)."""
    margins = []
    with torch.no_grad():
        for src in sources:
            inputs = torch.full((1, len(src) + OFFSET), MASK)
            logits = model.decode(inputs, model.encode(torch.tensor([src]))).logits[0]
            others = logits.clone()
            others[:, [PAD, BOS, EOS]] = -math.inf
            margins += (others.max(dim=-1).values - logits[:, EOS]).tolist()
        bias = model.output_bias
        assert bias is not None
        bias[EOS] += sorted(margins)[len(margins) // 2]


def test_the_single_pass_is_cut_at_the_first_eos_as_a_float64_recomputation_finds() -> None:
    model = cut_model(seed=3)
    g = torch.Generator().manual_seed(4)
    sources = [[*torch.randint(3, VOCAB, (n,), generator=g).tolist(), EOS] for n in (1, 3, 5, 6, 9, 12)]
    _eos_bias_for_cuts(model, sources)
    found = translate_ids(model, sources, batch_size=4)
    lengths = set()
    for src, hyps in zip(sources, found, strict=True):
        tokens, log_prob, score = _reference_single_pass(model, src)
        (hyp,) = hyps
        assert hyp.tokens == tokens
        assert hyp.log_prob == pytest.approx(log_prob, abs=1e-4)
        assert hyp.score == pytest.approx(score, abs=1e-4)
        assert EOS not in hyp.tokens
        lengths.add(len(tokens))
    assert len(lengths) > 2  # the outputs end at different places: the cut is exercised


def test_without_an_eos_the_output_fills_the_bound() -> None:
    model = cut_model(seed=5)
    bias = model.output_bias
    assert bias is not None
    with torch.no_grad():
        bias[EOS] = -1e4
    sources = [[5, 6, 7, EOS], [*range(3, 23), *range(3, 23), *range(3, 23), EOS]]
    found = translate_ids(model, sources)
    assert [len(hyps[0].tokens) for hyps in found] == [4 + OFFSET, 64]  # the second: max_positions


@pytest.mark.parametrize("iterations", [1, 4])
def test_decoding_is_batch_invariant_and_refuses_a_length_beam(iterations: int) -> None:
    model = cut_model(seed=6)
    g = torch.Generator().manual_seed(7)
    sources = [[*torch.randint(3, VOCAB, (n,), generator=g).tolist(), EOS] for n in (2, 7, 4, 9, 1)]
    _eos_bias_for_cuts(model, sources)
    one_by_one = [translate_ids(model, [s], iterations=iterations)[0] for s in sources]
    together = translate_ids(model, sources, iterations=iterations, batch_size=3)
    assert [h[0].tokens for h in together] == [h[0].tokens for h in one_by_one]
    for hyps in together:
        assert not {PAD, BOS, EOS, MASK} & set(hyps[0].tokens)
    src_ids = torch.tensor([sources[0]])
    for decode in (single_pass, mask_predict):
        with pytest.raises(ValueError, match="length_beam=2: this NAT cuts its output at </s>"):
            decode(model, src_ids, length_beam=2)


@pytest.mark.slow
def test_the_cut_method_learns_where_a_toy_sentence_ends() -> None:
    """Toy rule: the target copies the source. After some Adam steps the single pass ends each output
    where the copy ends, with no length predictor."""
    torch.manual_seed(0)
    model = NATransformer(cut_config()).train()
    task = NATTask(PAD, MASK, OFFSET, cut_at=EOS, max_positions=64)
    g = torch.Generator().manual_seed(1)
    data = []
    for _ in range(96):
        words = torch.randint(3, VOCAB, (int(torch.randint(1, 7, (1,), generator=g)),), generator=g).tolist()
        data.append(([*words, EOS], words))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(250):  # on this data: right lengths from about step 200 on (71% at step 150)
        batch = task.tensors(data, range(len(data)), torch.device("cpu"))  # new masks each step
        optimizer.zero_grad()
        loss, _ = task.loss(model, batch, 0.0)
        (loss / task.count(batch)).backward()
        optimizer.step()
    found = translate_ids(model.eval(), [src for src, _ in data])
    right_length = sum(len(hyps[0].tokens) == len(tgt) for hyps, (_, tgt) in zip(found, data, strict=True))
    assert right_length / len(data) > 0.9
