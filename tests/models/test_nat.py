"""The non-autoregressive Transformer: against torch.nn.Transformer without the causal mask (copied
weights), padding invariance, non-causality, the length predictor and its training task, saving/loading."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from qkv import checkpoint, params
from qkv.config import ConfigError, ModelConfig, NATConfig, model_config_from_dict, preset
from qkv.models import saved
from qkv.models.nat import NATransformer, length_classes
from qkv.models.seq2seq import Transformer
from qkv.tokenize import train_bpe
from qkv.train.nat_task import NATTask, random_masks
from tests.reference import MODEL_ATOL, randomize_norms_and_biases, sinusoidal_formula, torch_transformer_like

# The same float32 computation with only padding added or masked-out inputs changed: rounding only.
SAME_COMPUTATION_ATOL = 1e-5

VOCAB, PAD, MASK = 23, 0, 1
SRC_LENGTHS, TGT_LENGTHS = [7, 4, 2], [6, 3, 5]


def nat_config(vocab: int = VOCAB, **overrides: object) -> NATConfig:
    """The 'tiny' preset as a NAT config, dropout 0; NAT-only fields may be overridden too."""
    nat_only = {k: v for k, v in overrides.items() if k in ("max_length_offset", "mask_id")}
    shape = {k: v for k, v in overrides.items() if k not in nat_only}
    base = preset("tiny", vocab, **{"dropout": 0.0, **shape}).to_dict()
    return NATConfig.from_dict({**base, **nat_only})  # type: ignore[return-value]


def tiny_nat(rng: torch.Generator, **overrides: object) -> NATransformer:
    """The 'tiny' preset as a NAT model, dropout 0, random LayerNorms and biases, in eval mode."""
    model = NATransformer(nat_config(**overrides))
    randomize_norms_and_biases(model, rng)
    return model.eval()


def ragged_ids(rng: torch.Generator, lengths: list[int], extra_pad: int = 0) -> Tensor:
    """Random ids (3 .. VOCAB-1, some [MASK]) with each row padded after its length."""
    ids = torch.randint(3, VOCAB, (len(lengths), max(lengths) + extra_pad), generator=rng)
    ids[torch.rand(ids.shape, generator=rng) < 0.3] = MASK
    for row, n in enumerate(lengths):
        ids[row, n:] = PAD
    return ids


@pytest.mark.parametrize("norm_first", [False, True])
def test_logits_match_torch_transformer_without_causal_mask(rng: torch.Generator, norm_first: bool) -> None:
    """Reference: torch.nn.Transformer with our weights, key padding masks only (no tgt_mask), and the
    embeddings, positions and tied output projection written out from the paper's formulas."""
    model = tiny_nat(rng, norm_first=norm_first)
    c = model.config
    src, tgt = ragged_ids(rng, SRC_LENGTHS), ragged_ids(rng, TGT_LENGTHS)
    theirs = torch_transformer_like(model)
    table = model.src_embed.weight.detach()
    positions = sinusoidal_formula(max(src.shape[1], tgt.shape[1]), c.d_model).float()
    src_x = table[src] * math.sqrt(c.d_model) + positions[: src.shape[1]]
    tgt_x = table[tgt] * math.sqrt(c.d_model) + positions[: tgt.shape[1]]
    hidden = theirs(  # grad enabled: torch's plain path, not its inference fast path
        src_x,
        tgt_x,
        src_key_padding_mask=src == PAD,
        tgt_key_padding_mask=tgt == PAD,
        memory_key_padding_mask=src == PAD,
    )
    expected = hidden @ table.T
    with torch.no_grad():
        logits, _ = model(src, tgt)
    for row, n in enumerate(TGT_LENGTHS):
        torch.testing.assert_close(logits[row, :n], expected[row, :n].detach(), atol=MODEL_ATOL, rtol=0)


def test_padding_never_leaks_into_real_positions(rng: torch.Generator) -> None:
    """A sentence alone, with extra padding, and in a batch beside longer sentences: the same outputs."""
    model = tiny_nat(rng)
    src, tgt = ragged_ids(rng, SRC_LENGTHS), ragged_ids(rng, TGT_LENGTHS)
    with torch.no_grad():
        batched, batched_len = model(src, tgt)
        padded, padded_len = model(
            torch.cat([src, torch.zeros(3, 4, dtype=torch.long)], 1),
            torch.cat([tgt, torch.zeros(3, 5, dtype=torch.long)], 1),
        )
        for row, (s, t) in enumerate(zip(SRC_LENGTHS, TGT_LENGTHS, strict=True)):
            alone, alone_len = model(src[row : row + 1, :s], tgt[row : row + 1, :t])
            for other in (batched, padded):
                torch.testing.assert_close(other[row, :t], alone[0], atol=SAME_COMPUTATION_ATOL, rtol=0)
            for other_len in (batched_len, padded_len):
                torch.testing.assert_close(other_len[row], alone_len[0], atol=SAME_COMPUTATION_ATOL, rtol=0)


def test_every_position_sees_every_other_but_not_the_padding(rng: torch.Generator) -> None:
    """Non-causal by design: changing the last real target token changes the first position's output;
    changing what sits in a padded position (another sentence's token there, via a longer neighbour's
    batch) changes nothing."""
    model = tiny_nat(rng)
    src = ragged_ids(rng, [5])
    tgt = torch.tensor([[5, 6, 7, 8]])
    changed = tgt.clone()
    changed[0, 3] = 9
    with torch.no_grad():
        first = model(src, tgt)[0][0, 0]
        assert not torch.allclose(first, model(src, changed)[0][0, 0], atol=1e-4)
        # The padded tail of row 0 next to a row that is real there: row 0 must not see row 1's tokens.
        pair = torch.tensor([[5, 6, PAD, PAD], [10, 11, 12, 13]])
        pair_changed = torch.tensor([[5, 6, PAD, PAD], [14, 15, 16, 17]])
        two_src = torch.cat([src, src])
        a, b = model(two_src, pair)[0], model(two_src, pair_changed)[0]
    torch.testing.assert_close(a[0, :2], b[0, :2], atol=0, rtol=0)


