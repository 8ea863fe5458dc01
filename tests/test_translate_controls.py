"""qkv translate's decoding controls as a user runs them: n-best lists and scores, sampling, the jsonl and
tsv formats, jsonl input, prefixes, constraints, a glossary and word alignments, on a tiny saved model.

Scores are checked against a float64 copy of the model teacher-forced on each output (an independent
recomputation); texts against what the flags promise (a prefix verbatim, every constraint phrase present).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch

from qkv.cli import main as qkv_main
from qkv.models import saved
from tests.test_cli_translate import save_tiny_model

SENTENCES = ["我爱你", "他很高。", "我们昨天吃了苹果。", "她有一只猫。"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("controls") / "m")


@pytest.fixture(scope="module")
def loaded(model_dir: Path) -> saved.SavedModel:
    return saved.load(model_dir)


def translate(
    model_dir: Path,
    *flags: str,
    stdin: str | None = None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[int, str, str]:
    """``qkv translate --model MODEL FLAGS`` through the command's entry point: (exit code, stdout, stderr)."""
    if stdin is not None:
        path = tmp_path / "stdin.txt"
        path.write_text(stdin, encoding="utf-8")
        monkeypatch.setattr("sys.stdin", path.open("rb"))
    capsys.readouterr()
    try:
        code = qkv_main(["translate", "--model", str(model_dir), *flags])
    except SystemExit as e:  # argparse's refusals exit from inside
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def run(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    def call(*flags: str, stdin: str | None = None) -> tuple[int, str, str]:
        return translate(
            model_dir, *flags, stdin=stdin, tmp_path=tmp_path, capsys=capsys, monkeypatch=monkeypatch
        )

    return call


def teacher_forced_log_prob(loaded: saved.SavedModel, text: str, tokens: list[str]) -> float:
    """log P(tokens, </s> | text) from a float64 copy of the model, one teacher-forced pass, summed in
    Python; the source is the text's ids and </s>, as training made them."""
    model64 = copy.deepcopy(loaded.model).double().eval()
    c = model64.config
    tok = loaded.tgt_tokenizer
    ids = [tok.token_to_id(t) for t in tokens]
    assert all(i is not None for i in ids)
    source = [*loaded.src_tokenizer.encode(text), c.eos_id]
    with torch.no_grad():
        logits = model64(torch.tensor([source]), torch.tensor([[c.bos_id, *ids]]))  # (1, len + 1, vocab)
        log_probs = torch.log_softmax(logits[0], dim=-1)
    return sum(float(log_probs[k, t]) for k, t in enumerate([*ids, c.eos_id]))


def gnmt_penalty(length: int, alpha: float) -> float:
    """((5 + |Y|) / 6)^alpha with |Y| counting </s> (Wu et al. 2016, section 7)."""
    return ((5 + length) / 6) ** alpha


def test_n_best_is_sorted_by_score_and_scores_are_teacher_forced_log_probs(run, loaded) -> None:  # type: ignore[no-untyped-def]
    code, out, err = run("--beam", "5", "--n-best", "4", "--format", "jsonl", "--alpha", "0.8", *SENTENCES)
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == len(SENTENCES)
    for text, record in zip(SENTENCES, records, strict=True):
        n_best = record["n_best"]
        assert len(n_best) == 4
        scores = [c["score"] for c in n_best]
        assert scores == sorted(scores, reverse=True)
        assert record["text"] == n_best[0]["text"] and record["score"] == n_best[0]["score"]
        assert record["tokens"] == n_best[0]["tokens"]
        assert len({tuple(c["tokens"]) for c in n_best}) == 4  # four different candidates
        for candidate in n_best:
            expected = teacher_forced_log_prob(loaded, text, candidate["tokens"])
            # float32 decoding against float64: a few units in the sixth digit over ~20 tokens
            assert candidate["log_prob"] == pytest.approx(expected, abs=2e-4)
            length = len(candidate["tokens"]) + 1
            assert candidate["score"] == pytest.approx(expected / gnmt_penalty(length, 0.8), abs=2e-4)


def test_scores_and_tsv_give_the_same_numbers_as_jsonl(run) -> None:  # type: ignore[no-untyped-def]
    code, out, err = run("--beam", "3", "--n-best", "3", "--format", "jsonl", *SENTENCES[:2])
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    code, tsv, err = run("--beam", "3", "--n-best", "3", "--format", "tsv", *SENTENCES[:2])
    assert code == 0, err
    rows = [row.split("\t") for row in tsv.splitlines()]
    assert [(r[0], r[1]) for r in rows] == [(str(i), str(k)) for i in (1, 2) for k in (1, 2, 3)]
    for number, rank, score, text in rows:
        candidate = records[int(number) - 1]["n_best"][int(rank) - 1]
        assert score == f"{candidate['score']:.4f}" and text == candidate["text"]
    code, text_out, err = run("--beam", "3", "--scores", *SENTENCES[:2])
    assert code == 0, err
    assert text_out.splitlines() == [f"{r['score']:.4f}\t{r['text']}" for r in records]


def test_tsv_has_a_row_per_candidate_and_the_alignment_on_the_best(run) -> None:  # type: ignore[no-untyped-def]
    stdin = "我爱你\n\n他很高。\n"
    code, out, err = run("--beam", "2", "--n-best", "2", "--format", "tsv", "--align", stdin=stdin)
    assert code == 0, err
    rows = [row.split("\t") for row in out.splitlines()]
    assert all(len(row) == 5 for row in rows)
    # the empty line gives its one empty candidate, named by its line number
    assert [(r[0], r[1]) for r in rows] == [("1", "1"), ("1", "2"), ("2", "1"), ("3", "1"), ("3", "2")]
    assert rows[2][3] == "" and rows[2][4] == ""
    assert rows[1][4] == "" and rows[4][4] == ""  # the alignment is the best candidate's
    assert re.fullmatch(r"\d+-\d+( \d+-\d+)*", rows[0][4])


def test_sampling_is_reproducible_by_seed_and_the_same_at_every_batch_size(run) -> None:  # type: ignore[no-untyped-def]
    lines = [SENTENCES[k % 4] for k in range(9)]
    stdin = "".join(line + "\n" for line in lines)
    flags = ("--sample", "--seed", "11", "--max-len-b", "6")
    outputs = []
    for batch_size in ("1", "2", "64"):
        code, out, err = run(*flags, "--batch-size", batch_size, stdin=stdin)
        assert code == 0, err
        outputs.append(out.splitlines())
    assert outputs[0] == outputs[1] == outputs[2]
    assert len(outputs[0]) == 9
    # lines 1 and 5 are the same sentence, drawn separately: a random tiny model gives two samples
    assert outputs[0][0] != outputs[0][4]
    code, again, err = run(*flags, "--batch-size", "3", stdin=stdin)
    assert again.splitlines() == outputs[0]
    code, other, err = run("--sample", "--seed", "12", "--max-len-b", "6", stdin=stdin)
    assert code == 0 and other.splitlines() != outputs[0]
    code, filtered, err = run(*flags, "--temperature", "0.5", "--top-k", "5", "--top-p", "0.9", stdin=stdin)
    assert code == 0 and len(filtered.splitlines()) == 9


def test_a_sample_is_scored_with_the_models_log_probs(run, loaded) -> None:  # type: ignore[no-untyped-def]
    code, out, err = run("--sample", "--seed", "5", "--max-len-b", "6", "--format", "jsonl", *SENTENCES)
    assert code == 0, err
    for text, line in zip(SENTENCES, out.splitlines(), strict=True):
        record = json.loads(line)
        expected = teacher_forced_log_prob(loaded, text, record["tokens"])
        assert record["n_best"][0]["log_prob"] == pytest.approx(expected, abs=2e-4)


def test_top_k_one_samples_the_greedy_output(run) -> None:  # type: ignore[no-untyped-def]
    code, greedy, err = run("--beam", "1", *SENTENCES)
    assert code == 0, err
    code, sampled, err = run("--sample", "--top-k", "1", "--seed", "3", *SENTENCES)
    assert code == 0, err
    assert sampled == greedy


def test_jsonl_output_carries_text_n_best_scores_tokens_and_alignment(run, loaded) -> None:  # type: ignore[no-untyped-def]
    code, out, err = run("--beam", "2", "--n-best", "2", "--format", "jsonl", "--align", "我爱你。", "")
    assert code == 0, err
    first, empty = (json.loads(line) for line in out.splitlines())
    assert set(first) == {"text", "score", "tokens", "n_best", "alignment", "source_words", "target_words"}
    assert first["source_words"] == ["我", "爱", "你", "。"]
    tok = loaded.tgt_tokenizer
    ids = [tok.token_to_id(t) for t in first["tokens"]]
    assert first["text"] == tok.decode(ids).strip()
    pairs = [tuple(map(int, p.split("-"))) for p in first["alignment"].split()]
    assert [j for _, j in pairs] == list(range(len(first["target_words"])))  # one link per output word
    assert all(0 <= i < 4 for i, _ in pairs)
    assert empty["text"] == "" and empty["alignment"] == "" and empty["n_best"][0]["tokens"] == []


def test_a_prefix_is_kept_verbatim_and_scored(run, loaded) -> None:  # type: ignore[no-untyped-def]
    code, out, err = run("--prefix", "I do", "--format", "jsonl", *SENTENCES)
    assert code == 0, err
    for text, line in zip(SENTENCES, out.splitlines(), strict=True):
        record = json.loads(line)
        assert record["text"].startswith("I do")
        expected = teacher_forced_log_prob(loaded, text, record["tokens"])
        assert record["n_best"][0]["log_prob"] == pytest.approx(expected, abs=2e-4)
    stdin = '{"text": "我爱你", "prefix": "They"}\n{"text": "他很高。"}\n'
    code, out, err = run("--prefix", "I do", "--input-format", "jsonl", stdin=stdin)
    assert code == 0, err
    first, second = out.splitlines()
    assert first.startswith("They") and second.startswith("I do")  # a line's prefix replaces the flag's


def test_every_constraint_phrase_appears(run) -> None:  # type: ignore[no-untyped-def]
    code, out, err = run("--constraints", "love you", "--constraint", "yesterday", *SENTENCES)
    assert code == 0, err
    for line in out.splitlines():
        assert "love you" in line and "yesterday" in line
    requests = [
        {"text": "我爱你", "constraints": ["tall", "cats"]},
        {"text": "他很高。", "constraints": []},
        {"text": "她有一只猫。", "constraints": ["three books"], "prefix": "She"},
    ]
    stdin = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in requests)
    code, out, err = run("--input-format", "jsonl", stdin=stdin)
    assert code == 0, err
    first, second, third = out.splitlines()
    assert "tall" in first and "cats" in first
    assert third.startswith("She") and "three books" in third
    code, plain, err = run("他很高。")
    assert second == plain.strip()  # no constraints: the plain beam's output


