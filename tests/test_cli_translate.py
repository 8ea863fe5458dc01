"""qkv translate / evaluate / attention / average as a user runs them, on a tiny saved model."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qkv import checkpoint
from qkv.averaging import average_run
from qkv.cli import build_parser
from qkv.cli import main as qkv_main
from qkv.cli.translate import load_translator
from qkv.config import preset
from qkv.data import demo
from qkv.decode import Lengths, SearchConfig
from qkv.evaluate import score
from qkv.models import saved
from qkv.models.seq2seq import Transformer
from qkv.tokenize import train_bpe
from qkv.translator import Translator
from qkv.viz import BUNDLED_FONT, attention_weights, plot_attention

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def save_tiny_model(path: Path) -> Path:
    """A randomly initialised tiny model with a real tokenizer, saved in ``path`` as qkv train would."""
    pairs = demo.generate(size=300)
    tok = train_bpe([t for pair in pairs for t in pair], 300)
    torch.manual_seed(0)
    model = Transformer(preset("tiny", tok.vocab_size, dropout=0.0, max_positions=64))
    checkpoint.save_directory(
        path,
        tensors={checkpoint.MODEL_FILE: model.state_dict()},
        json={checkpoint.CONFIG_FILE: {"model": model.config.to_dict()}},
        text=saved.tokenizer_files(tok, tok),
    )
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model") / "m")


def qkv(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "qkv", *args],
        input=stdin,
        capture_output=True,
        env=ENV,
        timeout=300,
        check=False,
    )


def test_stdin_keeps_line_alignment_through_empty_long_and_invalid_lines(model_dir: Path) -> None:
    lines = [
        b"\xe6\x88\x91\xe7\x88\xb1\xe4\xbd\xa0",
        b"",
        "很".encode() * 10_000,
        b"\xff\xfe bad",
        "他很高。".encode(),
    ]
    result = qkv("translate", "--model", str(model_dir), "--beam", "1", stdin=b"\n".join(lines) + b"\n")
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode("utf-8").split("\n")
    assert out[-1] == "" and len(out) == 6  # exactly five lines, each ended by \n
    assert out[1] == ""  # empty in, empty out
    err = result.stderr.decode()
    assert "line 3:" in err and "truncat" in err  # the 10,000-character line, named
    assert "line 4: invalid UTF-8" in err
    # Line i answers input i: the same sentences translated alone give the same lines.
    alone = qkv("translate", "--model", str(model_dir), "--beam", "1", "我爱你", "他很高。")
    assert alone.stdout.decode().split("\n")[:2] == [out[0], out[4]]


def test_ten_thousand_lines_in_ten_thousand_lines_out(model_dir: Path) -> None:
    words = ["我", "你", "他很高。", "", "我们"]
    stdin = "".join(words[i % len(words)] + "\n" for i in range(10_000)).encode()
    result = qkv("translate", "--model", str(model_dir), "--beam", "1", "--batch-size", "256", "--max-len-b", "3",
                 stdin=stdin)  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode().split("\n")[:-1]
    assert len(out) == 10_000
    assert all(out[i] == "" for i in range(3, 10_000, 5))  # every empty input line stays empty, in place
    assert len({out[i] for i in range(0, 10_000, 5)}) == 1  # the same sentence, the same translation


def test_output_starts_while_input_is_still_arriving(model_dir: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "qkv", "translate", "--model", str(model_dir), "--beam", "1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=ENV,
    )  # fmt: skip
    assert process.stdin is not None and process.stdout is not None
    try:
        process.stdin.write("我爱你\n".encode())
        process.stdin.flush()
        ready, _, _ = select.select([process.stdout], [], [], 120)  # stdin stays open
        assert ready, "no output while the input stream is still open"
        first = process.stdout.readline()
        assert first.endswith(b"\n")
    finally:
        process.stdin.close()
        process.wait(timeout=60)


def test_translator_empty_and_truncated_inputs(model_dir: Path) -> None:
    loaded = saved.load(model_dir)
    warnings: list[str] = []
    t = Translator(
        loaded.model,
        loaded.src_tokenizer,
        loaded.tgt_tokenizer,
        search=SearchConfig(method="greedy"),
        warn=warnings.append,
    )
    out = t.translate(["", "   ", "我" * 500], first_line=7)
    assert out[0] == "" and out[1] == ""
    assert len(warnings) == 1 and warnings[0].startswith("line 9:")


def test_evaluate_equals_the_sacrebleu_command_line(model_dir: Path, tmp_path: Path) -> None:
    pairs = demo.generate(size=60, seed=3)
    data = tmp_path / "test.tsv"
    demo.write_tsv(data, pairs)
    hyps = tmp_path / "hyps.txt"
    result = qkv("evaluate", "--model", str(model_dir), "--data", str(data), "--src-col", "2", "--tgt-col", "1",
                 "--beam", "2", "--output", str(hyps), "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    refs = tmp_path / "refs.txt"
    refs.write_text("".join(en + "\n" for _, en in pairs), encoding="utf-8")
    cli = subprocess.run(
        [sys.executable, "-m", "sacrebleu", str(refs), "-i", str(hyps), "-m", "bleu", "chrf", "-w", "2", "-b"],
        capture_output=True, text=True, check=True, env=ENV,
    )  # fmt: skip
    bleu, chrf = json.loads(cli.stdout)  # -b prints the scores alone, as a JSON list for two metrics
    ours = result.stdout.decode()
    assert f"BLEU = {bleu:.2f}" in ours and f"chrF = {chrf:.2f}" in ours
    signature = subprocess.run(
        [sys.executable, "-m", "sacrebleu", str(refs), "-i", str(hyps), "-m", "bleu", "--format", "text"],
        capture_output=True, text=True, check=True, env=ENV,
    ).stdout  # fmt: skip
    assert "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" in signature
    assert "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" in ours


def test_score_refuses_different_line_counts_and_picks_zh_tokenization() -> None:
    with pytest.raises(ValueError, match="2 hypotheses but 3 references"):
        score(["a", "b"], ["a", "b", "c"])
    zh = score(["我 爱 你 们 的 老 师"], ["我爱你们的老师"])  # zh tokenization splits characters
    assert "tok:zh" in zh.bleu_signature and zh.bleu == pytest.approx(100.0)


def test_attention_weights_are_distributions_and_decoder_self_attention_is_causal(model_dir: Path) -> None:
    loaded = saved.load(model_dir)
    maps = attention_weights(
        loaded.model, loaded.src_tokenizer, loaded.tgt_tokenizer, "我爱你。", "I love you."
    )
    assert (
        maps.src_tokens[-1] == "</s>" and maps.tgt_in_tokens[0] == "<s>" and maps.tgt_out_tokens[-1] == "</s>"
    )
    for kind in ("encoder", "decoder_self", "cross"):
        rows, cols = maps.axes(kind)
        for w in maps.layers(kind):
            assert w.shape == (loaded.model.config.heads, len(rows), len(cols))
            torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
    upper = torch.triu(torch.ones(len(maps.tgt_out_tokens), len(maps.tgt_in_tokens), dtype=torch.bool), 1)
    assert all(bool((w[:, upper] == 0).all()) for w in maps.decoder_self)


def test_attention_plot_is_written_with_the_bundled_cjk_font(model_dir: Path, tmp_path: Path) -> None:
    from fontTools.ttLib import TTFont

    from qkv import viz

    font = Path(viz.__file__).parent / "fonts" / BUNDLED_FONT
    assert ord("我") in TTFont(font, lazy=True).getBestCmap()  # the glyphs the demo draws are covered
    result = qkv("attention", "--model", str(model_dir), "我爱你", "--target", "I love you.",
                 "--out", str(tmp_path / "a.png"), "--layers", "0", "--heads", "0", "1")  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="head 9 does not exist"):
        loaded = saved.load(model_dir)
        maps = attention_weights(loaded.model, loaded.src_tokenizer, loaded.tgt_tokenizer, "我", "I")
        plot_attention(maps, tmp_path / "b.png", heads=[9])


def test_average_of_checkpoints_is_the_elementwise_mean(model_dir: Path, tmp_path: Path) -> None:
    config = checkpoint.load_json(model_dir / checkpoint.CONFIG_FILE)
    base = checkpoint.load_tensors(model_dir / checkpoint.MODEL_FILE)
    tokenizer = (model_dir / "tokenizer.json").read_text(encoding="utf-8")
    run = tmp_path / "run"
    for step, shift in ((1, 0.0), (2, 1.0), (3, 5.0)):
        shifted = {k: v + shift if v.is_floating_point() else v for k, v in base.items()}
        checkpoint.commit_checkpoint(run, f"step-{step:08d}", tensors={checkpoint.MODEL_FILE: shifted},
                                     json={checkpoint.CONFIG_FILE: config}, text={"tokenizer.json": tokenizer})  # fmt: skip
    out, chosen = average_run(run, 2, tmp_path / "avg")
    assert [p.name for p in chosen] == ["step-00000002", "step-00000003"]
    averaged = checkpoint.load_tensors(out / checkpoint.MODEL_FILE)
    name = "encoder.0.self_attn.q_proj.weight"
    torch.testing.assert_close(averaged[name], base[name] + 3.0)  # (1 + 5) / 2
    assert saved.load(out).model.config == saved.load(model_dir).model.config
    with pytest.raises(ValueError, match="only 3 exist"):
        average_run(run, 5, tmp_path / "avg5")


def test_int8_translates_like_float32_and_refuses_a_gpu(model_dir: Path) -> None:
    """--int8 on a random tiny model: outputs line up with the input; a GPU request is refused."""
    lines = ["我爱你", "你好吗？", "", "他们在学校。"]
    stdin = "\n".join(lines).encode() + b"\n"
    plain = qkv("translate", "--model", str(model_dir), "--beam", "1", stdin=stdin)
    int8 = qkv("translate", "--model", str(model_dir), "--beam", "1", "--int8", stdin=stdin)
    assert plain.returncode == 0 and int8.returncode == 0, int8.stderr.decode()
    assert len(int8.stdout.decode().split("\n")) == len(plain.stdout.decode().split("\n")) == len(lines) + 1
    refused = qkv("translate", "--model", str(model_dir), "--int8", "--device", "cuda", "x")
    assert refused.returncode != 0
    assert b"--int8" in refused.stderr or b"cuda" in refused.stderr.lower()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], SearchConfig(method="beam", beam=4)),
        (["--beam", "1"], SearchConfig(method="greedy", beam=1)),  # --beam 1 is greedy decoding
        (
            ["--beam", "5", "--alpha", "1", "--max-len-a", "2.5", "--max-len-b", "3"],
            SearchConfig(method="beam", beam=5, alpha=1.0, lengths=Lengths(max_len_a=2.5, max_len_b=3)),
        ),
    ],
)
@pytest.mark.parametrize("command", ["translate", "evaluate", "attention"])
def test_decoding_flags_build_one_search_config(
    model_dir: Path, tmp_path: Path, command: str, flags: list[str], expected: SearchConfig
) -> None:
    data = tmp_path / "test.tsv"
    data.write_text("我爱你\tI love you.\n", encoding="utf-8")
    own = {"translate": [], "evaluate": ["--data", str(data)], "attention": ["我爱你"]}[command]
    args = build_parser().parse_args([command, "--model", str(model_dir), *own, *flags])
    assert load_translator(args).search == expected


@pytest.mark.parametrize(
    ("beam", "expected"),
    [("1", SearchConfig(method="greedy", beam=1)), ("3", SearchConfig(method="beam", beam=3))],
)
def test_distill_builds_its_search_config_like_translate(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, beam: str, expected: SearchConfig
) -> None:
    from qkv import distill

    given: list[SearchConfig] = []

    def record(*args: object, search: SearchConfig, **kwargs: object) -> int:
        given.append(search)
        return 0

    monkeypatch.setattr(distill, "distill", record)
    data = tmp_path / "train.tsv"
    data.write_text("我爱你\tI love you.\n", encoding="utf-8")
    out = tmp_path / "distilled.tsv"
    argv = ["distill", "--teacher", str(model_dir), "--data", str(data), "--out", str(out), "--beam", beam]
    assert qkv_main(argv) == 0
    assert given == [expected]
