"""`qkv embed` and `qkv finetune`: sentence embeddings from, and fine-tuning of, BERT checkpoints."""

from __future__ import annotations

import argparse
import json
import sys

from qkv.allocator import keep_freed_memory
from qkv.cli.common import Subparsers, UsageError, resolve_device
from qkv.cli.flag_types import (
    device_name,
    input_directory,
    input_file,
    non_negative_int,
    output_directory,
    positive_float,
    positive_int,
    seed,
)


def _read_stdin_lines() -> list[str]:
    """Lines of standard input, split on \\n only (a lone \\r or U+2028 inside a line stays in it)."""
    try:
        data = sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"<stdin>: not UTF-8 ({e})") from e
    lines = [line.removesuffix("\r") for line in data.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    return lines


def _split_pairs(texts: list[str], where: str) -> list[tuple[str, str]]:
    """``text<TAB>text_pair`` inputs as (text, text_pair) tuples; anything but one tab is refused."""
    pairs = []
    for number, text in enumerate(texts, start=1):
        columns = text.split("\t")
        if len(columns) != 2:
            raise UsageError(
                f"{where} {number}: --pairs expects two tab-separated texts (text<TAB>text_pair), got "
                f"{len(columns)} column{'s' * (len(columns) != 1)}"
            )
        pairs.append((columns[0], columns[1]))
    return pairs


def cmd_embed(args: argparse.Namespace) -> int:
    from qkv.embed import SentenceEmbedder, cosine_similarity
    from qkv.models.bert_hf import CheckpointError

    texts = list(args.sentences) if args.sentences else _read_stdin_lines()
    pairs = _split_pairs(texts, "argument" if args.sentences else "<stdin>: line") if args.pairs else None
    try:
        embedder = SentenceEmbedder.from_pretrained(args.model)
    except (CheckpointError, FileNotFoundError) as e:
        raise UsageError(str(e)) from e
    if pairs is not None:
        vectors = embedder.embed_pairs(pairs, batch_size=args.batch_size)
    else:
        vectors = embedder.embed(texts, batch_size=args.batch_size)
    if args.similarity:
        for row in cosine_similarity(vectors).tolist():
            print(json.dumps(row))
    elif pairs is not None:
        for (text, text_pair), vector in zip(pairs, vectors.tolist(), strict=True):
            record = {"text": text, "text_pair": text_pair, "embedding": vector}
            print(json.dumps(record, ensure_ascii=False))
    else:
        for text, vector in zip(texts, vectors.tolist(), strict=True):
            print(json.dumps({"text": text, "embedding": vector}, ensure_ascii=False))
    return 0


def add_embed_parser(sub: Subparsers) -> None:
    """`qkv embed` and its options."""
    p = sub.add_parser(
        "embed",
        help="sentence embeddings from a Hugging Face BERT / sentence-transformers checkpoint",
        description="Embed sentences with a BERT-architecture checkpoint (config.json + model.safetensors, "
        "tokenizer.json or vocab.txt), pooled as its sentence-transformers folder declares (modules.json, "
        "1_Pooling/config.json; mean pooling for a plain BERT directory). Prints one JSON line per "
        'sentence, {"text": ..., "embedding": [...]}, or with --similarity the cosine matrix, one JSON '
        "row per line. Without sentences, reads one per line from standard input. With --pairs each input "
        "is two texts separated by a tab, read together as [CLS] A [SEP] B [SEP] (token types 0, then 1).",
    )
    p.add_argument("--model", type=input_directory, metavar="DIR", required=True, help="checkpoint directory")
    p.add_argument("sentences", nargs="*", help="sentences to embed (default: lines of standard input)")
    p.add_argument("--similarity", action="store_true", help="print the cosine similarity matrix instead")
    p.add_argument(
        "--pairs",
        action="store_true",
        help='each input is "text<TAB>text_pair": one embedding per pair, segment B = the second text',
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=32, help="sentences per forward pass (default: 32)"
    )
    p.set_defaults(func=cmd_embed)


def cmd_finetune(args: argparse.Namespace) -> int:
    from qkv import finetune
    from qkv.train.trainer import TrainConfig

    if args.pair_col is not None:
        if args.task != "classify":
            raise UsageError("--pair-col: sentence pairs are for --task classify; tagging reads one text")
        if args.pair_col in (args.text_col, args.label_col):
            raise UsageError(
                f"--pair-col {args.pair_col}: the second text needs a column of its own "
                f"(--text-col {args.text_col}, --label-col {args.label_col})"
            )

    config = TrainConfig(
        max_tokens=args.max_tokens,
        max_steps=args.max_steps,
        max_epochs=args.max_epochs if (args.max_steps or args.max_epochs) else 3,
        lr=args.lr,
        schedule="linear" if args.max_steps else "constant",
        warmup=args.warmup,
        weight_decay=0.01,
        label_smoothing=0.0,
        seed=args.seed,
        save_every=args.save_every,
        valid_every=args.valid_every,
        log_every=10,
    )
    keep_freed_memory()  # training: large tensors reuse pages instead of faulting fresh ones each step
    result, acc = finetune.finetune(
        args.out,
        kind=args.task,
        train_path=args.data,
        valid_path=args.valid,
        pretrained=args.model,
        train_config=config,
        text_col=args.text_col,
        label_col=args.label_col,
        pair_col=args.pair_col,
        device=resolve_device(args.device),
        progress=not args.quiet,
    )
    print(f"stopped ({result.stopped_because}) at step {result.state.step}; model in {args.out}")
    if acc is not None:
        print(f"validation accuracy: {acc:.2%}")
    if args.export_hf:
        print(f"Hugging Face copy: {finetune.export_hf(finetune.load(args.out), args.export_hf)}")
    return 0


def add_finetune_parser(sub: Subparsers) -> None:
    """`qkv finetune` and its options."""
    p = sub.add_parser(
        "finetune",
        help="fine-tune a BERT checkpoint for classification (N->1) or tagging (N->N)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fine-tune a Hugging Face BERT directory with qkv's trainer (checkpoints, --resume-able "
        "run directory, progress, metrics.jsonl). classify: TSV lines of LABEL<TAB>TEXT, or with --pair-col 3 "
        "LABEL<TAB>TEXT<TAB>TEXT_PAIR (read as [CLS] TEXT [SEP] TEXT_PAIR [SEP], token types 0 then 1: "
        "entailment, paraphrase, question-answer tasks); tag: TSV lines of TAGS<TAB>WORDS, space-separated, "
        "one tag per word (the first word piece carries it).",
        epilog="example:\n  qkv finetune --task classify --model all-MiniLM-L6-v2/ --data train.tsv "
        "--valid dev.tsv --out runs/sentiment --max-epochs 3",
    )
    p.add_argument("--task", choices=["classify", "tag"], required=True, help="classify (N->1) or tag (N->N)")
    p.add_argument(
        "--model", type=input_directory, metavar="DIR", required=True, help="a Hugging Face BERT directory"
    )
    p.add_argument("--data", type=input_file, metavar="FILE", required=True, help="training TSV")
    p.add_argument("--valid", type=input_file, metavar="FILE", help="validation TSV (accuracy is reported)")
    p.add_argument(
        "--label-col", type=positive_int, default=1, help="TSV column of the label/tags (default 1)"
    )
    p.add_argument(
        "--text-col", type=positive_int, default=2, help="TSV column of the text/words (default 2)"
    )
    p.add_argument(
        "--pair-col",
        type=positive_int,
        help="classify: TSV column of a second text, read as segment B (default: single texts)",
    )
    p.add_argument("--out", type=output_directory, metavar="DIR", required=True, help="run directory")
    p.add_argument("--max-steps", type=positive_int, help="optimizer steps (linear decay to 0 at the end)")
    p.add_argument("--max-epochs", type=positive_int, help="epochs (default 3 if no --max-steps)")
    p.add_argument(
        "--max-tokens", type=positive_int, default=4096, help="padded tokens per batch (default 4096)"
    )
    p.add_argument("--lr", type=positive_float, default=5e-5, help="peak learning rate (default 5e-5)")
    p.add_argument("--warmup", type=non_negative_int, default=100, help="warm-up steps (default 100)")
    p.add_argument(
        "--save-every", type=positive_int, default=500, help="steps between checkpoints (default 500)"
    )
    p.add_argument(
        "--valid-every", type=positive_int, default=500, help="steps between validations (default 500)"
    )
    p.add_argument(
        "--export-hf", type=output_directory, metavar="DIR", help="also write the Hugging Face layout here"
    )
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--device", type=device_name, default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_finetune)