def test_a_glossary_term_is_a_constraint_only_where_its_source_term_is(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    glossary = tmp_path / "terms.tsv"
    glossary.write_text("# source<TAB>target\n猫\tkitten\n苹果\tapples\n", encoding="utf-8")
    code, plain, err = run(*SENTENCES)
    assert code == 0, err
    code, out, err = run("--glossary", str(glossary), *SENTENCES)
    assert code == 0, err
    plain_lines, lines = plain.splitlines(), out.splitlines()
    assert "kitten" in lines[3] and "apples" in lines[2]  # 她有一只猫。 and 我们昨天吃了苹果。
    assert lines[0] == plain_lines[0] and lines[1] == plain_lines[1]  # no term: untouched
    bad = tmp_path / "bad.tsv"
    bad.write_text("猫\tkitten\n狗\n", encoding="utf-8")
    code, out, err = run("--glossary", str(bad), "我爱你")
    assert code == 2 and f"{bad}:2: expected 2 tab-separated columns" in err
    unwritable = tmp_path / "unwritable.tsv"
    unwritable.write_text("猫\tЖук\n", encoding="utf-8")
    code, out, err = run("--glossary", str(unwritable), "我爱你")
    assert code == 2 and f"--glossary {unwritable}: target term 'Жук': the model's vocabulary cannot" in err


def test_a_phrase_the_vocabulary_cannot_write_is_a_bad_line(run) -> None:  # type: ignore[no-untyped-def]
    # <unk> decodes to nothing, so a constraint spelt with it could never be in the text.
    stdin = '{"text": "我爱你"}\n{"text": "我爱你", "constraints": ["big Жук"]}\n{"text": "他很高。", "prefix": "Ж"}\n'
    code, out, err = run("--input-format", "jsonl", "--skip-bad", stdin=stdin)
    assert code == 0, err
    assert out.split("\n")[1:] == ["", "", ""]
    assert "line 2: constraint 'big Жук': the model's vocabulary cannot write 'Жук'" in err
    assert "line 3: prefix 'Ж': the model's vocabulary cannot write 'Ж'" in err


def test_controls_longer_than_the_model_can_write_name_their_line(run) -> None:  # type: ignore[no-untyped-def]
    # The tiny model has 64 positions: at most 63 output tokens; "love" is one token, 70 of them too many.
    long = " ".join(["love"] * 70)
    stdin = json.dumps({"text": "我爱你"}) + "\n" + json.dumps({"text": "他", "constraints": [long]}) + "\n"
    code, out, err = run("--input-format", "jsonl", "--skip-bad", stdin=stdin)
    assert code == 0, err
    assert out.split("\n")[1:] == ["", ""]
    assert "line 2: its prefix and constraints need 70 tokens, more than the 63 the model can write" in err
    code, out, err = run("--prefix", long, stdin="\n我爱你\n")
    assert code == 2 and out == "\n"  # the empty line 1 was answered
    assert "line 2: its prefix and constraints need 70 tokens" in err


def test_a_malformed_jsonl_line_stops_with_its_number_after_the_lines_before_it(run) -> None:  # type: ignore[no-untyped-def]
    good = ['{"text": "我爱你"}', '{"text": "他很高。"}']
    cases = {
        "{not json": "line 3: not valid JSON",
        '{"text": 3}': 'line 3: "text" must be a string, got a number',
        '{"txt": "我"}': 'line 3: unknown field "txt"',
        '{"prefix": "I"}': 'line 3: no "text" field',
        '["我爱你"]': "line 3: expected a JSON object",
        '{"text": "我", "constraints": "I"}': 'line 3: "constraints" must be a list of strings',
        '{"text": "我", "constraints": [""]}': 'line 3: "constraints"[0] is empty',
        "": "line 3: empty",
        '{"text": "\\ud800我"}': "line 3: \"text\" holds '\\ud800', half of a surrogate pair, not a character",
        '{"text": "我", "constraints": ["I", "\\udc00"]}': "line 3: \"constraints\"[1] holds '\\udc00', half of",
        '{"text": "我", "text": "你"}': 'line 3: field "text" given twice',
        "[" * 100_000 + "]" * 100_000: "line 3: JSON nested too deeply",
    }
    code, expected, err = run(*SENTENCES[:2])
    for bad, message in cases.items():
        stdin = "".join(line + "\n" for line in [*good, bad, '{"text": "她有一只猫。"}'])
        code, out, err = run("--input-format", "jsonl", stdin=stdin)
        assert code == 2, bad
        assert message in err, (bad, err)
        assert out == expected  # the two lines before it were answered, and nothing after it


def test_a_byte_order_mark_may_open_a_jsonl_file(run) -> None:  # type: ignore[no-untyped-def]
    code, expected, err = run("我爱你")
    code, out, err = run("--input-format", "jsonl", stdin='\ufeff{"text": "我爱你"}\n')
    assert code == 0 and out == expected, err


def test_skip_bad_keeps_every_line_in_its_place(run) -> None:  # type: ignore[no-untyped-def]
    stdin = '{"text": "我爱你"}\n{"text": 3}\n\n{"text": "他很高。"}\n'
    code, expected, err = run("我爱你", "他很高。")
    first, fourth = expected.splitlines()
    code, out, err = run("--input-format", "jsonl", "--skip-bad", stdin=stdin)
    assert code == 0, err
    assert out.split("\n") == [first, "", "", fourth, ""]
    assert "line 2:" in err and "line 3:" in err
    code, out, err = run("--input-format", "jsonl", "--skip-bad", "--format", "jsonl", stdin=stdin)
    records = [json.loads(line) for line in out.splitlines()]
    assert [r.get("line") for r in records] == [None, 2, 3, None]
    assert records[0]["text"] == first and records[3]["text"] == fourth
    assert "error" in records[1] and "error" in records[2]
    code, out, err = run("--input-format", "jsonl", "--skip-bad", "--format", "tsv", stdin=stdin)
    assert [row.split("\t")[0] for row in out.splitlines()] == ["1", "4"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--n-best", "5", "--format", "tsv"], "--n-best 5 needs a beam at least as wide: add --beam 5"),
        (["--beam", "3", "--n-best", "3"], "add --format tsv"),
        (["--top-k", "5"], "--top-k is a sampling option: add --sample"),
        (["--sample", "--constraint", "I"], "constraints need beam search"),
        (["--skip-bad"], "--skip-bad skips malformed jsonl lines"),
        (["--align-layer", "1"], "--align-layer picks the layer that --align reads: add --align"),
        (["--align", "--align-layer", "9"], "--align-layer 9: the model's decoder has layers 0 to 1"),
        (["--top-p", "0", "--sample"], "argument --top-p: must be in (0, 1], got 0"),
        (["--temperature", "0", "--sample"], "argument --temperature: must be > 0, got 0"),
        (["--constraint", " "], "constraint ' ' is empty"),
        (["--constraints", "big Жук"], "--constraints 'big Жук': the model's vocabulary cannot write 'Жук'"),
        (["--prefix", "Ж I"], "--prefix 'Ж I': the model's vocabulary cannot write 'Ж'"),
    ],
)
def test_flags_that_cannot_work_are_refused_with_a_reason(run, flags: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    code, out, err = run(*flags, "我爱你")
    assert code == 2 and out == ""
    assert message in err, err


NEW_FLAGS = ["--n-best", "--scores", "--sample", "--temperature", "--top-k", "--top-p", "--seed", "--format",
             "--input-format", "--skip-bad", "--prefix", "--constraints", "--glossary", "--align",
             "--align-layer"]  # fmt: skip


def test_every_new_flag_is_in_help_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        qkv_main(["translate", "--help"])
    help_text = capsys.readouterr().out
    examples = help_text[help_text.index("examples:") :]
    example_lines = [line for line in examples.splitlines() if "qkv translate" in line]
    for flag in NEW_FLAGS:
        assert re.search(rf"{flag}\b(?!-)", help_text[: help_text.index("examples:")]), flag
        assert any(re.search(rf"{flag}\b(?!-)", line) for line in example_lines), flag


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--align"], "--align"),
        (["--prefix", "I"], "--prefix"),
        (["--constraints", "love"], "--constraints"),
        (["--sample"], "--sample"),
        (["--format", "tsv", "--n-best", "2"], "--n-best"),
    ],
)
def test_a_non_autoregressive_model_refuses_the_search_controls(
    flags: list[str],
    named: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from qkv import checkpoint
    from qkv.config import NATConfig, preset
    from qkv.data import demo
    from qkv.models.nat import NATransformer
    from qkv.tokenize import train_bpe

    pairs = demo.generate(size=100)
    tok = train_bpe([t for pair in pairs for t in pair], 200)
    torch.manual_seed(0)
    nat = NATransformer(NATConfig.from_dict(preset("tiny", tok.vocab_size, max_positions=32).to_dict()))
    path = tmp_path / "nat"
    checkpoint.save_directory(
        path,
        tensors={checkpoint.MODEL_FILE: nat.state_dict()},
        json={checkpoint.CONFIG_FILE: {"model": nat.config.to_dict()}},
        text=saved.tokenizer_files(tok, tok),
    )
    code, out, err = translate(
        path, *flags, "我爱你", tmp_path=tmp_path, capsys=capsys, monkeypatch=monkeypatch
    )
    assert code == 2 and out == ""
    assert f"{named} needs an autoregressive model; {path} is non-autoregressive" in err


def test_ten_thousand_jsonl_lines_with_bad_ones_give_ten_thousand_answers_in_place(run) -> None:  # type: ignore[no-untyped-def]
    kinds = [
        '{"text": "我爱你"}',
        '{"text": 1}',
        "",
        '{"text": "他很高。", "prefix": "He"}',
        "{oops",
        '{"text": ""}',
    ]
    stdin = "".join(kinds[k % len(kinds)] + "\n" for k in range(10_000))
    flags = (
        "--beam",
        "1",
        "--max-len-b",
        "3",
        "--batch-size",
        "256",
        "--input-format",
        "jsonl",
        "--skip-bad",
    )
    code, out, err = run(*flags, "--format", "jsonl", stdin=stdin)
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 10_000
    for k, record in enumerate(records):
        bad = kinds[k % len(kinds)] in ('{"text": 1}', "", "{oops")
        assert (record.get("line") == k + 1) if bad else ("error" not in record)
    assert {records[k]["text"] for k in range(0, 10_000, 6)} == {
        records[0]["text"]
    }  # the same line, the same answer
    assert all(records[k]["text"].startswith("He") for k in range(3, 10_000, 6))
    assert all(records[k]["text"] == "" for k in range(5, 10_000, 6))
