"""From text files to a trained model: read the corpora, train the tokenizers, encode, build the model,
and run the :class:`~qkv.train.trainer.Trainer`. ``qkv train`` is a thin layer over :func:`train`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed
from torch import nn

from qkv import checkpoint
from qkv.config import ModelConfig, NATConfig, preset
from qkv.data import demo
from qkv.data import prepare as prepare_files
from qkv.data.corpus import Corpus, CorpusSource, read_corpus, read_source
from qkv.data.encode import encode_examples
from qkv.data.prepared import PreparedCorpus, is_prepared, read_manifest
from qkv.models import saved
from qkv.models.nat import NATransformer
from qkv.models.seq2seq import Transformer
from qkv.tokenize import Tokenizer, train_tokenizer
from qkv.train.nat_task import DEFAULT_LENGTH_WEIGHT, NATTask
from qkv.train.task import Seq2SeqTask, Task
from qkv.train.trainer import Example, TrainConfig, Trainer, TrainResult, ValidationHook, distributed_context

TokenizerKind = Literal["bpe", "char"]
ModelType = Literal["seq2seq", "nat"]


@dataclass(frozen=True)
class DataConfig:
    """Where the sentence pairs come from. No ``train`` path: the built-in demo corpus."""

    train: str | None = None
    train_tgt: str | None = None  # the target file of two aligned plain-text files
    valid: str | None = None
    valid_tgt: str | None = None
    src_col: int = 1
    tgt_col: int = 2
    skip_bad: bool = False
    max_chars: int | None = 2000
    demo_seed: int = 0


def _saved_data_config(data: Any, source: Path) -> DataConfig:
    """The DataConfig a run saved in its trainer_state.json, every key checked (a CheckpointError names the
    file and the key)."""
    if not isinstance(data, dict):
        raise checkpoint.CheckpointError(f"{source}: key 'data_config' is not an object; the file is damaged")
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(DataConfig)})
    if unknown:
        raise checkpoint.CheckpointError(f"{source}: data_config has unknown keys {unknown}")
    for f in dataclasses.fields(DataConfig):
        value = data.get(f.name, f.default)
        kind = str(f.type)  # "str | None", "int", "int | None" or "bool"
        if value is None and kind.endswith(" | None"):
            continue
        base = kind.removesuffix(" | None")
        if base == "bool":
            ok = isinstance(value, bool)
        elif base == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, str)
        if not ok:
            raise checkpoint.CheckpointError(
                f"{source}: data_config.{f.name} is {value!r:.50}, expected {kind.replace(' | None', ' or null')}"
            )
    return DataConfig(**data)


@dataclass(frozen=True)
class TokenizerConfig:
    kind: TokenizerKind = "bpe"  # BPE splits Chinese into characters and merges English subwords
    vocab_size: int = 8000
    joint: bool = True  # one vocabulary for both sides (needed to share embeddings)


@dataclass
class Prepared:
    train: Sequence[Example]  # a list, or a PreparedCorpus read from disk
    valid: list[Example]
    src_tokenizer: Tokenizer
    tgt_tokenizer: Tokenizer
    reports: list[str] = field(default_factory=list)
    valid_pairs: list[tuple[str, str]] = field(default_factory=list)


def read_pairs(data: DataConfig) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[str]]:
    """(train pairs, validation pairs, report lines) as (source, target) text."""
    if data.train is None:
        train, held_out = demo.splits(seed=data.demo_seed)
        return (
            train,
            held_out,
            [f"built-in demo corpus (zh->en): {len(train):,} training pairs, {len(held_out):,} held out"],
        )

    def read(path: str, tgt: str | None) -> Corpus:
        return read_corpus(
            path,
            tgt_path=tgt,
            src_col=data.src_col,
            tgt_col=data.tgt_col,
            max_chars=data.max_chars,
            skip_bad=data.skip_bad,
        )

    train_corpus = read(data.train, data.train_tgt)
    reports = [train_corpus.report()]
    valid_pairs: list[tuple[str, str]] = []
    if data.valid is not None:
        valid_corpus = read(data.valid, data.valid_tgt)
        reports.append(valid_corpus.report())
        valid_pairs = valid_corpus.pairs
    return train_corpus.pairs, valid_pairs, reports


def encode_pairs(
    pairs: Sequence[tuple[str, str]], src_tok: Tokenizer, tgt_tok: Tokenizer, *, max_len: int, eos_id: int
) -> tuple[list[Example], int]:
    """Token ids for each pair (source + </s>; target bare), leaving out pairs longer than ``max_len``
    tokens on either side (:func:`qkv.data.encode.encode_examples`). Returns (examples, number left out)."""
    encoded = encode_examples(pairs, src_tok, tgt_tok, max_len=max_len, eos_id=eos_id)
    examples = [example for example in encoded if example is not None]
    return examples, len(encoded) - len(examples)


def fit_tokenizers(pairs: Sequence[tuple[str, str]], tok: TokenizerConfig) -> tuple[Tokenizer, Tokenizer]:
    """Train one joint tokenizer (returned twice, the same object) or one per side."""
    if tok.joint:
        joint = train_tokenizer([text for pair in pairs for text in pair], tok.kind, tok.vocab_size)
        return joint, joint
    return (
        train_tokenizer([s for s, _ in pairs], tok.kind, tok.vocab_size),
        train_tokenizer([t for _, t in pairs], tok.kind, tok.vocab_size),
    )


def prepare(
    data: DataConfig,
    tok: TokenizerConfig,
    *,
    max_len: int,
    eos_id: int = 2,
    tokenizers: tuple[Tokenizer, Tokenizer] | None = None,
) -> Prepared:
    """Read, tokenize (training the tokenizers unless given) and encode the corpora; a prepared directory
    (``qkv prepare``) as it is, with its tokenizers (see :func:`prepared_data`)."""
    if data.train is not None and is_prepared(data.train):
        return prepared_data(data, max_len=max_len, eos_id=eos_id, tokenizers=tokenizers)
    train_pairs, valid_pairs, reports = read_pairs(data)
    src_tok, tgt_tok = tokenizers if tokenizers is not None else fit_tokenizers(train_pairs, tok)
    train, dropped = encode_pairs(train_pairs, src_tok, tgt_tok, max_len=max_len, eos_id=eos_id)
    valid, valid_dropped = encode_pairs(valid_pairs, src_tok, tgt_tok, max_len=max_len, eos_id=eos_id)
    if dropped or valid_dropped:
        reports.append(
            f"left out as longer than {max_len} tokens: {dropped:,} training and "
            f"{valid_dropped:,} validation pairs"
        )
    unk = src_tok.unk_rate(s for s, _ in valid_pairs[:2000]) if valid_pairs else 0.0
    vocab = (
        f"joint vocabulary of {src_tok.vocab_size:,}"
        if src_tok is tgt_tok
        else f"vocabularies of {src_tok.vocab_size:,} (source) and {tgt_tok.vocab_size:,} (target)"
    )
    reports.append(f"tokenizer: {tok.kind}, {vocab}; validation source <unk> rate {unk:.2%}")
    return Prepared(train, valid, src_tok, tgt_tok, reports, list(valid_pairs))


def prepared_tokenizers(corpus: PreparedCorpus) -> tuple[Tokenizer, Tokenizer]:
    """The tokenizers written beside a prepared corpus: one joint one (returned twice), or one per side."""
    paths = corpus.tokenizer_paths
    if saved.JOINT_TOKENIZER in paths:
        joint = Tokenizer.load(paths[saved.JOINT_TOKENIZER])
        return joint, joint
    if saved.SRC_TOKENIZER in paths and saved.TGT_TOKENIZER in paths:
        return Tokenizer.load(paths[saved.SRC_TOKENIZER]), Tokenizer.load(paths[saved.TGT_TOKENIZER])
    raise checkpoint.CheckpointError(
        f"{corpus.directory}: has no {saved.JOINT_TOKENIZER} (or {saved.SRC_TOKENIZER} + "
        f"{saved.TGT_TOKENIZER}); the prepared corpus is incomplete, run qkv prepare again"
    )


def prepared_data(
    data: DataConfig, *, max_len: int, eos_id: int, tokenizers: tuple[Tokenizer, Tokenizer] | None = None
) -> Prepared:
    """A prepared directory as training data: its examples read from disk, its tokenizers, and as
    validation ``data.valid`` if given, else the validation pairs prepared with it.

    ``tokenizers`` (a resumed run's, an initial model's) must be the very ones the corpus was prepared with;
    the corpus's pairs must fit ``max_len`` positions and end in ``eos_id``.
    """
    assert data.train is not None
    corpus = PreparedCorpus(data.train)
    files = prepared_tokenizers(corpus)
    if tokenizers is not None:
        mine = saved.tokenizer_files(*tokenizers)
        if mine != saved.tokenizer_files(*files):
            raise ValueError(
                f"{corpus.directory}: was prepared with another tokenizer than this model's; prepare it "
                "again with qkv prepare --tokenizer-from MODEL"
            )
        files = tokenizers
    src_tok, tgt_tok = files
    if corpus.eos_id != eos_id:
        raise ValueError(
            f"{corpus.directory}: its sources end in id {corpus.eos_id}, the model's </s> is {eos_id}"
        )
    if corpus.max_positions > max_len:
        raise ValueError(
            f"{corpus.directory}: holds pairs of up to {corpus.max_positions} tokens a side, but the model "
            f"takes {max_len} positions; pass --max-positions {corpus.max_positions} or prepare again with "
            f"--max-positions {max_len}"
        )
    reports = corpus.report()
    valid_pairs: list[tuple[str, str]] = []
    if data.valid is not None:
        valid_corpus = read_corpus(
            data.valid,
            tgt_path=data.valid_tgt,
            src_col=data.src_col,
            tgt_col=data.tgt_col,
            max_chars=data.max_chars,
            skip_bad=data.skip_bad,
        )
        reports.append(valid_corpus.report())
        valid_pairs = valid_corpus.pairs
    elif corpus.valid_path is not None:
        valid_pairs = read_corpus(corpus.valid_path, file_format="jsonl", max_chars=None).pairs
        reports.append(f"{corpus.valid_path}: {len(valid_pairs):,} validation pairs")
    valid, dropped = encode_pairs(valid_pairs, src_tok, tgt_tok, max_len=max_len, eos_id=eos_id)
    if dropped:
        reports.append(f"left out as longer than {max_len} tokens: {dropped:,} validation pairs")
    return Prepared(corpus, valid, src_tok, tgt_tok, reports, valid_pairs)


def prepare_directory(
    out: str | os.PathLike[str],
    source: CorpusSource,
    *,
    skip_bad: bool,
    tok: TokenizerConfig,
    max_positions: int,
    tokenizers: tuple[Tokenizer, Tokenizer] | None = None,
    tokenizer_from: str | None = None,
    eos_id: int = 2,
    valid: CorpusSource | None = None,
    workers: int = 1,
    chunk_bytes: int | None = None,
    sample_size: int = prepare_files.DEFAULT_SAMPLE_SIZE,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    say: Callable[[str], None] = print,
) -> list[str]:
    """``qkv prepare``: tokenize a corpus once into shards in ``out`` (:mod:`qkv.data.prepare`), training
    the tokenizers on a uniform sample of at most ``sample_size`` pairs unless ``tokenizers`` are given
    (from ``tokenizer_from``, a model). Returns the report lines.

    The result equals what :func:`prepare` encodes in memory from the same file: the same pairs, ids and
    left-out pairs, and, for a corpus of at most ``sample_size`` pairs, the same tokenizer.
    """
    chunks = prepare_files.plan_chunks(source, skip_bad=skip_bad, chunk_bytes=chunk_bytes)
    info: dict[str, Any] = {"kind": tok.kind, "vocab_size": tok.vocab_size, "joint": tok.joint}
    if tokenizers is None:
        sample, pairs = prepare_files.sample_pairs(
            source, chunks, skip_bad=skip_bad, size=sample_size, seed=seed, workers=workers, progress=progress
        )
        say(f"training the tokenizer on {len(sample):,} of {pairs:,} pairs")
        tokenizers = fit_tokenizers(sample, tok)
        info["sample"] = {
            "method": "uniform, smallest random keys",
            "size": sample_size,
            "pairs": len(sample),
            "seed": seed,
        }
        del sample  # before the workers start: they would inherit it
    else:
        joint = tokenizers[0] is tokenizers[1]
        info = {"from": tokenizer_from, "joint": joint, "vocab_size": tokenizers[0].vocab_size}
    src_tok, tgt_tok = tokenizers
    valid_pairs: list[tuple[str, str]] = []
    valid_report = None
    if valid is not None:
        valid_corpus = read_source(valid, skip_bad=skip_bad)
        valid_pairs, valid_report = valid_corpus.pairs, valid_corpus.report()
    return prepare_files.write_prepared(
        out,
        source,
        chunks,
        skip_bad=skip_bad,
        src_tokenizer=src_tok,
        tgt_tokenizer=tgt_tok,
        tokenizer_files=saved.tokenizer_files(src_tok, tgt_tok),
        tokenizer_info=info,
        max_positions=max_positions,
        eos_id=eos_id,
        valid_pairs=valid_pairs,
        valid_report=valid_report,
        workers=workers,
        progress=progress,
        overwrite=overwrite,
    )


def _shared_tokenizers(
    run: Path, data: DataConfig, tok: TokenizerConfig
) -> tuple[Tokenizer, Tokenizer] | None:
    """Under torchrun, rank 0 trains the tokenizers and the other ranks load them, so all ranks agree.
    (A prepared corpus brings its own, the same on every rank.)"""
    rank, world = distributed_context()
    if world == 1 or (data.train is not None and is_prepared(data.train)):
        return None
    staging = run / ".tokenizers"
    if rank == 0:
        src_tok, tgt_tok = fit_tokenizers(read_pairs(data)[0], tok)
        for name, text in saved.tokenizer_files(src_tok, tgt_tok).items():
            staging.mkdir(parents=True, exist_ok=True)
            (staging / name).write_text(text, encoding="utf-8")
    torch.distributed.barrier()
    if (staging / saved.JOINT_TOKENIZER).is_file():
        joint = Tokenizer.load(staging / saved.JOINT_TOKENIZER)
        return joint, joint
    return Tokenizer.load(staging / saved.SRC_TOKENIZER), Tokenizer.load(staging / saved.TGT_TOKENIZER)


def _absolute_paths(data: DataConfig) -> dict[str, Any]:
    """``data`` as JSON with absolute file paths, so that a resume from another directory finds them."""
    paths = ("train", "train_tgt", "valid", "valid_tgt")
    return {k: os.path.abspath(v) if k in paths and v is not None else v for k, v in asdict(data).items()}


def model_config_for(
    preset_name: str, src_tok: Tokenizer, tgt_tok: Tokenizer, **overrides: Any
) -> ModelConfig:
    """The preset with vocabulary sizes from the tokenizers (shared embeddings only for one vocabulary)."""
    joint = src_tok is tgt_tok
    if not joint:
        overrides.setdefault("share_embeddings", False)
    return preset(preset_name, src_tok.vocab_size, None if joint else tgt_tok.vocab_size, **overrides)


def warm_start(model: nn.Module, source: nn.Module) -> tuple[list[str], list[str]]:
    """Copy every tensor of ``source`` whose name and shape ``model`` has too; return (copied, left as
    initialised) parameter names of ``model``.

    A NAT starts from a trained autoregressive model this way (the encoder, embeddings and decoder layers
    have the same names; only the length predictor is new), and an autoregressive model of another depth
    from the layers the two share.
    """
    theirs = source.state_dict()
    copied, fresh = [], []
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name in theirs and theirs[name].shape == tensor.shape:
                tensor.copy_(theirs[name])
                copied.append(name)
            else:
                fresh.append(name)
    return copied, fresh


def _summarise(names: Sequence[str]) -> str:
    """Parameter names grouped by module: 'encoder.3 (12), length_proj (2)'."""
    groups: dict[str, int] = {}
    for name in names:
        parts = name.split(".")
        key = ".".join(parts[:2]) if len(parts) > 2 and parts[1].isdigit() else parts[0]
        groups[key] = groups.get(key, 0) + 1
    return ", ".join(f"{k} ({n})" for k, n in groups.items()) or "none"


def train(
    run_dir: str | os.PathLike[str],
    *,
    data: DataConfig,
    tok: TokenizerConfig,
    preset_name: str,
    model_overrides: dict[str, Any],
    train_config: TrainConfig,
    resume: bool = False,
    hooks: Sequence[ValidationHook] = (),
    make_hooks: Callable[[Prepared], Sequence[ValidationHook]] | None = None,
    device: str = "cpu",
    progress: bool = True,
    say: Callable[[str], None] = print,
    keep_stops: bool = False,
    model_type: ModelType = "seq2seq",
    length_weight: float = DEFAULT_LENGTH_WEIGHT,
    length_method: str = "classifier",
    init_from: str | os.PathLike[str] | None = None,
    before_fit: Callable[[], None] | None = None,
) -> TrainResult:
    """Train (or resume) a translation model in ``run_dir``; see ``qkv train --help``.

    Resuming reuses the run's saved tokenizers, model config and training config so that it continues
    the very same run. The stop conditions are ``train_config``'s, or the saved ones with ``keep_stops``.
    The saved data config is used too when ``data`` names no training file (the data of a run whose data
    was given cannot silently become the demo corpus, nor a demo corpus of another seed).

    ``model_type="nat"`` trains the non-autoregressive model (:mod:`qkv.models.nat`) with the
    conditional masked LM loss plus ``length_weight`` times the length loss (:mod:`qkv.train.nat_task`),
    its length chosen by ``length_method`` (:class:`~qkv.config.NATConfig`); a resumed run keeps the
    kind of model it was started with.

    ``init_from`` (a model or run directory) starts a new run from a trained model: its tokenizers and
    architecture (``model_overrides`` may change e.g. the depth) and every weight whose name and shape
    match (:func:`warm_start`); ``preset_name`` and ``tok`` are then not used.

    ``before_fit`` is called once the data and the model are ready, just before the first step (``qkv
    train`` writes the run's resolved options then: a run refused for its data leaves nothing behind).
    """
    run = Path(run_dir)
    latest = checkpoint.latest_checkpoint(run) if resume else None
    if resume and latest is None:
        raise FileNotFoundError(f"{run}: no checkpoint to resume from (checkpoints/LATEST is missing)")
    if resume and init_from is not None:
        raise ValueError("a resumed run continues from its own checkpoint; leave out the initial model")
    if not resume and checkpoint.latest_checkpoint(run) is not None:
        raise FileExistsError(
            f"{run}: already holds a training run; pass --resume {run} to continue it, "
            f"or choose another --out"
        )
    start = time.monotonic()
    if latest is not None:
        loaded = saved.load(latest)
        state_file = latest / checkpoint.TRAINER_STATE_FILE
        saved_state = checkpoint.load_json(state_file)
        saved_config = saved_state.get("train_config")
        if not isinstance(saved_config, dict):
            raise checkpoint.CheckpointError(
                f"{state_file}: key 'train_config' is missing or not an object; the file is damaged"
            )
        stops = {k: getattr(train_config, k) for k in ("max_steps", "max_epochs", "max_minutes")}
        train_config = TrainConfig.from_dict(
            saved_config if keep_stops else {**saved_config, **stops}, source=str(state_file)
        )
        if data.train is None and saved_state.get("data_config") is not None:
            data = _saved_data_config(saved_state["data_config"], state_file)
        model_config = loaded.model.config
        prepared = prepare(
            data,
            tok,
            max_len=model_config.max_positions,
            eos_id=model_config.eos_id,
            tokenizers=(loaded.src_tokenizer, loaded.tgt_tokenizer),
        )
    elif init_from is not None:
        source = saved.load(init_from)
        fields = {f.name for f in dataclasses.fields(ModelConfig)}
        base = {k: v for k, v in source.model.config.to_dict().items() if k in fields}
        model_config = ModelConfig.from_dict({**base, **model_overrides})
        prepared = prepare(
            data,
            tok,
            max_len=model_config.max_positions,
            eos_id=model_config.eos_id,
            tokenizers=(source.src_tokenizer, source.tgt_tokenizer),
        )
        if model_type == "nat":
            model_config = NATConfig.from_dict({**model_config.to_dict(), "length_method": length_method})
        torch.manual_seed(train_config.seed)
    else:
        if data.train is not None and is_prepared(data.train) and "max_positions" not in model_overrides:
            # The model takes the longest pairs the corpus was prepared with, unless told otherwise.
            model_overrides = {**model_overrides, "max_positions": read_manifest(data.train)["max_positions"]}
        max_len = model_overrides.get("max_positions", preset(preset_name, 32).max_positions)
        prepared = prepare(data, tok, max_len=max_len, tokenizers=_shared_tokenizers(run, data, tok))
        model_config = model_config_for(
            preset_name, prepared.src_tokenizer, prepared.tgt_tokenizer, **model_overrides
        )
        if model_type == "nat":
            model_config = NATConfig.from_dict({**model_config.to_dict(), "length_method": length_method})
        torch.manual_seed(train_config.seed)  # the same initial weights on every rank
    for line in prepared.reports:
        say(line)
    say(f"prepared the data in {time.monotonic() - start:.1f}s")
    model: Transformer | NATransformer
    if latest is not None:
        model = loaded.model
    elif isinstance(model_config, NATConfig):
        model = NATransformer(model_config)
    else:
        model = Transformer(model_config)
    task: Task = (
        NATTask(
            model.config.pad_id,
            model.config.mask_id,
            model.config.max_length_offset,
            length_weight=length_weight,
            cut_at=model.config.eos_id if model.config.length_method == "cut" else None,
            max_positions=model.config.max_positions,
        )
        if isinstance(model, NATransformer)
        else Seq2SeqTask(model_config.pad_id, model_config.bos_id, model_config.eos_id)
    )
    if init_from is not None and latest is None:
        copied, fresh = warm_start(model, source.model)
        say(
            f"initialised {len(copied)} of {len(copied) + len(fresh)} tensors from {init_from}; "
            f"new: {_summarise(fresh)}"
        )
    say(model.summary())
    all_hooks = [*hooks, *(make_hooks(prepared) if make_hooks else [])]
    if train_config.best_by != "valid_nll" and prepared.valid and not all_hooks:
        raise ValueError(
            f"this run picks its best model by {train_config.best_by}, which needs a validation hook: "
            "pass --valid-bleu N (as when the run started)"
        )
    trainer = Trainer(
        model,
        train_config,
        run,
        train=prepared.train,
        valid=prepared.valid,
        task=task,
        model_json={checkpoint.CONFIG_FILE: {"model": model_config.to_dict()}},
        model_text=saved.tokenizer_files(prepared.src_tokenizer, prepared.tgt_tokenizer),
        hooks=all_hooks,
        device=device,
        progress=progress,
        run_info={"data_config": _absolute_paths(data)},
    )
    if latest is not None:
        trainer.resume(latest)
        say(f"resumed from {latest} at step {trainer.state.step}")
    if before_fit is not None:
        before_fit()
    return trainer.fit()
