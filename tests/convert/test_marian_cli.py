"""The commands on Marian directories, in Hugging Face's layout and in Marian's release layout, through the
real command line: evaluate scores what translate writes, attention draws its heat maps, export writes
CTranslate2 and Hugging Face directories that decode qkv's greedy tokens (run by ctranslate2 and
transformers on the exported files), and distill writes what translate gives for each source."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

from qkv.cli import main
from qkv.decode import Lengths, SearchConfig, translate_ids
from qkv.models import saved
from tests.convert.marian_dirs import corpus, make_marian_dir
from tests.convert.test_marian_npz import write_release

pytest.importorskip("sentencepiece")
pytest.importorskip("transformers")
pytest.importorskip("yaml")

MAX_TOKENS = 20  # greedy outputs compared token by token: at most 20 tokens before </s>
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One trained tiny zh->en model (swish, shared vocabulary) as a Hugging Face directory and as a Marian
    release directory. 300 steps, so that its translations differ from line to line; <pad> zero, as
    Hugging Face's converter writes an OPUS-MT model, so that both directories hold the same function."""
    root = tmp_path_factory.mktemp("cli")
    hf = make_marian_dir(root / "hf", activation="swish", zero_pad=True, train_steps=300)
    return {"hf": hf.path, "release": write_release(hf, root / "release")}


@pytest.fixture(params=["hf", "release"])
def model(request: pytest.FixtureRequest, layouts: dict[str, Path]) -> Path:
    return layouts[request.param]


def sources(count: int = 40) -> list[str]:
    """Training sources, every tenth line: the tiny model's outputs vary most there."""
    zh, _ = corpus(400)
    return [line for line in zh[::10] if line.strip()][:count]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    """``qkv ARGS`` in-process: its exit status must be 0; its stdout lines."""
    capsys.readouterr()
    assert main(list(args)) == 0
    return capsys.readouterr().out.splitlines()


def translate(capsys: pytest.CaptureFixture[str], model: Path, texts: list[str], *flags: str) -> list[str]:
    out = run(capsys, "translate", "--model", str(model), *flags, *texts)
    assert len(out) == len(texts)
    return out


def write_tsv(path: Path, sources: list[str], targets: list[str]) -> Path:
    """English in column 1, Chinese in column 2, as cmn-eng."""
    path.write_text("".join(f"{t}\t{s}\n" for s, t in zip(sources, targets, strict=True)), encoding="utf-8")
    return path


def qkv_greedy(model: Path, texts: list[str]) -> tuple[list[list[int]], Any]:
    """qkv's greedy tokens (without </s>) for ``texts``, at most MAX_TOKENS each, and the loaded model."""
    loaded = saved.load(model)
    eos = loaded.seq2seq.config.eos_id
    lengths = Lengths(max_len_a=0, max_len_b=MAX_TOKENS, max_len=MAX_TOKENS)
    ids = [[*loaded.src_tokenizer.encode(t), eos] for t in texts]
    return translate_ids(loaded.seq2seq, ids, SearchConfig(method="greedy", lengths=lengths)), loaded


def finished(rows: list[list[int]]) -> list[int]:
    """Indices of the outputs that ended with </s> before the length limit (a cut one may differ in its last
    token: each toolkit forces or drops </s> at the limit its own way)."""
    done = [i for i, row in enumerate(rows) if len(row) < MAX_TOKENS]
    assert len(done) > len(rows) // 2
    return done


