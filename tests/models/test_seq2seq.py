"""The encoder-decoder Transformer against torch.nn.Transformer with copied weights, and its properties:
causality, padding invariance, cached decoding equal to the full pass, gradients, parameter count."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from qkv.config import ModelConfig, preset
from qkv.models.seq2seq import Transformer
from qkv.nn import KVCache
from tests.reference import MODEL_ATOL, randomize_norms_and_biases, sinusoidal_formula, torch_transformer_like

# The same float32 computation with only masked-out inputs changed, or split into steps: rounding only,
# no accumulation across different paths (causality, padding, cached vs full decoding).
SAME_COMPUTATION_ATOL = 1e-5

VOCAB, PAD = 23, 0
SRC_LENGTHS, TGT_LENGTHS = [7, 4, 2], [6, 3, 5]


def tiny_model(rng: torch.Generator, **overrides: object) -> Transformer:
    """The 'tiny' preset with dropout 0 and random LayerNorms and biases, in eval mode."""
    config = preset("tiny", VOCAB, **{"dropout": 0.0, **overrides})
    model = Transformer(config)
    randomize_norms_and_biases(model, rng)
    return model.eval()


def ragged_ids(rng: torch.Generator, lengths: list[int], vocab: int = VOCAB, extra_pad: int = 0) -> Tensor:
    """Random non-pad ids (3 .. vocab-1) with each row padded after its length."""
    ids = torch.randint(3, vocab, (len(lengths), max(lengths) + extra_pad), generator=rng)
    for row, n in enumerate(lengths):
        ids[row, n:] = PAD
    return ids


def real_positions(logits: Tensor, lengths: list[int]) -> list[Tensor]:
    return [logits[row, :n] for row, n in enumerate(lengths)]


def torch_reference_logits(model: Transformer, src: Tensor, tgt: Tensor) -> Tensor:
    """torch.nn.Transformer with our weights, plus the paper's embeddings, positions and output projection,
    each written out here: E[ids] * sqrt(d) + PE (Python-math formula), then h E^T (or h W_out^T)."""
    c = model.config
    theirs = torch_transformer_like(model)
    src_table, tgt_table = model.src_embed.weight.detach(), model.tgt_embed.weight.detach()
    positions = sinusoidal_formula(max(src.shape[1], tgt.shape[1]), c.d_model).float()
    src_x = src_table[src] * math.sqrt(c.d_model) + positions[: src.shape[1]]
    tgt_x = tgt_table[tgt] * math.sqrt(c.d_model) + positions[: tgt.shape[1]]
    tgt_len = tgt.shape[1]
    is_future = torch.triu(torch.ones(tgt_len, tgt_len, dtype=torch.bool), diagonal=1)  # True = not allowed
    # Grad stays enabled so torch takes its plain path, not the nested-tensor inference fast path.
    hidden = theirs(
        src_x,
        tgt_x,
        tgt_mask=is_future,
        src_key_padding_mask=src == PAD,
        tgt_key_padding_mask=tgt == PAD,
        memory_key_padding_mask=src == PAD,
    )
    output_weight = tgt_table if model.output_proj is None else model.output_proj.weight.detach()
    return hidden @ output_weight.T


# -- against torch.nn.Transformer ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"norm_first": True},
        {"activation": "gelu"},
        {"norm_first": True, "share_embeddings": False, "tie_output": False, "tgt_vocab_size": 19},
    ],
    ids=["post-LN", "pre-LN", "gelu", "pre-LN-separate-vocab-untied"],
)
def test_matches_torch_transformer(rng: torch.Generator, overrides: dict[str, object]) -> None:
    model = tiny_model(rng, **overrides)
    if model.config.norm_first:
        assert model.encoder_norm is not None and model.decoder_norm is not None
    if not model.config.share_embeddings:
        assert model.tgt_embed is not model.src_embed
    src = ragged_ids(rng, SRC_LENGTHS)
    tgt = ragged_ids(rng, TGT_LENGTHS, vocab=model.config.tgt_vocab_size)
    expected = torch_reference_logits(model, src, tgt)
    for fused in (True, False):
        encoded = model.encode(src, fused=fused)
        logits = model.decode(tgt, encoded, fused=fused).logits
        assert logits.shape == (3, tgt.shape[1], model.config.tgt_vocab_size)
        for ours, theirs in zip(
            real_positions(logits, TGT_LENGTHS), real_positions(expected, TGT_LENGTHS), strict=True
        ):
            torch.testing.assert_close(ours, theirs, atol=MODEL_ATOL, rtol=0)
    teacher_forced = model(src, tgt)
    for ours, theirs in zip(
        real_positions(teacher_forced, TGT_LENGTHS), real_positions(expected, TGT_LENGTHS), strict=True
    ):
        torch.testing.assert_close(ours, theirs, atol=MODEL_ATOL, rtol=0)


def test_fused_and_explicit_paths_agree(rng: torch.Generator) -> None:
    model = tiny_model(rng)
    src, tgt = ragged_ids(rng, SRC_LENGTHS), ragged_ids(rng, TGT_LENGTHS)
    fused = model.decode(tgt, model.encode(src, fused=True), fused=True).logits
    explicit = model.decode(tgt, model.encode(src, fused=False), fused=False).logits
    for a, b in zip(real_positions(fused, TGT_LENGTHS), real_positions(explicit, TGT_LENGTHS), strict=True):
        torch.testing.assert_close(a, b, atol=SAME_COMPUTATION_ATOL, rtol=0)


# -- properties ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_later_target_tokens_never_change_earlier_logits(rng: torch.Generator, norm_first: bool) -> None:
    model = tiny_model(rng, norm_first=norm_first)
    src = ragged_ids(rng, SRC_LENGTHS)
    encoded = model.encode(src)
    tgt = ragged_ids(rng, [8, 8, 8])
    logits = model.decode(tgt, encoded).logits
    for _ in range(5):
        t = int(torch.randint(0, 7, (1,), generator=rng))
        changed = tgt.clone()
        changed[:, t + 1 :] = torch.randint(3, VOCAB, changed[:, t + 1 :].shape, generator=rng)
        changed_logits = model.decode(changed, encoded).logits
        torch.testing.assert_close(
            changed_logits[:, : t + 1], logits[:, : t + 1], atol=SAME_COMPUTATION_ATOL, rtol=0
        )
        # ... while the change did reach the model.
        assert not torch.allclose(changed_logits[:, t + 1 :], logits[:, t + 1 :])


@pytest.mark.parametrize(("src_pads", "tgt_pads"), [(3, 0), (0, 4), (2, 5)])
def test_appending_padding_never_changes_real_positions(
    rng: torch.Generator, src_pads: int, tgt_pads: int
) -> None:
    model = tiny_model(rng)
    src, tgt = ragged_ids(rng, SRC_LENGTHS), ragged_ids(rng, TGT_LENGTHS)
    logits = model(src, tgt)
    padded_src = F.pad(src, (0, src_pads), value=PAD)
    padded_tgt = F.pad(tgt, (0, tgt_pads), value=PAD)
    padded_logits = model(padded_src, padded_tgt)
    for a, b in zip(
        real_positions(padded_logits, TGT_LENGTHS), real_positions(logits, TGT_LENGTHS), strict=True
    ):
        torch.testing.assert_close(a, b, atol=SAME_COMPUTATION_ATOL, rtol=0)


def test_a_sentence_alone_equals_it_in_a_padded_batch(rng: torch.Generator) -> None:
    model = tiny_model(rng)
    src, tgt = ragged_ids(rng, SRC_LENGTHS), ragged_ids(rng, TGT_LENGTHS)
    batch_logits = model(src, tgt)
    for row, (s, t) in enumerate(zip(SRC_LENGTHS, TGT_LENGTHS, strict=True)):
        alone = model(src[row : row + 1, :s], tgt[row : row + 1, :t])
        torch.testing.assert_close(alone[0], batch_logits[row, :t], atol=SAME_COMPUTATION_ATOL, rtol=0)


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_logits_at_projects_exactly_the_chosen_positions(rng: torch.Generator, norm_first: bool) -> None:
    """Training asks for logits at real target tokens only; they equal those rows of the full logits."""
    model = tiny_model(rng, norm_first=norm_first)
    src, tgt = ragged_ids(rng, SRC_LENGTHS), ragged_ids(rng, TGT_LENGTHS)
    full = model(src, tgt)  # (batch, tgt_len, vocab)
    chosen = tgt != PAD
    chosen[0, 1] = False  # any subset, not only the padding pattern
    picked = model(src, tgt, logits_at=chosen)
    assert picked.shape == (int(chosen.sum()), VOCAB)
    torch.testing.assert_close(picked, full[chosen], atol=SAME_COMPUTATION_ATOL, rtol=0)


# -- incremental decoding -----------------------------------------------------------------------------
@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "explicit"])
@pytest.mark.parametrize(
    "steps", [[1] * 6, [3, 1, 1, 1], [2, 4]], ids=["single", "prefill-3", "prefill-2-then-4"]
)
def test_cached_decoding_equals_full_decoding(
    rng: torch.Generator, norm_first: bool, fused: bool, steps: list[int]
) -> None:
    model = tiny_model(rng, norm_first=norm_first)
    src, tgt = ragged_ids(rng, SRC_LENGTHS), ragged_ids(rng, [6, 6, 6])  # decoding prefixes have no padding
    encoded = model.encode(src, fused=fused)
    full = model.decode(tgt, encoded, fused=fused).logits
    cache, start = model.new_cache(), 0
    for new in steps:
        assert cache.length == start
        decoded = model.decode(tgt[:, start : start + new], encoded, cache=cache, fused=fused)
        assert decoded.cache is cache
        torch.testing.assert_close(
            decoded.logits, full[:, start : start + new], atol=SAME_COMPUTATION_ATOL, rtol=0
        )
        start += new
    assert cache.length == 6


def test_reordered_cache_continues_like_the_reordered_batch(rng: torch.Generator) -> None:
    """Beam search: select rows of the encoder output and the cache mid-way, then keep decoding."""
    model = tiny_model(rng)
    src, tgt = ragged_ids(rng, SRC_LENGTHS), ragged_ids(rng, [4, 4, 4])
    encoded, cache = model.encode(src), model.new_cache()
    model.decode(tgt[:, :2], encoded, cache=cache)
    rows = torch.tensor([2, 0, 0, 1])
    picked_encoded, picked_cache = encoded.select(rows), cache.select(rows)
    steps = [model.decode(tgt[rows, t : t + 1], picked_encoded, cache=picked_cache).logits for t in (2, 3)]
    expected = model.decode(tgt[rows], model.encode(src[rows])).logits[:, 2:]
    torch.testing.assert_close(torch.cat(steps, dim=1), expected, atol=SAME_COMPUTATION_ATOL, rtol=0)


def test_cache_with_wrong_layer_count_is_rejected(rng: torch.Generator) -> None:
    model = tiny_model(rng)
    src = ragged_ids(rng, [3])
    with pytest.raises(ValueError, match="cache has 5 layers, the decoder 2"):
        model.decode(src, model.encode(src), cache=KVCache.empty(5))


def test_attention_weights_have_documented_shapes(rng: torch.Generator) -> None:
    model = tiny_model(rng)
    c = model.config
    src, tgt = ragged_ids(rng, SRC_LENGTHS), ragged_ids(rng, TGT_LENGTHS)
    batch, src_len, tgt_len = 3, src.shape[1], tgt.shape[1]
    encoded = model.encode(src, need_weights=True)
    assert encoded.weights is not None and len(encoded.weights) == c.encoder_layers
    assert all(w.shape == (batch, c.heads, src_len, src_len) for w in encoded.weights)
    decoded = model.decode(tgt, encoded, need_weights=True)
    assert decoded.self_weights is not None and decoded.cross_weights is not None
    assert len(decoded.self_weights) == len(decoded.cross_weights) == c.decoder_layers
    assert all(w.shape == (batch, c.heads, tgt_len, tgt_len) for w in decoded.self_weights)
    assert all(w.shape == (batch, c.heads, tgt_len, src_len) for w in decoded.cross_weights)
    is_pad = (src == PAD)[:, None, None, :].expand(batch, c.heads, tgt_len, src_len)
    for w in decoded.cross_weights:
        assert bool((w[is_pad] == 0).all())  # no weight on padded source tokens
        torch.testing.assert_close(
            w.sum(-1), torch.ones(batch, c.heads, tgt_len), atol=SAME_COMPUTATION_ATOL, rtol=0
        )
    for w in decoded.self_weights:
        assert bool((w.triu(diagonal=1) == 0).all())  # no weight on later target positions
    torch.testing.assert_close(
        decoded.logits, model.decode(tgt, encoded).logits, atol=SAME_COMPUTATION_ATOL, rtol=0
    )
    # One cached step: the new position against every key so far.
    cache = model.new_cache()
    model.decode(tgt[:, :3], encoded, cache=cache)
    step = model.decode(tgt[:, 3:4], encoded, cache=cache, need_weights=True)
    assert step.self_weights is not None and step.cross_weights is not None
    assert all(w.shape == (batch, c.heads, 1, 4) for w in step.self_weights)
    assert all(w.shape == (batch, c.heads, 1, src_len) for w in step.cross_weights)
    assert model.decode(tgt, encoded).self_weights is None


# -- training -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides",
    [{}, {"norm_first": True, "share_embeddings": False, "tie_output": False, "tgt_vocab_size": 19}],
    ids=["post-LN-tied", "pre-LN-untied"],
)
def test_backward_gives_every_parameter_a_finite_non_zero_gradient(
    rng: torch.Generator, overrides: dict[str, object]
) -> None:
    model = Transformer(preset("tiny", VOCAB, attention_dropout=0.1, **overrides)).train()  # dropout 0.1 on
    src = ragged_ids(rng, SRC_LENGTHS)
    tgt = ragged_ids(rng, TGT_LENGTHS, vocab=model.config.tgt_vocab_size)
    logits = model(src, tgt[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten(), ignore_index=PAD)
    loss.backward()
    assert torch.isfinite(loss)
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert bool(torch.isfinite(parameter.grad).all()), name
        assert bool((parameter.grad != 0).any()), name


def test_learned_positions_model_runs_and_rejects_long_input(rng: torch.Generator) -> None:
    model = tiny_model(rng, positions="learned", max_positions=8)
    src = ragged_ids(rng, [5])
    assert model(src, src).shape == (1, 5, VOCAB)
    with pytest.raises(ValueError, match="exceeds the 8 learned positions"):
        model.encode(ragged_ids(rng, [9]))


# -- parameter count ----------------------------------------------------------------------------------
def test_base_parameter_count_equals_hand_formula() -> None:
    V, d, dff, n = 37000, 512, 2048, 6
    embeddings = V * d  # one table: source, target and output projection are shared (section 3.4)
    attention = 4 * (d * d + d)  # W_Q, W_K, W_V, W_O with biases
    ffn = (d * dff + dff) + (dff * d + d)
    encoder_layer = attention + ffn + 2 * 2 * d  # two LayerNorms (gain and bias)
    decoder_layer = encoder_layer + attention + 2 * d  # plus cross-attention and its LayerNorm
    formula = embeddings + n * encoder_layer + n * decoder_layer
    # 37000*512 = 18,944,000; encoder layer 1,050,624 + 2,099,712 + 2,048 = 3,152,384 (x6 = 18,914,304);
    # decoder layer 3,152,384 + 1,050,624 + 1,024 = 4,204,032 (x6 = 25,224,192); total 63,082,496.
    assert formula == 63_082_496
    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        model = Transformer(preset("base", 37000))
    assert model.num_parameters() == formula
    assert sum(p.numel() for p in model.parameters()) == formula


def test_untied_parameter_count_adds_the_separate_tables() -> None:
    shared = Transformer(preset("tiny", VOCAB)).num_parameters()
    config = preset("tiny", VOCAB, 19, tie_output=False)
    assert not config.share_embeddings  # different vocabularies cannot share a table
    separate = Transformer(config).num_parameters()
    d = config.d_model
    assert separate == shared + 19 * d + 19 * d  # a target table and an output matrix (no bias)


def test_config_is_kept(rng: torch.Generator) -> None:
    model = tiny_model(rng)
    assert isinstance(model.config, ModelConfig) and model.config.dropout == 0.0
    assert f"{model.num_parameters():,} parameters" in model.summary()
