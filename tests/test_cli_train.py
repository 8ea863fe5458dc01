"""`qkv train` on the command line: its help, its errors (exit code 2, naming what is wrong and where), and
what --resume keeps from the run."""

from __future__ import annotations

import argparse
import inspect
import json
import re
from pathlib import Path

import pytest

from qkv import checkpoint, cli
from qkv.cli.train import cmd_train
from qkv.data import demo
from tests.train.runs import train_here

TINY = ["--preset", "tiny", "--vocab-size", "200", "--max-tokens", "256", "--threads", "1", "--quiet"]


def train_parser() -> argparse.ArgumentParser:
    subparsers = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices["train"]


@pytest.fixture
def tsv(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.tsv"
    demo.write_tsv(path, demo.generate(seed=0, size=200))  # English<TAB>Chinese
    return path


def test_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["train", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    options = [a for a in train_parser()._actions if a.option_strings and a.dest != "help"]
    for action in options:
        assert action.help, f"{action.option_strings} has no help"
        for option in action.option_strings:
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text), option
    # Independently of the parser: every args.NAME that cmd_train reads is an option --NAME-with-dashes.
    read = set(re.findall(r"args\.(\w+)", inspect.getsource(cmd_train)))
    assert {"out", "resume", "max_steps", "seed", "data"} <= read
    for name in read:
        assert f"--{name.replace('_', '-')}" in text, name
    assert "exit codes" in text and "130/143" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "--out DIR"),
        (["--src", "a.zh"], "--src and --tgt go together"),
        (["--tgt", "a.en"], "--src and --tgt go together"),
        (["--data", "x.tsv", "--src", "a.zh", "--tgt", "a.en"], "not both"),
        (["--resume", "a", "--out", "b"], "leave out --out"),
        (["--valid-src", "a.zh"], "--valid-src and --valid-tgt go together"),
        (["--valid", "x.tsv", "--valid-src", "a.zh", "--valid-tgt", "a.en"], "not both"),
    ],
)
def test_bad_usage_exits_2_with_a_message(
    argv: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("x.tsv", "a.zh", "a.en"):  # files the flags name exist: what is wrong is their combination
        (tmp_path / name).write_text("", encoding="utf-8")
    assert cli.main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qkv train: error: ") and message in err


def test_a_bad_corpus_line_exits_2_naming_file_and_line(tmp_path: Path, tsv: Path) -> None:
    lines = tsv.read_text(encoding="utf-8").split("\n")
    lines[6] = "a line without a tab"  # line 7
    bad = tmp_path / "bad.tsv"
    bad.write_text("\n".join(lines), encoding="utf-8")
    out = tmp_path / "run"
    output = train_here(
        ["--data", str(bad), "--src-col", "2", "--tgt-col", "1", "--out", str(out), *TINY], expect=2
    )
    assert f"qkv train: error: {bad}:7: " in output
    assert not out.exists()  # nothing written for a run that never started


def test_resume_without_a_checkpoint_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for run in (tmp_path / "missing", tmp_path):
        assert cli.main(["train", "--resume", str(run), "--max-steps", "3"]) == 2
        err = capsys.readouterr().err
        assert f"{run}: no checkpoint to resume from" in err


def test_training_into_an_existing_run_without_resume_is_refused(tmp_path: Path, tsv: Path) -> None:
    out = tmp_path / "run"
    data = ["--data", str(tsv), "--src-col", "2", "--tgt-col", "1", *TINY]
    train_here([*data, "--max-steps", "2", "--out", str(out)])
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    latest = checkpoint.latest_checkpoint(out)
    output = train_here([*data, "--max-steps", "4", "--out", str(out)], expect=2)
    assert f"{out}: already holds a training run; pass --resume {out}" in output
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert checkpoint.latest_checkpoint(out) == latest


def test_resume_alone_keeps_the_runs_stop_conditions_and_data(
    tmp_path: Path, tsv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    monkeypatch.chdir(tsv.parent)
    data = ["--data", tsv.name, "--src-col", "2", "--tgt-col", "1"]  # a relative path
    train_here([*data, *TINY, "--max-steps", "3", "--log-every", "1", "--out", str(out)])
    # Nothing but --resume, from another directory: the same data (not the demo corpus), the same limit
    # (not 10 epochs), so the finished run stays finished; no step 4.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    output = train_here(["--resume", str(out), "--threads", "1", "--quiet"])
    assert f"{tsv}: 200 pairs" in output and "demo corpus" not in output
    assert "stopped (max_steps) at step 3" in output
    # A new limit continues it.
    output = train_here(["--resume", str(out), "--max-steps", "5", "--threads", "1", "--quiet"])
    assert "resumed from" in output and "stopped (max_steps) at step 5" in output
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().split("\n") if line]
    assert steps == [1, 2, 3, 4, 5]
    state = checkpoint.load_json(checkpoint.latest_checkpoint(out) / checkpoint.TRAINER_STATE_FILE)
    assert state["step"] == 5 and state["train_config"]["max_steps"] == 5


def test_valid_bleu_logs_sacrebleu_of_greedy_translations(tmp_path: Path, tsv: Path) -> None:
    out = tmp_path / "run"
    data = ["--data", str(tsv), "--valid", str(tsv), "--src-col", "2", "--tgt-col", "1", *TINY]
    train_here([*data, "--max-steps", "2", "--valid-every", "2", "--valid-bleu", "20", "--out", str(out)])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    validations = [r for r in records if "valid_nll" in r]
    assert validations and all(0.0 <= r["valid_bleu"] <= 100.0 for r in validations)
