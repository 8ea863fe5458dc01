"""`qkv train --model-type nat --length-method cut` end to end, in-process: the run's model is a NAT that
cuts at </s>, `qkv translate` decodes it, and a length beam (which the method cannot have) is one clear
error."""

from __future__ import annotations

from pathlib import Path

import pytest

from qkv.cli import main
from qkv.data import demo
from qkv.models import saved
from qkv.models.nat import NATransformer


def test_train_a_cut_nat_then_translate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "train.tsv"
    demo.write_tsv(data, demo.generate(size=200))
    run = tmp_path / "nat-cut"
    assert main(["train", "--model-type", "nat", "--length-method", "cut", "--data", str(data),
                 "--src-col", "2", "--tgt-col", "1", "--preset", "tiny", "--vocab-size", "300",
                 "--max-steps", "3", "--max-tokens", "512", "--quiet", "--out", str(run),
                 "--threads", "1"]) == 0  # fmt: skip
    model = saved.load(run).model
    assert isinstance(model, NATransformer)
    assert model.config.length_method == "cut" and model.length_proj is None
    capsys.readouterr()

    assert main(["translate", "--model", str(run), "--iterations", "3", "我爱你", "", "他很高。"]) == 0
    assert len(capsys.readouterr().out.split("\n")) == 4  # three lines out, empty in -> empty out

    assert main(["translate", "--model", str(run), "--length-beam", "2", "我爱你"]) != 0
    err = capsys.readouterr().err
    assert "length_beam=2: this NAT cuts its output at </s>" in err
    assert "Traceback" not in err
