"""Prepared corpora (qkv prepare): the shards hold what the in-memory pipeline encodes from the same file,
whatever the number of workers; bad lines are named or counted as read_corpus does; a damaged directory is
refused naming the file.

The reference is the in-memory path of ``qkv train --data FILE`` (``read_corpus``, the tokenizer trained on
every pair, ``encode_pairs``), which shares no code with the chunked reading, sampling and writing here
but the line parser and the encoding rule.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from qkv import cli
from qkv.data import demo
from qkv.data.corpus import CorpusError, corpus_source, read_corpus
from qkv.data.encode import encode_examples
from qkv.data.prepare import plan_chunks, sample_pairs
from qkv.data.prepared import MANIFEST, PreparedCorpus, length_dtype, shard_file, token_dtype
from qkv.storage import CheckpointError, OutputExistsError
from qkv.tokenize import Tokenizer
from qkv.train.pipeline import DataConfig, TokenizerConfig, encode_pairs, prepare, prepare_directory
from tests.data.test_corpus import _fuzz_lines

TOK = TokenizerConfig(kind="bpe", vocab_size=300)
CHUNK = 4096  # bytes: a few dozen lines, so even small files make several shards


def demo_pairs(count: int, seed: int = 0) -> list[tuple[str, str]]:
    return demo.generate(seed=seed, size=count)


def write_tsv(path: Path, pairs: list[tuple[str, str]]) -> Path:
    """English<TAB>Chinese lines, as demo.write_tsv (zh->en: --src-col 2 --tgt-col 1)."""
    demo.write_tsv(path, pairs)
    return path


def prepared(tmp_path: Path, source_path: Path, name: str = "prepared", **options: object) -> PreparedCorpus:
    kwargs: dict[str, object] = {
        "skip_bad": False,
        "tok": TOK,
        "max_positions": 256,
        "workers": 2,
        "chunk_bytes": CHUNK,
        "progress": False,
        "say": lambda _: None,
    }
    kwargs.update(options)
    source = options.pop("source", None) or corpus_source(source_path, src_col=2, tgt_col=1, max_chars=2000)
    kwargs.pop("source", None)
    prepare_directory(tmp_path / name, source, **kwargs)  # type: ignore[arg-type]
    return PreparedCorpus(tmp_path / name)


# -- the same examples as in memory ---------------------------------------------------------------------------


def test_a_prepared_corpus_equals_the_in_memory_encoding(tmp_path: Path) -> None:
    pairs = demo_pairs(1200)
    # A few pairs too long for 12 positions on one side or the other: left out by both paths.
    pairs[10] = ("我" * 30, pairs[10][1])
    pairs[500] = (pairs[500][0], " ".join(["love"] * 20))
    path = write_tsv(tmp_path / "train.tsv", pairs)
    corpus = prepared(tmp_path, path, max_positions=12)
    assert len(corpus.manifest["shards"]) > 3, "the test should cover several shards"

    data = DataConfig(train=str(path), src_col=2, tgt_col=1)
    in_memory = prepare(data, TOK, max_len=12)
    # The same tokenizer: the sample of a corpus smaller than the sample size is the whole corpus.
    assert (corpus.directory / "tokenizer.json").read_text() == in_memory.src_tokenizer.to_json()
    assert list(corpus) == in_memory.train
    assert [corpus[i] for i in (0, -1, 7)] == [in_memory.train[i] for i in (0, -1, 7)]
    # The same pairs left out, by line: the lines kept are those in-memory encoding kept.
    text = read_corpus(path, src_col=2, tgt_col=1)
    src_tok = in_memory.src_tokenizer
    too_long = {
        line
        for line, (s, t) in zip(text.line_numbers, text.pairs, strict=True)
        if len(src_tok.encode(s)) + 1 > 12 or len(src_tok.encode(t)) + 1 > 12
    }
    assert {11, 501} <= too_long
    kept_lines = [corpus.line_number(i) for i in range(len(corpus))]
    assert kept_lines == [line for line in text.line_numbers if line not in too_long]
    assert corpus.manifest["left_out"] == {"longer than 12 tokens on a side": len(too_long)}
    # The index batching reads equals the examples' lengths, for any pairs in any order.
    src, tgt = corpus.lengths_of(np.arange(len(corpus)))
    assert src.tolist() == [len(s) for s, _ in in_memory.train]
    assert tgt.tolist() == [len(t) for _, t in in_memory.train]
    some = np.random.default_rng(0).permutation(len(corpus))[:300]
    assert [array.tolist() for array in corpus.lengths_of(some)] == [src[some].tolist(), tgt[some].tolist()]
    with pytest.raises(IndexError, match=f"pair {len(corpus)} of a corpus of {len(corpus)}"):
        corpus.lengths_of(np.array([0, len(corpus)]))


@pytest.mark.parametrize("layout", ["jsonl", "parallel"])
def test_jsonl_and_aligned_files_are_prepared_like_read_corpus(tmp_path: Path, layout: str) -> None:
    pairs = demo_pairs(600, seed=1)
    if layout == "jsonl":
        path = tmp_path / "train.jsonl"
        path.write_text(
            "".join(json.dumps({"src": s, "tgt": t}, ensure_ascii=False) + "\n" for s, t in pairs)
        )
        source = corpus_source(path)
    else:
        path, tgt = tmp_path / "train.zh", tmp_path / "train.en"
        path.write_text("".join(s + "\n" for s, _ in pairs))
        tgt.write_text("".join(t + "\r\n" for _, t in pairs))  # CRLF on one side only
        source = corpus_source(path, tgt_path=tgt)
    corpus = prepared(tmp_path, path, source=source)
    assert len(corpus.manifest["shards"]) > 1
    data = DataConfig(train=str(path), train_tgt=None if layout == "jsonl" else str(tmp_path / "train.en"))
    assert list(corpus) == prepare(data, TOK, max_len=256).train


def test_separate_vocabularies_are_prepared_like_in_memory(tmp_path: Path) -> None:
    path = write_tsv(tmp_path / "train.tsv", demo_pairs(500, seed=3))
    tok = TokenizerConfig(kind="bpe", vocab_size=200, joint=False)
    corpus = prepared(tmp_path, path, tok=tok)
    assert sorted(corpus.tokenizer_paths) == ["src_tokenizer.json", "tgt_tokenizer.json"]
    in_memory = prepare(DataConfig(train=str(path), src_col=2, tgt_col=1), tok, max_len=256)
    loaded = prepare(DataConfig(train=str(corpus.directory)), tok, max_len=256)
    assert loaded.src_tokenizer is not loaded.tgt_tokenizer
    assert loaded.src_tokenizer.to_json() == in_memory.src_tokenizer.to_json()
    assert loaded.tgt_tokenizer.to_json() == in_memory.tgt_tokenizer.to_json()
    assert list(loaded.train) == in_memory.train


def test_one_worker_and_two_write_the_same_bytes(tmp_path: Path) -> None:
    path = write_tsv(tmp_path / "train.tsv", demo_pairs(900))
    one = prepared(tmp_path, path, "one", workers=1, sample_size=300)
    two = prepared(tmp_path, path, "two", workers=2, sample_size=300)
    names = sorted(p.name for p in one.directory.iterdir())
    assert names == sorted(p.name for p in two.directory.iterdir())
    assert len([n for n in names if n.endswith(".tokens.npy")]) > 3
    for name in names:
        assert (one.directory / name).read_bytes() == (two.directory / name).read_bytes(), name


def test_shards_load_with_numpy_as_documented(tmp_path: Path) -> None:
    path = write_tsv(tmp_path / "train.tsv", demo_pairs(300))
    corpus = prepared(tmp_path, path)
    manifest = json.loads((corpus.directory / MANIFEST).read_text())
    assert (manifest["format"], manifest["version"]) == ("qkv-prepared", 1)
    assert manifest["token_dtype"] == "uint16" and manifest["eos_id"] == 2
    first = 0
    for shard in manifest["shards"]:
        tokens = np.load(corpus.directory / shard_file(shard["name"], "tokens"), mmap_mode="r")
        lengths = np.load(corpus.directory / shard_file(shard["name"], "lengths"))
        assert tokens.dtype == np.uint16 and isinstance(tokens, np.memmap)
        assert lengths.shape == (shard["pairs"], 2) and int(lengths.sum()) == len(tokens) == shard["tokens"]
        # Pair after pair: the source (ending in </s>) then the target.
        start = 0
        for row, (src_len, tgt_len) in enumerate(lengths.tolist()):
            source, target = corpus[first + row]
            assert tokens[start : start + src_len].tolist() == source and source[-1] == 2
            assert tokens[start + src_len : start + src_len + tgt_len].tolist() == target
            start += src_len + tgt_len
        first += shard["pairs"]
    assert first == len(corpus) == 300


def test_examples_are_the_ids_of_each_side_as_encode_gives_them(tmp_path: Path) -> None:
    pairs = [*demo_pairs(200), ("</s> 我", "a <pad> b"), ("我" * 40, "long source")]
    src_tok = read_tokenizer(prepared(tmp_path, write_tsv(tmp_path / "t.tsv", pairs[:200])))
    examples = encode_examples(pairs, src_tok, src_tok, max_len=30, eos_id=2)
    for (source, target), example in zip(pairs, examples, strict=True):
        ids = (src_tok.encode(source) + [2], src_tok.encode(target))  # one text at a time
        assert example == (None if max(len(ids[0]), len(ids[1]) + 1) > 30 else ids)
    assert examples[-1] is None and examples[-2] is not None
    assert 2 not in examples[-2][0][:-1]  # "</s>" in the text is text, never the end id


def test_dtypes_fit_the_vocabulary_and_positions() -> None:
    assert (token_dtype(2**16), token_dtype(2**16 + 1)) == ("uint16", "uint32")
    assert (length_dtype(2**16 - 1), length_dtype(2**16)) == ("uint16", "uint32")


# -- the tokenizer sample -------------------------------------------------------------------------------------


def test_the_sample_is_uniform_over_the_file_and_in_file_order(tmp_path: Path) -> None:
    pairs = demo_pairs(3000)
    path = write_tsv(tmp_path / "train.tsv", pairs)
    source = corpus_source(path, src_col=2, tgt_col=1)
    chunks = plan_chunks(source, skip_bad=False, chunk_bytes=CHUNK)
    sample, total = sample_pairs(source, chunks, skip_bad=False, size=400, seed=5, workers=2)
    assert total == 3000 and len(sample) == 400
    positions = {pair: i for i, pair in enumerate(pairs)}
    at = [positions[pair] for pair in sample]
    assert at == sorted(at) and len(set(at)) == 400  # distinct pairs, in file order
    # Every tenth of the file gives about a tenth of the sample (40 expected; binomial sd about 6).
    per_tenth = np.bincount(np.array(at) * 10 // 3000, minlength=10)
    assert per_tenth.min() >= 15 and per_tenth.max() <= 65, per_tenth
    again, _ = sample_pairs(source, chunks, skip_bad=False, size=400, seed=5, workers=1)
    assert again == sample
    other, _ = sample_pairs(source, chunks, skip_bad=False, size=400, seed=6, workers=2)
    assert other != sample


# -- bad lines ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bad_lines_are_counted_or_named_as_read_corpus_does(tmp_path: Path, seed: int) -> None:
    lines, expected, skipped = _fuzz_lines(random.Random(seed), 600)
    path = tmp_path / "fuzz.tsv"
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n")
    reference = read_corpus(path, src_col=2, tgt_col=1, max_chars=2000, skip_bad=True)
    corpus = prepared(tmp_path, path, skip_bad=True, tok=TokenizerConfig(kind="char"))
    assert len(corpus.manifest["shards"]) > 3
    assert corpus.manifest["skipped"] == reference.skipped == skipped
    assert corpus.manifest["first_skipped"] == reference.first_skipped
    assert corpus.manifest["lines"] == len(lines)
    src_tok = tgt_tok = read_tokenizer(corpus)
    want, _ = encode_pairs(reference.pairs, src_tok, tgt_tok, max_len=256, eos_id=2)
    assert list(corpus) == want
    assert [corpus.line_number(i) for i in range(len(corpus))] == [line for line, _ in expected]

    with pytest.raises(CorpusError) as caught:
        prepared(tmp_path, path, "strict", tok=TokenizerConfig(kind="char"))
    with pytest.raises(CorpusError) as want_error:
        read_corpus(path, src_col=2, tgt_col=1, max_chars=2000)
    assert str(caught.value) == str(want_error.value)
    assert not (tmp_path / "strict").exists(), "a failed preparation leaves nothing behind"


def read_tokenizer(corpus: PreparedCorpus) -> Tokenizer:
    return Tokenizer.load(corpus.directory / "tokenizer.json")


def test_a_bad_line_in_a_late_shard_of_aligned_files_names_its_file_and_line(tmp_path: Path) -> None:
    pairs = demo_pairs(500, seed=2)
    src, tgt = tmp_path / "c.zh", tmp_path / "c.en"
    src.write_text("".join(s + "\n" for s, _ in pairs))
    targets = [t for _, t in pairs]
    targets[420] = ""  # line 421 of the target file is empty
    tgt.write_text("".join(t + "\n" for t in targets))
    source = corpus_source(src, tgt_path=tgt)
    with pytest.raises(CorpusError) as caught:
        prepared(tmp_path, src, source=source)
    assert str(caught.value).startswith(f"{tgt}:421: empty target line")
    # Different line counts are refused before anything is read, as read_corpus refuses them.
    tgt.write_text("".join(t + "\n" for t in targets[:-3]))
    with pytest.raises(CorpusError) as caught:
        prepared(tmp_path, src, source=source)
    with pytest.raises(CorpusError) as want:
        read_corpus(src, tgt_path=tgt)
    assert str(caught.value) == str(want.value)
    # With skip_bad the unpaired lines are counted, as read_corpus counts them.
    corpus = prepared(tmp_path, src, source=source, skip_bad=True)
    assert corpus.manifest["skipped"] == read_corpus(src, tgt_path=tgt, skip_bad=True).skipped


def test_an_empty_corpus_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.tsv"
    path.write_bytes(b"")
    with pytest.raises(CorpusError, match="no sentence pairs"):
        prepared(tmp_path, path)


# -- damaged directories --------------------------------------------------------------------------------------


@pytest.fixture
def good(tmp_path: Path) -> Path:
    corpus = prepared(tmp_path, write_tsv(tmp_path / "train.tsv", demo_pairs(300)))
    return corpus.directory


def damage_json(directory: Path, **changes: object) -> None:
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest.update(changes)
    (directory / MANIFEST).write_text(json.dumps(manifest))


def test_a_missing_shard_is_named(good: Path) -> None:
    (good / "shard-00001.tokens.npy").unlink()
    with pytest.raises(CheckpointError, match=r"shard-00001\.tokens\.npy: missing"):
        PreparedCorpus(good)


def test_a_cut_shard_is_named(good: Path) -> None:
    path = good / "shard-00000.tokens.npy"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=r"shard-00000\.tokens\.npy: .* cut short"):
        PreparedCorpus(good)


def test_a_shard_cut_while_training_reads_it_is_named(good: Path) -> None:
    corpus = PreparedCorpus(good)  # checked whole when opened
    assert corpus[len(corpus) - 2]  # the last shard's files are open
    path = good / f"shard-{len(corpus.manifest['shards']) - 1:05d}.tokens.npy"
    with open(path, "r+b") as file:  # then cut, in place: the last pair's ids are gone
        file.truncate(path.stat().st_size - 4)
    assert corpus[0]
    with pytest.raises(CheckpointError, match=rf"{path.name}: cut short while it was being read"):
        corpus[len(corpus) - 1]


def test_a_shard_of_other_lengths_is_named(good: Path) -> None:
    path = good / "shard-00000.lengths.npy"
    lengths = np.load(path)
    lengths[0, 0] += 1
    np.save(path, lengths)
    with pytest.raises(CheckpointError, match=r"shard-00000\.lengths\.npy: the lengths add up to"):
        PreparedCorpus(good)


def test_a_shard_that_is_no_npy_file_is_named(good: Path) -> None:
    (good / "shard-00000.lines.npy").unlink()
    (good / "shard-00000.lengths.npy").write_bytes(b"not numpy at all")
    with pytest.raises(CheckpointError, match=r"shard-00000\.lengths\.npy: not a readable \.npy file"):
        PreparedCorpus(good)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format": "something"}, "format is 'something'"),
        ({"version": 2}, "version 2, but this qkv reads version 1"),
        ({"token_dtype": "int8"}, "not uint16 or uint32"),
        ({"pairs": 5}, "'pairs' says 5"),
        ({"shards": "many"}, "key 'shards' is missing or of the wrong type"),
    ],
)
def test_a_damaged_manifest_is_named(good: Path, changes: dict[str, object], message: str) -> None:
    damage_json(good, **changes)
    with pytest.raises(CheckpointError, match=f"{MANIFEST}: .*{message}"):
        PreparedCorpus(good)


def test_a_directory_without_manifest_is_not_a_prepared_corpus(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a prepared corpus"):
        PreparedCorpus(tmp_path)


# -- the output directory -------------------------------------------------------------------------------------


def test_an_output_holding_other_files_is_refused_and_a_prepared_one_replaced(tmp_path: Path) -> None:
    path = write_tsv(tmp_path / "train.tsv", demo_pairs(200))
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="notes.txt"):
        prepared(tmp_path, path, "out")
    (out / "notes.txt").unlink()
    first = prepared(tmp_path, path, "out", max_positions=64)
    assert first.max_positions == 64
    again = prepared(tmp_path, path, "out", max_positions=32)  # a prepared directory is replaced whole
    assert again.max_positions == 32
    with pytest.raises(OutputExistsError, match="input"):
        prepared(tmp_path, path, ".")  # never over its own input


def test_what_a_killed_preparation_left_is_removed(tmp_path: Path) -> None:
    path = write_tsv(tmp_path / "train.tsv", demo_pairs(100))
    dead = 2**22 + 12345  # above Linux's default pid_max: no such process
    leftover = tmp_path / f".out.tmp-{dead}-abcd1234"
    leftover.mkdir()
    (leftover / "shard-00000.tokens.npy").write_bytes(b"half")
    other = tmp_path / f".elsewhere.tmp-{dead}-abcd1234"  # another output's: not ours to remove
    other.mkdir()
    prepared(tmp_path, path, "out")
    assert not leftover.exists() and other.exists()


# -- the command ----------------------------------------------------------------------------------------------


def test_qkv_prepare_then_train_reads_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pairs = demo_pairs(400)
    train, valid = (
        write_tsv(tmp_path / "train.tsv", pairs[:350]),
        write_tsv(tmp_path / "valid.tsv", pairs[350:]),
    )
    out = tmp_path / "data"
    code = cli.main(
        ["prepare", "--data", str(train), "--valid", str(valid), "--src-col", "2", "--tgt-col", "1",
         "--vocab-size", "300", "--max-positions", "64", "--workers", "2", "--quiet", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    assert f"qkv train --data {out}" in capsys.readouterr().out
    data = DataConfig(train=str(out))
    loaded = prepare(data, TOK, max_len=64)
    want = prepare(DataConfig(train=str(train), valid=str(valid), src_col=2, tgt_col=1), TOK, max_len=64)
    assert list(loaded.train) == want.train and loaded.valid == want.valid
    assert loaded.valid_pairs == want.valid_pairs
    with pytest.raises(ValueError, match="holds pairs of up to 64 tokens a side, but the model takes 32"):
        prepare(data, TOK, max_len=32)
    other = prepare(
        DataConfig(train=str(train), src_col=2, tgt_col=1), TokenizerConfig(vocab_size=280), max_len=64
    )
    with pytest.raises(ValueError, match="prepared with another tokenizer"):
        prepare(data, TOK, max_len=64, tokenizers=(other.src_tokenizer, other.tgt_tokenizer))


def test_qkv_prepare_refuses_what_it_cannot_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_tsv(tmp_path / "train.tsv", demo_pairs(100))
    assert cli.main(["prepare", "--out", str(tmp_path / "x")]) == 2
    assert "say what to prepare" in capsys.readouterr().err
    assert cli.main(["prepare", "--data", str(path), "--src", str(path), "--out", str(tmp_path / "x")]) == 2
    assert "not both" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["prepare", "--data", str(path), "--workers", "0", "--out", str(tmp_path / "x")])
    assert "must be >= 1, got 0" in capsys.readouterr().err
    not_prepared = tmp_path / "plain"
    not_prepared.mkdir()
    with pytest.raises(SystemExit):
        cli.main(["train", "--data", str(not_prepared), "--out", str(tmp_path / "run")])
    assert "a directory without prepared.json" in capsys.readouterr().err
    shutil.rmtree(not_prepared)


def test_the_commands_name_a_bad_line_and_a_damaged_shard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pairs = demo_pairs(300)
    path = write_tsv(tmp_path / "train.tsv", pairs)
    bad = tmp_path / "bad.tsv"
    bad.write_bytes(path.read_bytes() + b"no tab\n")
    out = tmp_path / "data"
    assert cli.main(["prepare", "--data", str(bad), "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"qkv prepare: error: {bad}:301: expected at least 2 tab-separated columns, got 1" in err
    assert not out.exists()

    assert (
        cli.main(["prepare", "--data", str(path), "--vocab-size", "300", "--quiet", "--out", str(out)]) == 0
    )
    (out / "shard-00000.tokens.npy").write_bytes(b"\x93NUMPY")
    capsys.readouterr()
    code = cli.main(
        ["train", "--data", str(out), "--preset", "tiny", "--max-steps", "1", "--out", str(tmp_path / "r")]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert f"{out / 'shard-00000.tokens.npy'}: not a readable .npy file" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists(), "a run refused for its data leaves nothing behind"
