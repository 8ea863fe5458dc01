"""`qkv train --config FILE`: a file of options, flags overriding it, --dump-config, and train.yaml in runs."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import safetensors.torch
import yaml

from qkv import cli
from qkv.cli.config_files import options_of
from qkv.data import demo

TINY = ["--preset", "tiny", "--vocab-size", "200", "--max-tokens", "256", "--threads", "1", "--quiet"]


def parsed(argv: list[str]) -> argparse.Namespace:
    """What `qkv train ARGV --dump-config` resolves, read back from the YAML it prints."""
    return argparse.Namespace(**dumped(argv))


def dumped(argv: list[str]) -> dict[str, object]:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["train", *argv, "--dump-config"])
    assert code == 0
    loaded = yaml.safe_load(out.getvalue())
    assert isinstance(loaded, dict)
    return loaded


def fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert cli.main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.fixture
def tsv(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.tsv"
    demo.write_tsv(path, demo.generate(seed=0, size=200))  # English<TAB>Chinese
    return path


def test_a_file_gives_what_the_same_flags_give(tmp_path: Path, tsv: Path) -> None:
    flags = ["--data", str(tsv), "--src-col", "2", "--tgt-col", "1", "--lr", "1e-3", "--pre-ln",
             "--schedule", "cosine", "--max-steps", "7", "--out", str(tmp_path / "run")]  # fmt: skip
    file = tmp_path / "run.yaml"
    file.write_text(
        f"data: {tsv}\nsrc-col: 2\ntgt_col: 1\nlr: 1e-3\npre-ln: true\nschedule: cosine\nmax_steps: 7\n"
        f"out: {tmp_path / 'run'}\n",
        encoding="utf-8",
    )
    assert parsed(["--config", str(file)]) == parsed(flags)
    assert parsed(["--config", str(file)]).lr == 1e-3 and parsed([]).lr == 7e-4


def test_flags_override_the_file_before_or_after_it(tmp_path: Path) -> None:
    file = tmp_path / "run.toml"
    file.write_text('lr = 0.002\nwarmup = 10\npreset = "base"\n', encoding="utf-8")
    for argv in (["--lr", "5e-4", "--config", str(file)], ["--config", str(file), "--lr", "5e-4"]):
        resolved = parsed(argv)
        assert resolved.lr == 5e-4 and resolved.warmup == 10 and resolved.preset == "base"


def test_dump_config_round_trips_and_trains_nothing(tmp_path: Path, tsv: Path) -> None:
    run = tmp_path / "run"
    first = dumped(["--data", str(tsv), "--out", str(run), "--dropout", "0.3", "--quiet"])
    assert not run.exists()
    assert first["dropout"] == 0.3 and first["data"] == str(tsv) and first["quiet"] is True
    # Every option a file may hold is in the dump, and nothing else.
    subparsers = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(first) == set(options_of(subparsers.choices["train"]))
    file = tmp_path / "dumped.yaml"
    file.write_text(yaml.safe_dump(first), encoding="utf-8")
    assert dumped(["--config", str(file)]) == first


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max-token: 3072\n", "unknown option 'max-token'; did you mean 'max_tokens'?"),
        ("frobnicate: 1\n", "unknown option 'frobnicate'; `qkv train --help` lists them"),
        ("max-tokens: -5\n", "max-tokens: "),
        ("lr: fast\n", "lr: "),
        ("preset: huge\n", "preset: 'huge' is not one of"),
        ("pre-ln: yes please\n", "pre-ln: 'yes please' must be true or false"),
        ("max-steps: [1, 2]\n", "max-steps: [1, 2] must be a single"),
        ("max-steps: true\n", "max-steps: True must be a single"),
        ("- lr: 1\n", "holds a list; it must map option names to values"),
        ("lr: [1\n", "not valid YAML (line 2"),
    ],
)
def test_a_bad_file_names_the_option_and_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text(text, encoding="utf-8")
    err = fails(["--config", str(file), "--out", str(tmp_path / "run")], capsys)
    assert f"qkv train: error: --config {file}: " in err and message in err, err
    assert not (tmp_path / "run").exists()


def test_a_missing_or_broken_config_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["train", "--config", str(tmp_path / "nope.yaml")])
    assert done.value.code == 2
    assert f"argument --config: {tmp_path / 'nope.yaml'}: no such file" in capsys.readouterr().err
    file = tmp_path / "run.toml"
    file.write_text("lr = = 1\n", encoding="utf-8")
    assert "not valid TOML" in fails(["--config", str(file)], capsys)


def test_a_run_keeps_its_resolved_options_and_they_repeat_it(tmp_path: Path, tsv: Path) -> None:
    """train.yaml of a run, given back as --config (with another --out), trains the same weights."""
    first = tmp_path / "first"
    argv = ["--data", str(tsv), "--src-col", "2", "--tgt-col", "1", *TINY, "--max-steps", "3"]
    assert cli.main(["train", *argv, "--out", str(first)]) == 0
    saved = first / "train.yaml"
    assert yaml.safe_load(saved.read_text(encoding="utf-8"))["max_steps"] == 3
    again = tmp_path / "again"
    assert cli.main(["train", "--config", str(saved), "--out", str(again)]) == 0
    last = "checkpoints/step-00000003/model.safetensors"
    weights = [safetensors.torch.load_file(run / last) for run in (first, again)]
    assert weights[0].keys() == weights[1].keys()
    assert all(weights[0][k].equal(weights[1][k]) for k in weights[0])
    # Resuming keeps the run's own file; a refused second run into the same directory does not touch it.
    before = saved.read_bytes()
    assert cli.main(["train", "--resume", str(first), "--max-steps", "4", "--quiet", "--threads", "1"]) == 0
    assert cli.main(["train", *argv, "--lr", "1e-2", "--out", str(first)]) == 2
    assert saved.read_bytes() == before
