"""Loss goes down: on the demo corpus the tiny preset's validation NLL falls well below the unigram entropy
of the target tokens, within a fixed number of steps (about ten seconds on one CPU thread)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from qkv.data import demo
from qkv.models import saved
from qkv.train.pipeline import DataConfig, TokenizerConfig, train
from qkv.train.trainer import TrainConfig

STEPS = 200


def unigram_entropy(targets: list[list[int]]) -> float:
    """-sum p log p (nats) of the target tokens, </s> included: the loss of the best model that ignores
    the source and the target prefix alike."""
    counts = Counter(token for sequence in targets for token in sequence)
    total = sum(counts.values())
    return -sum(n / total * math.log(n / total) for n in counts.values())


def test_validation_nll_falls_well_below_the_unigram_entropy(tmp_path: Path, one_thread: None) -> None:
    result = train(
        tmp_path,
        data=DataConfig(),  # the built-in demo corpus, seed 0
        tok=TokenizerConfig(vocab_size=1000),
        preset_name="tiny",
        model_overrides={},
        train_config=TrainConfig(
            max_steps=STEPS, max_tokens=1024, lr=5e-3, warmup=30, valid_every=STEPS // 2, save_every=STEPS
        ),
        progress=False,
        say=lambda line: None,
    )
    assert result.state.step == STEPS

    model = saved.load(tmp_path / "best")
    train_pairs, _ = demo.splits(seed=0)
    eos = model.model.config.eos_id
    entropy = unigram_entropy([[*model.tgt_tokenizer.encode(en), eos] for _, en in train_pairs])
    assert 3.0 < entropy < 6.0  # a sanity check of the reference itself (about 4.2 nats here)

    nll = [record["valid_nll"] for record in result.state.history]
    assert nll == sorted(nll, reverse=True), nll  # falls at every validation
    assert nll[-1] < 0.5 * entropy, f"validation NLL {nll} vs unigram entropy {entropy:.3f} nats"