def test_evaluate_scores_translate_output_as_perfect(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """References are translate's own outputs (default beam 4): evaluate must decode exactly as translate,
    so BLEU and chrF are 100. Character BLEU: the tiny model's outputs are shorter than four words."""
    texts = sources()
    hypotheses = translate(capsys, model, texts)
    assert len(set(hypotheses)) >= 3  # outputs that differ, so a line scored against another's would show
    data = write_tsv(tmp_path / "dev.tsv", texts, hypotheses)
    written = tmp_path / "hyp.txt"
    out = run(capsys, "evaluate", "--model", str(model), "--data", str(data), "--src-col", "2", "--tgt-col",
              "1", "--tokenize", "char", "--output", str(written), "--quiet")  # fmt: skip
    scores = dict(re.findall(r"^(BLEU|chrF) = ([0-9.]+)", "\n".join(out), flags=re.MULTILINE))
    assert scores == {"BLEU": "100.00", "chrF": "100.00"}
    assert written.read_text(encoding="utf-8").splitlines() == hypotheses


def test_attention_writes_a_png_of_the_translation(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    text = sources()[3]
    (expected,) = translate(capsys, model, [text])
    picture = tmp_path / "attention.png"
    out = run(capsys, "attention", "--model", str(model), text, "--out", str(picture))
    assert out == [f"{text} -> {expected}", f"wrote {picture}"]
    assert picture.read_bytes().startswith(PNG_SIGNATURE)
    with Image.open(picture) as image:
        width, height = image.size
    assert width > 200 and height > 200


def test_export_ctranslate2_decodes_qkv_greedy_tokens(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """CTranslate2 runs the export on the pieces of the exported source.spm, as a CTranslate2 user would."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    spm = pytest.importorskip("sentencepiece")
    out = tmp_path / "ct2"
    run(capsys, "export", "--model", str(model), "--format", "ctranslate2", "--out", str(out))
    texts = sources()
    ours, loaded = qkv_greedy(model, texts)
    splitter = spm.SentencePieceProcessor(model_file=str(out / "source.spm"))
    translator = ctranslate2.Translator(str(out), device="cpu", inter_threads=1, intra_threads=1)
    results = translator.translate_batch(
        [splitter.encode(t, out_type=str) for t in texts], beam_size=1, max_decoding_length=MAX_TOKENS + 1
    )
    theirs = [r.hypotheses[0] for r in results]
    tgt = loaded.tgt_tokenizer
    done = finished(ours)
    assert [[tgt.id_to_token(t) for t in ours[i]] for i in done] == [theirs[i] for i in done]


def test_export_marian_decodes_qkv_greedy_tokens_in_transformers(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Hugging Face reads the export with its own classes (MarianTokenizer on the written source.spm and
    vocab.json, MarianMTModel) and generate() gives qkv's greedy tokens and text."""
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "hf-export"
    run(capsys, "export", "--model", str(model), "--format", "marian", "--out", str(out))
    tokenizer = transformers.MarianTokenizer.from_pretrained(str(out))
    hf_model = transformers.MarianMTModel.from_pretrained(str(out)).eval()
    texts = sources()
    ours, loaded = qkv_greedy(model, texts)
    assert [tokenizer(t).input_ids[:-1] for t in texts] == [loaded.src_tokenizer.encode(t) for t in texts]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        generated = hf_model.generate(**batch, num_beams=1, do_sample=False, max_length=MAX_TOKENS + 2)
    pad, eos = hf_model.config.pad_token_id, hf_model.config.eos_token_id
    theirs = []
    for row in generated.tolist():
        tokens = row[1:]  # after the start token
        theirs.append([t for t in tokens[: tokens.index(eos)] if t != pad] if eos in tokens else tokens)
    done = finished(ours)
    assert [ours[i] for i in done] == [theirs[i] for i in done]
    texts_done = [texts[i] for i in done]
    expected = [tokenizer.decode(theirs[i], skip_special_tokens=True) for i in done]
    length = ["--beam", "1", "--alpha", "0", "--max-len-a", "0", "--max-len-b", str(MAX_TOKENS)]
    assert translate(capsys, model, texts_done, *length) == expected


def test_distill_writes_what_translate_gives(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """More sources than one batch (64), with references that are not the teacher's: each distilled line is
    the source and translate's output for it (both at their default beam 4)."""
    zh, en = corpus(400)
    pairs = [(z, e) for z, e in zip(zh[::3], en[::3], strict=True) if z.strip()][:100]
    texts = [z for z, _ in pairs]
    data = write_tsv(tmp_path / "train.tsv", texts, [e for _, e in pairs])
    distilled = tmp_path / "distilled.tsv"
    run(capsys, "distill", "--teacher", str(model), "--data", str(data), "--src-col", "2", "--tgt-col", "1",
        "--out", str(distilled), "--quiet")  # fmt: skip
    expected = translate(capsys, model, texts)
    assert len(set(expected)) >= 3
    rows = [line.split("\t") for line in distilled.read_text(encoding="utf-8").splitlines()]
    assert rows == [[target, source] for source, target in zip(texts, expected, strict=True)]
