"""Issue #29, library side: qkv never loses a user's data, and every bad input ends in one error naming
the file and the field, tensor or line (docs/reliability.md maps RELIABILITY.md's promises to these).

Data-loss tests take the sha256 of every file under the output and the inputs before and after. Models are
tiny and random: what is tested is where bytes go, not what the model says.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch

from qkv import averaging, checkpoint, distill
from qkv.config import BertConfig, ConfigError, preset
from qkv.data.corpus import PROBLEM_JSON, CorpusError, read_jsonl
from qkv.decode import SearchConfig
from qkv.export.marian import export_marian
from qkv.models import bert_hf as bert  # its load_pretrained and save_pretrained (BertModel comes along)
from qkv.models import saved
from qkv.models.seq2seq import Transformer
from qkv.storage import CheckpointError, OutputExistsError, WriteError
from qkv.tokenize import Tokenizer, train_chars
from qkv.train.trainer import TrainConfig, Trainer

TEXTS = ["我爱你", "你好", "hello world", "good morning", "早上好", "thank you", "谢谢"]


def tree_hashes(*roots: Path) -> dict[str, str]:
    """sha256 of every file under ``roots`` (or of the root itself when it is a file), by path."""
    hashes: dict[str, str] = {}
    for root in roots:
        for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
            hashes[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_chars(TEXTS)


def save_model(path: Path, tok: Tokenizer, seed: int) -> Path:
    torch.manual_seed(seed)
    model = Transformer(preset("tiny", tok.vocab_size, dropout=0.0, max_positions=32))
    return checkpoint.save_directory(
        path,
        tensors={checkpoint.MODEL_FILE: model.state_dict()},
        json={checkpoint.CONFIG_FILE: {"model": model.config.to_dict()}},
        text=saved.tokenizer_files(tok, tok),
    )


@pytest.fixture
def model_dir(tmp_path: Path, tok: Tokenizer) -> Path:
    return save_model(tmp_path / "model", tok, seed=0)


@pytest.fixture
def run_dir(tmp_path: Path, tok: Tokenizer) -> Path:
    """A run as qkv train leaves it: two checkpoints, best/, metrics.jsonl."""
    run = tmp_path / "run"
    for step, seed in ((1, 1), (2, 2)):
        source = save_model(tmp_path / f"source-{step}", tok, seed)
        checkpoint.commit_checkpoint(
            run,
            f"step-{step:08d}",
            tensors={checkpoint.MODEL_FILE: checkpoint.load_tensors(source / checkpoint.MODEL_FILE)},
            json={checkpoint.CONFIG_FILE: checkpoint.load_json(source / checkpoint.CONFIG_FILE)},
            text={"tokenizer.json": (source / "tokenizer.json").read_text(encoding="utf-8")},
        )
        shutil.rmtree(source)
    shutil.copytree(run / "checkpoints" / "step-00000001", run / "best")
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    return run


# ---- 14. output paths: never delete what qkv did not write -------------------------------------------------


@pytest.mark.parametrize("out", ["run", "run/checkpoints", "run/checkpoints/step-00000001"])
def test_average_never_writes_over_its_own_run(run_dir: Path, out: str) -> None:
    before = tree_hashes(run_dir)
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError, match="(is also|holds|is part of) the input"):
            averaging.average_run(run_dir, 1, run_dir.parent / out, overwrite=overwrite)
    assert tree_hashes(run_dir) == before


def test_average_refuses_a_directory_holding_a_users_file_unless_overwrite(
    run_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    before, run_before = tree_hashes(out, run_dir), tree_hashes(run_dir)
    with pytest.raises(
        OutputExistsError, match=r"mine: exists and holds files qkv did not write \(notes.txt\).*--overwrite"
    ):
        averaging.average_run(run_dir, 2, out)
    assert tree_hashes(out, run_dir) == before
    averaging.average_run(run_dir, 2, out, overwrite=True)
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert tree_hashes(run_dir) == run_before  # the run is only read


def test_average_into_a_new_directory_inside_the_run_is_fine(run_dir: Path) -> None:
    before = tree_hashes(run_dir)
    out, chosen = averaging.average_run(run_dir, 1, run_dir / "averaged")
    assert [p.name for p in chosen] == ["step-00000002"]
    assert tree_hashes(run_dir) == before | {str(p): h for p, h in tree_hashes(out).items()}


@pytest.mark.parametrize("last", [0, -1, -2])
def test_average_last_must_be_at_least_one(run_dir: Path, tmp_path: Path, last: int) -> None:
    with pytest.raises(ValueError, match=f"--last {last}: average at least 1 checkpoint"):
        averaging.average_run(run_dir, last, tmp_path / "avg")
    assert not (tmp_path / "avg").exists()


def test_marian_export_keeps_a_users_file_unless_overwrite(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "marian"
    out.mkdir()
    (out / "README.md").write_text("my notes")
    before = tree_hashes(out, model_dir)
    with pytest.raises(
        OutputExistsError, match=r"marian: exists and holds files qkv did not write \(README.md\)"
    ):
        export_marian(model_dir, out)
    assert tree_hashes(out, model_dir) == before
    export_marian(model_dir, out, overwrite=True)
    assert "README.md" not in os.listdir(out) and "model.safetensors" in os.listdir(out)
    export_marian(model_dir, out)  # what the export wrote itself is replaced without asking


@pytest.mark.parametrize("where", ["model", "parent"])
def test_marian_export_never_writes_over_its_input(model_dir: Path, where: str) -> None:
    out = model_dir if where == "model" else model_dir.parent
    before = tree_hashes(model_dir)
    with pytest.raises(OutputExistsError, match="the input"):
        export_marian(model_dir, out, overwrite=True)
    assert tree_hashes(model_dir) == before


def test_ctranslate2_export_keeps_a_users_file_and_its_input(model_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("ctranslate2", reason="pip install 'ctranslate2>=4.0'")
    from qkv.export.ctranslate2 import export_ctranslate2

    out = tmp_path / "ct2"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = tree_hashes(out, model_dir)
    with pytest.raises(
        OutputExistsError, match=r"ct2: exists and holds files qkv did not write \(notes.txt\)"
    ):
        export_ctranslate2(model_dir, out)
    with pytest.raises(OutputExistsError, match="is also the input"):
        export_ctranslate2(model_dir, model_dir, overwrite=True)
    assert tree_hashes(out, model_dir) == before
    export_ctranslate2(model_dir, out, overwrite=True)
    export_ctranslate2(model_dir, out)  # its own files: replaced without asking
    assert "notes.txt" not in os.listdir(out) and {"model.bin", "tokenizer.json"} <= set(os.listdir(out))
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []


def test_distill_refuses_an_existing_output_and_its_own_input(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = saved.load(model_dir)
    data = tmp_path / "train.tsv"
    data.write_text("我爱你\tI love you\n你好\thello\n", encoding="utf-8")
    out = tmp_path / "distilled.tsv"
    out.write_text("an earlier distillation the user kept\n")
    before = tree_hashes(tmp_path)

    def never(*args: object, **kwargs: object) -> list[str]:
        raise AssertionError("translated before the output was checked")

    monkeypatch.setattr(distill, "translate_all", never)
    teacher = loaded.seq2seq
    with pytest.raises(OutputExistsError, match=r"distilled.tsv: exists already; .*--overwrite"):
        distill.distill(teacher, loaded.src_tokenizer, loaded.tgt_tokenizer, data, out, progress=False)
    with pytest.raises(OutputExistsError, match="train.tsv: is also the input"):
        distill.distill(teacher, loaded.src_tokenizer, loaded.tgt_tokenizer, data, data, overwrite=True)
    assert tree_hashes(tmp_path) == before
    monkeypatch.undo()
    greedy = SearchConfig(method="greedy", beam=1)
    written = distill.distill(
        teacher,
        loaded.src_tokenizer,
        loaded.tgt_tokenizer,
        data,
        out,
        search=greedy,
        progress=False,
        overwrite=True,
    )
    assert len(out.read_text(encoding="utf-8").splitlines()) == written


# ---- 13. disk full while checkpointing --------------------------------------------------------------------


def test_disk_full_while_checkpointing_is_one_line_and_keeps_the_previous_checkpoint(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = tree_hashes(run_dir)

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(WriteError) as error:
        checkpoint.commit_checkpoint(
            run_dir, "step-00000003", tensors={checkpoint.MODEL_FILE: {"w": torch.zeros(4)}}, json={}
        )
    monkeypatch.undo()
    message = str(error.value)
    assert message.startswith(f"{run_dir / 'checkpoints' / 'step-00000003'}: ") and "\n" not in message
    assert "no space left" in message.lower() and error.value.errno == errno.ENOSPC
    assert tree_hashes(run_dir) == before
    latest = checkpoint.latest_checkpoint(run_dir)
    assert latest is not None and latest.name == "step-00000002"
    assert [p for p in os.listdir(run_dir / "checkpoints") if p.startswith(".")] == []


# ---- a kill while best/ is replaced -----------------------------------------------------------------------


def test_a_run_whose_best_was_being_replaced_loads_best_not_the_latest(run_dir: Path) -> None:
    best_weights = checkpoint.load_tensors(run_dir / "best" / checkpoint.MODEL_FILE)
    # What a writer killed between its two renames leaves: no best/, its old copy beside it.
    os.rename(run_dir / "best", run_dir / ".best.old-999999999-abcd1234")
    assert saved.resolve(run_dir) == run_dir / "best"
    loaded = saved.load(run_dir)
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, best_weights[name]), name
    assert (run_dir / "best").is_dir() and not (run_dir / ".best.old-999999999-abcd1234").exists()


# ---- resuming from damaged training state -----------------------------------------------------------------

VOCAB = 24


def tiny_trainer(run: Path) -> Trainer:
    rng = random.Random(0)
    pairs = [
        (
            [rng.randrange(4, VOCAB) for _ in range(rng.randint(2, 5))] + [2],
            [rng.randrange(4, VOCAB) for _ in range(3)],
        )
        for _ in range(40)
    ]
    torch.manual_seed(0)
    config = TrainConfig(max_steps=2, max_tokens=48, save_every=2, warmup=1, lr=1e-3, log_every=100)
    return Trainer(Transformer(preset("tiny", VOCAB)), config, run, train=pairs, progress=False)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    tiny_trainer(run).fit()
    return run


def damage_optimizer(directory: Path, kind: str) -> str:
    path = directory / checkpoint.OPTIMIZER_FILE
    tensors = safetensors.torch.load_file(str(path))
    if kind == "transposed":
        name = next(
            n
            for n, t in tensors.items()
            if n.endswith("exp_avg") and t.dim() == 2 and t.shape[0] != t.shape[1]
        )
        tensors[name] = tensors[name].t().contiguous()
    elif kind == "extra":
        name = "state.0.extra"
        tensors[name] = torch.zeros(1)
    else:
        name = "state.3.exp_avg_sq"
        del tensors[name]
    safetensors.torch.save_file(tensors, str(path))
    return name


@pytest.mark.parametrize("kind", ["transposed", "extra", "missing"])
def test_resume_refuses_damaged_optimizer_state(trained_run: Path, tmp_path: Path, kind: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    latest = checkpoint.latest_checkpoint(run)
    assert latest is not None
    name = damage_optimizer(latest, kind)
    before = tree_hashes(run)
    trainer = tiny_trainer(run)
    with pytest.raises(CheckpointError) as error:
        trainer.resume()
    message = str(error.value)
    assert message.startswith(f"{latest / checkpoint.OPTIMIZER_FILE}: ") and repr(name) in message
    assert trainer.state.step == 0 and not trainer.optimizer.state  # nothing was loaded
    assert tree_hashes(run) == before


@pytest.mark.parametrize(
    ("key", "value"), [("step", None), ("epoch", "3"), ("optimizer", None), ("world_size", 0)]
)
def test_resume_refuses_a_damaged_trainer_state(
    trained_run: Path, tmp_path: Path, key: str, value: object
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    latest = checkpoint.latest_checkpoint(run)
    assert latest is not None
    state_file = latest / checkpoint.TRAINER_STATE_FILE
    data = json.loads(state_file.read_text())
    if value is None:
        del data[key]
    else:
        data[key] = value
    state_file.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=f"^{state_file}: (missing )?key '{key}'"):
        tiny_trainer(run).resume()


def test_resume_of_an_undamaged_checkpoint_still_works(trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    trainer = tiny_trainer(run)
    assert trainer.resume() is not None and trainer.state.step == 2 and trainer.optimizer.state


# ---- bad model files: one error naming the file and the field ---------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe{}", r"tokenizer.json: not UTF-8 text"),
        (b"{not json", r"tokenizer.json: not a valid tokenizer.json"),
        (b"[1, 2, 3]", r"tokenizer.json: not a valid tokenizer.json"),
        (b'{"model": {"type": "BPE", "vocab": {"a": -1}, "merges": []}}', r"tokenizer.json: not a valid"),
        (b"[" * 50_000, r"tokenizer.json: not a valid tokenizer.json"),
    ],
)
def test_a_bad_tokenizer_file_names_the_file(model_dir: Path, content: bytes, message: str) -> None:
    (model_dir / "tokenizer.json").write_bytes(content)
    for load in (lambda: Tokenizer.load(model_dir / "tokenizer.json"), lambda: saved.load(model_dir)):
        with pytest.raises(CheckpointError, match=message) as error:
            load()
        assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"src_vocab_size": None}, r"missing config field 'src_vocab_size'"),
        ({"d_model": "32"}, r"d_model='32' must be an integer"),
        ({"dropout": [0.1]}, r"dropout=\[0.1\] must be a number"),
        ({"norm_first": "yes"}, r"norm_first='yes' must be true or false"),
        ({"layer_norm_eps": "small"}, r"layer_norm_eps='small' must be a number"),
        ({"heads": 2.0}, r"heads=2.0 must be an integer"),
        ({"model_type": ["qkv-nat"]}, r"model_type=\['qkv-nat'\] is not a qkv translation model"),
    ],
)
def test_a_bad_config_json_names_the_file_and_the_field(
    model_dir: Path, change: dict[str, object], message: str
) -> None:
    config_file = model_dir / checkpoint.CONFIG_FILE
    data = json.loads(config_file.read_text())
    for key, value in change.items():
        if value is None:
            del data["model"][key]
        else:
            data["model"][key] = value
    config_file.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=f"^{config_file}: {message}"):
        saved.load(model_dir)


def test_a_tokenizer_that_does_not_fit_the_model_is_named(model_dir: Path) -> None:
    train_chars(["abc"]).save(model_dir / "tokenizer.json")  # fewer tokens than the model's vocabulary
    with pytest.raises(
        CheckpointError, match=r"model: the source tokenizer has 7 tokens but the model expects"
    ):
        saved.load(model_dir)


def test_a_config_json_that_is_not_an_object_names_the_file(model_dir: Path) -> None:
    (model_dir / checkpoint.CONFIG_FILE).write_text('{"model": [1, 2]}')
    with pytest.raises(ConfigError, match=r"config.json: expected a JSON object of config fields, got list"):
        saved.load(model_dir)


TINY_BERT = BertConfig(vocab_size=30, d_model=8, heads=2, d_ff=16, layers=1, max_positions=16)


@pytest.fixture
def bert_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return bert.save_pretrained(bert.BertModel(TINY_BERT), tmp_path / "bert")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("hidden_size", "8", r"d_model='8' must be an integer \(config.json key hidden_size\)"),
        ("layer_norm_eps", "tiny", r"layer_norm_eps='tiny' must be a number"),
        ("pad_token_id", [0], r"pad_id=\[0\] must be an integer \(config.json key pad_token_id\)"),
        ("id2label", 3, r"id2label must be an object of labels"),
        ("classifier_dropout", "high", r"classifier_dropout='high' must be null"),
    ],
)
def test_a_bad_bert_config_names_the_file_and_the_key(
    bert_dir: Path, key: str, value: object, message: str
) -> None:
    config_file = bert_dir / "config.json"
    data = json.loads(config_file.read_text())
    data[key] = value
    config_file.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=f"{config_file}: {message}"):
        bert.load_pretrained(bert_dir)


@pytest.mark.parametrize("content", [b"[1, 2]", b"\xff{}", b"{" * 10])
def test_a_bert_config_that_is_not_a_json_object_names_the_file(bert_dir: Path, content: bytes) -> None:
    (bert_dir / "config.json").write_bytes(content)
    with pytest.raises(CheckpointError, match=f"{bert_dir / 'config.json'}"):
        bert.load_pretrained(bert_dir)


def test_a_bert_header_of_the_wrong_shape_names_the_file(bert_dir: Path) -> None:
    weights = bert_dir / "model.safetensors"
    data = weights.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    name = next(n for n in header if n != "__metadata__")
    header[name] = {"dtype": "F32", "data_offsets": header[name]["data_offsets"]}  # no shape
    raw = json.dumps(header).encode()
    weights.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + length :])
    with pytest.raises(CheckpointError, match=f"{weights}: tensor {name!r}: corrupted header: shape None"):
        bert.load_pretrained(bert_dir)


@pytest.mark.parametrize(
    ("modules", "message"),
    [
        ({"0": "Transformer"}, r"modules.json: expected a JSON array"),
        ([1, 2], r"modules.json: entry 0 is not an object"),
        (
            [{"type": "sentence_transformers.models.Transformer", "path": 0}],
            r"modules.json: entry 0 has a \"path\"",
        ),
    ],
)
def test_a_bad_modules_json_names_the_file(bert_dir: Path, modules: object, message: str) -> None:
    from qkv.embed import SentenceEmbedder

    (bert_dir / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(CheckpointError, match=message):
        SentenceEmbedder.from_pretrained(bert_dir)


# ---- corpus lines --------------------------------------------------------------------------------------------

BAD_JSONL_LINES = [
    ("[" * 100_000, "nested too deeply"),
    ('{"src": ' + "[" * 100_000 + "}", "nested too deeply"),
    ("[1, 2]", "expected a JSON object"),
    ('{"src": 5, "tgt": "x"}', '"src" must hold a string, got int'),
    ('{"src": "a", "tgt": {"x": 1}}', '"tgt" must hold a string, got dict'),
    ('{"src": "a", "tgt": "b", "n": ' + "9" * 5000 + "}", "Exceeds the limit"),
    ('{"src": ' + "1" * 5000 + ', "tgt": "b"}', "Exceeds the limit"),
]


@pytest.mark.parametrize(("line", "reason"), BAD_JSONL_LINES, ids=[r for _, r in BAD_JSONL_LINES])
def test_a_pathological_jsonl_line_is_file_line_reason_or_skipped(
    tmp_path: Path, line: str, reason: str
) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"src": "你好", "tgt": "hello"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(CorpusError) as error:
        read_jsonl(path)
    assert str(error.value).startswith(f"{path}:2: ") and reason in str(error.value)
    assert "\n" not in str(error.value)
    corpus = read_jsonl(path, skip_bad=True)
    assert corpus.pairs == [("你好", "hello")] and corpus.skipped == {PROBLEM_JSON: 1}
