"""Which validation picks best/: the lowest validation NLL (the default), or the highest BLEU a validation
hook reports (``best_by="valid_bleu"``, ``qkv train --best-by bleu --valid-bleu N``). A NAT's validation
loss on random masks of the references rose while its BLEU improved (README, cmn-eng), so picking its
best model by loss kept an early one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch

from qkv import checkpoint, cli
from qkv.data import demo
from qkv.train.pipeline import DataConfig, TokenizerConfig, train
from qkv.train.trainer import TrainConfig, TrainResult

# The BLEU a scripted hook reports at each validation step: best at step 10, then worse.
SCRIPTED_BLEU = {5: 10.0, 10: 30.0, 15: 20.0, 20: 5.0}


@pytest.fixture
def corpus(tmp_path: Path) -> DataConfig:
    pairs = demo.generate(seed=0, size=240)
    demo.write_tsv(tmp_path / "train.tsv", pairs[:200])  # English<TAB>Chinese
    demo.write_tsv(tmp_path / "valid.tsv", pairs[200:])
    return DataConfig(
        train=str(tmp_path / "train.tsv"), valid=str(tmp_path / "valid.tsv"), src_col=2, tgt_col=1
    )


def run(out: Path, data: DataConfig, hooks: list[Any], **config: Any) -> TrainResult:
    torch.set_num_threads(1)
    train_config = TrainConfig(
        max_steps=20, max_tokens=256, lr=2e-3, warmup=5, valid_every=5, save_every=5, keep_last=10, **config
    )
    return train(
        out, data=data, tok=TokenizerConfig(vocab_size=200), preset_name="tiny", model_overrides={},
        train_config=train_config, hooks=hooks, progress=False, say=lambda _: None,
    )  # fmt: skip


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(directory / checkpoint.MODEL_FILE))


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def bleu_hook(model: Any, step: int) -> dict[str, float]:
    return {"valid_bleu": SCRIPTED_BLEU[step]}


def test_best_model_is_the_highest_bleu_when_picked_by_bleu(tmp_path: Path, corpus: DataConfig) -> None:
    result = run(tmp_path / "run", corpus, [bleu_hook], best_by="valid_bleu")
    ckpts = tmp_path / "run" / "checkpoints"
    assert result.best_dir is not None and same_weights(result.best_dir, ckpts / "step-00000010")
    assert not same_weights(result.best_dir, ckpts / "step-00000020")
    assert result.state.best_valid_bleu == 30.0 and result.state.best_valid_nll is None
    assert result.state.evals_without_improvement == 2  # steps 15 and 20: what --patience counts
    assert [h["valid_bleu"] for h in result.state.history] == [10.0, 30.0, 20.0, 5.0]


def test_best_model_is_the_lowest_nll_by_default(tmp_path: Path, corpus: DataConfig) -> None:
    result = run(tmp_path / "run", corpus, [bleu_hook])
    nll = {h["step"]: h["valid_nll"] for h in result.state.history}
    lowest = min(nll, key=lambda step: nll[step])
    assert lowest != 10  # the scripted BLEU's best is not the loss's: the choice shows
    assert result.best_dir is not None
    assert same_weights(result.best_dir, tmp_path / "run" / "checkpoints" / f"step-{lowest:08d}")
    assert result.state.best_valid_nll == nll[lowest] and result.state.best_valid_bleu is None


def test_picking_by_bleu_without_a_hook_is_refused_before_training(
    tmp_path: Path, corpus: DataConfig
) -> None:
    with pytest.raises(ValueError, match="--valid-bleu N"):
        run(tmp_path / "run", corpus, [], best_by="valid_bleu")
    assert not (tmp_path / "run" / "checkpoints").exists()
    with pytest.raises(ValueError, match="best_by='bleu' must be one of"):
        TrainConfig(max_steps=1, best_by="bleu")


def test_cli_best_by_bleu_needs_valid_bleu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["train", "--out", str(tmp_path / "run"), "--best-by", "bleu", "--max-steps", "1"])
    assert code == 2
    assert "--best-by bleu picks best/ by the BLEU that --valid-bleu N measures" in capsys.readouterr().err