def test_length_classes_clip_offsets() -> None:
    tgt = torch.tensor([3, 10, 40, 0])
    src = torch.tensor([5, 5, 5, 50])
    assert length_classes(tgt, src, 4).tolist() == [2, 8, 8, 0]  # offsets -2, +5 -> 4, +35 -> 4, -50 -> -4


def test_random_masks_mask_1_to_n_real_positions_never_padding() -> None:
    generator = torch.Generator().manual_seed(0)
    tgt = torch.tensor([[5, 6, 7, 8, 9], [5, 6, PAD, PAD, PAD], [PAD] * 5])
    counts: dict[int, set[int]] = {0: set(), 1: set()}
    for _ in range(200):
        masked = random_masks(tgt, PAD, generator)
        assert not masked[tgt == PAD].any()
        for row in (0, 1):
            counts[row].add(int(masked[row].sum()))
    assert counts == {0: {1, 2, 3, 4, 5}, 1: {1, 2}}  # m ~ Uniform{1..n}: every count occurs


def test_nat_task_tensors_and_count() -> None:
    task = NATTask(PAD, MASK, max_length_offset=4)
    data = [([5, 6, 2], [7, 8, 9]), ([5, 2], [7])]
    src, tgt_in, tgt_out, classes = task.tensors(data, [0, 1], torch.device("cpu"))
    gold = torch.tensor([[7, 8, 9], [7, PAD, PAD]])
    is_masked = tgt_in == MASK
    assert torch.equal(torch.where(is_masked, tgt_out, tgt_in), gold)  # each position: input or target
    assert torch.equal(tgt_out != PAD, is_masked)
    assert task.count((src, tgt_in, tgt_out, classes)) == int(is_masked.sum())
    assert classes.tolist() == [4 + 0, 4 - 1]  # offsets 3 - 3 and 1 - 2


def test_length_loss_decreases_on_a_toy_task() -> None:
    """Toy rule: the target is 2 tokens longer than the source. A few Adam steps learn it."""
    torch.manual_seed(0)
    model = NATransformer(nat_config(max_length_offset=8)).train()
    task = NATTask(PAD, MASK, max_length_offset=8, length_weight=1.0)
    generator = torch.Generator().manual_seed(1)
    data = []
    for _ in range(64):
        n = int(torch.randint(2, 8, (1,), generator=generator))
        src = torch.randint(3, VOCAB, (n,), generator=generator).tolist()
        data.append(([*src, 2], torch.randint(3, VOCAB, (n + 1 + 2,), generator=generator).tolist()))
    batch = task.tensors(data, range(len(data)), torch.device("cpu"))

    def length_loss() -> float:
        with torch.no_grad():
            _, length_logits = model(batch[0], batch[1])
        return float(torch.nn.functional.cross_entropy(length_logits, batch[3]))

    before = length_loss()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(40):
        optimizer.zero_grad()
        loss, _ = task.loss(model, batch, 0.1)
        (loss / task.count(batch)).backward()
        optimizer.step()
    after = length_loss()
    assert after < 0.25 * before, (before, after)
    with torch.no_grad():
        predicted = model.length_logits(model.encode(batch[0])).argmax(-1)
    assert (predicted == batch[3]).float().mean() > 0.9


def test_config_kinds_round_trip_and_old_configs_stay_seq2seq() -> None:
    config = nat_config(max_length_offset=7)
    data = config.to_dict()
    assert data["model_type"] == "qkv-nat"
    assert model_config_from_dict(data) == config
    plain = preset("tiny", VOCAB)
    assert type(model_config_from_dict(plain.to_dict())) is ModelConfig
    legacy = {k: v for k, v in plain.to_dict().items() if k != "model_type"}
    assert model_config_from_dict(legacy) == plain
    with pytest.raises(ConfigError, match="model_type"):
        model_config_from_dict({**data, "model_type": "qkv-unknown"})
    with pytest.raises(ConfigError, match="mask_id"):
        nat_config(mask_id=PAD)


def test_saved_load_returns_the_kind_in_config_json(tmp_path: object, rng: torch.Generator) -> None:
    from pathlib import Path

    tok = train_bpe(["我爱你。 I love you.", "他很高。 He is tall."], 60)
    for model in (
        NATransformer(nat_config(tok.vocab_size)),
        Transformer(preset("tiny", tok.vocab_size)),
    ):
        path = Path(str(tmp_path)) / type(model).__name__
        checkpoint.save_directory(
            path,
            tensors={checkpoint.MODEL_FILE: model.state_dict()},
            json={checkpoint.CONFIG_FILE: {"model": model.config.to_dict()}},
            text=saved.tokenizer_files(tok, tok),
        )
        loaded = saved.load(path)
        assert type(loaded.model) is type(model)
        for name, tensor in model.state_dict().items():
            assert torch.equal(loaded.model.state_dict()[name], tensor), name


def test_parameter_formula_counts_the_length_predictor() -> None:
    config = NATConfig.from_dict(preset("tiny", 60).to_dict())
    rows = params.seq2seq_rows(config)
    classes = 2 * config.max_length_offset + 1
    assert rows[-1].component == "length predictor (NAT)"
    assert rows[-1].count == config.d_model * classes + classes
    model = NATransformer(config)
    assert params.total(rows) == params.total(params.module_rows(model)) == model.num_parameters()
