"""ModelConfig validation (errors name the field, also under python -O), serialisation and presets."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import textwrap

import pytest

from qkv.config import PRESETS, ConfigError, ModelConfig, preset

# (field overrides, a regex the message must match: it names the field and the bad value)
BAD_CONFIGS = [
    ({"d_model": 30, "heads": 4}, r"d_model=30 must be divisible by heads=4"),
    ({"encoder_layers": 0}, r"encoder_layers=0 must be a positive integer"),
    ({"decoder_layers": 0}, r"decoder_layers=0 must be a positive integer"),
    ({"heads": 0}, r"heads=0 must be a positive integer"),
    ({"d_ff": -1}, r"d_ff=-1 must be a positive integer"),
    ({"dropout": -0.1}, r"dropout=-0.1 must be in \[0, 1\)"),
    ({"dropout": 1.0}, r"dropout=1.0 must be in \[0, 1\)"),
    ({"dropout": 1.5}, r"dropout=1.5 must be in \[0, 1\)"),
    ({"attention_dropout": -0.5}, r"attention_dropout=-0.5 must be in \[0, 1\)"),
    ({"dropout": float("nan")}, r"dropout=nan must be in \[0, 1\)"),
    ({"activation": "tanh"}, r"activation='tanh'"),
    ({"positions": "rotary"}, r"positions='rotary'"),
    ({"layer_norm_eps": 0.0}, r"layer_norm_eps=0.0 must be > 0"),
    ({"tgt_vocab_size": 40}, r"share_embeddings=True needs one joint vocabulary.*src_vocab_size=32"),
    ({"pad_id": 32}, r"pad_id=32 must be a valid token id"),
    ({"src_vocab_size": 0}, r"src_vocab_size=0 must be a positive integer"),
]


@pytest.mark.parametrize(("fields", "message"), BAD_CONFIGS, ids=[next(iter(f)) for f, _ in BAD_CONFIGS])
def test_bad_values_fail_at_construction_naming_the_field(fields: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"src_vocab_size": 32, "tgt_vocab_size": 32, **fields}
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**arguments)  # type: ignore[arg-type]
    assert issubclass(ConfigError, ValueError)


def test_bad_values_fail_the_same_under_python_O() -> None:
    """Validation must not rely on assert, which python -O removes."""
    script = textwrap.dedent(
        """
        import json, sys
        from qkv.config import ConfigError, ModelConfig, preset
        assert False, "python -O removes asserts: this line must not stop the script"
        cases = json.loads(sys.argv[1])
        for fields, _ in cases:
            try:
                ModelConfig(**{"src_vocab_size": 32, "tgt_vocab_size": 32, **fields})
            except ConfigError as error:
                print(error)
            else:
                print("NO ERROR", fields)
        try:
            preset("huge", 100)
        except ConfigError as error:
            print(error)
        """
    )
    cases = BAD_CONFIGS  # json writes and reads NaN as the literal NaN
    result = subprocess.run(
        [sys.executable, "-O", "-c", script, json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(cases) + 1
    for line, (_, message) in zip(lines[:-1], cases, strict=True):
        assert re.search(message, line), line
    assert "unknown preset 'huge'" in lines[-1]


def test_dict_round_trip_through_json() -> None:
    config = preset("small", 8000, 6000, norm_first=True, activation="gelu", positions="learned")
    data = json.loads(json.dumps(config.to_dict()))
    assert data["model_type"] == "qkv-seq2seq"
    assert ModelConfig.from_dict(data) == config
    assert ModelConfig.from_dict({k: v for k, v in data.items() if k != "model_type"}) == config


def test_from_dict_rejects_unknown_keys_naming_them() -> None:
    data = {**preset("tiny", 100).to_dict(), "num_heads": 4, "hidden": 3}
    with pytest.raises(ConfigError, match=r"unknown config keys \['hidden', 'num_heads'\]"):
        ModelConfig.from_dict(data)


def test_from_dict_still_validates() -> None:
    data = {**preset("tiny", 100).to_dict(), "dropout": 2.0}
    with pytest.raises(ConfigError, match="dropout=2.0"):
        ModelConfig.from_dict(data)


def test_unknown_preset_names_the_choices() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown preset 'huge'; choose one of \['base', 'big', 'small', 'tiny'\]"
    ):
        preset("huge", 100)


def test_unknown_override_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"unknown config fields \['n_layers'\]"):
        preset("tiny", 100, n_layers=3)


def test_base_preset_has_the_paper_sizes() -> None:
    # Vaswani et al. (2017), Table 3, "base": N=6, d_model=512, d_ff=2048, h=8, d_k=d_v=64, P_drop=0.1.
    c = preset("base", 37000)
    assert (c.src_vocab_size, c.tgt_vocab_size) == (37000, 37000)
    assert (c.d_model, c.heads, c.d_head, c.d_ff) == (512, 8, 64, 2048)
    assert (c.encoder_layers, c.decoder_layers) == (6, 6)
    assert c.dropout == 0.1 and c.activation == "relu"
    assert c.norm_first is False and c.positions == "sinusoidal"
    assert c.share_embeddings and c.tie_output


def test_big_preset_has_the_paper_sizes() -> None:
    # Table 3, "big": d_model=1024, d_ff=4096, h=16, P_drop=0.3.
    c = preset("big", 37000)
    assert (c.d_model, c.heads, c.d_head, c.d_ff, c.dropout) == (1024, 16, 64, 4096, 0.3)
    assert (c.encoder_layers, c.decoder_layers) == (6, 6)


def test_preset_with_two_vocabularies_stops_sharing() -> None:
    c = preset("tiny", 100, 80)
    assert (c.src_vocab_size, c.tgt_vocab_size, c.share_embeddings) == (100, 80, False)
    with pytest.raises(ConfigError, match="share_embeddings=True needs one joint vocabulary"):
        preset("tiny", 100, 80, share_embeddings=True)


def test_presets_are_not_changed_by_preset() -> None:
    before = dict(PRESETS)
    preset("tiny", 5000, dropout=0.0)
    assert before == PRESETS


def test_config_is_frozen() -> None:
    c = preset("tiny", 100)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.d_model = 64  # type: ignore[misc]
