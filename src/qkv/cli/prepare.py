"""`qkv prepare`: tokenize a corpus once into memory-mappable shards that `qkv train --data DIR` reads."""

from __future__ import annotations

import argparse
import os

from qkv.cli.common import Subparsers, UsageError, add_overwrite_option
from qkv.cli.corpus_options import add_corpus_options, add_tokenizer_options, check_corpus_options
from qkv.cli.flag_types import input_directory, input_file, output_directory, positive_int, seed

DEFAULT_MAX_POSITIONS = 256


def _available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cmd_prepare(args: argparse.Namespace) -> int:
    from qkv.data.corpus import corpus_source
    from qkv.train.pipeline import TokenizerConfig, prepare_directory

    check_corpus_options(args)
    if not args.data and not args.src:
        raise UsageError("say what to prepare: --data FILE (TSV or JSONL) or --src FILE --tgt FILE")
    columns = {"src_col": args.src_col, "tgt_col": args.tgt_col, "max_chars": args.max_chars}
    source = corpus_source(args.data or args.src, tgt_path=args.tgt, **columns)
    valid = None
    if args.valid or args.valid_src:
        valid = corpus_source(args.valid or args.valid_src, tgt_path=args.valid_tgt, **columns)
    tokenizers = None
    eos_id = 2
    max_positions = args.max_positions or DEFAULT_MAX_POSITIONS
    if args.tokenizer_from:
        from qkv.models import saved

        model = saved.load(args.tokenizer_from)
        tokenizers = (model.src_tokenizer, model.tgt_tokenizer)
        eos_id = model.model.config.eos_id
        max_positions = args.max_positions or model.model.config.max_positions
    tok = TokenizerConfig(kind=args.tokenizer, vocab_size=args.vocab_size, joint=not args.separate_vocab)
    lines = prepare_directory(
        args.out,
        source,
        skip_bad=args.skip_bad,
        tok=tok,
        max_positions=max_positions,
        tokenizers=tokenizers,
        tokenizer_from=args.tokenizer_from,
        eos_id=eos_id,
        valid=valid,
        workers=args.workers or _available_cores(),
        chunk_bytes=args.shard_mb * 2**20 if args.shard_mb else None,
        sample_size=args.tokenizer_sample,
        seed=args.seed,
        progress=not args.quiet,
        overwrite=args.overwrite,
        say=print,
    )
    for line in lines:
        print(line)
    print(f"prepared {args.out}; train on it with: qkv train --data {args.out} --out runs/NAME ...")
    return 0


def add_prepare_parser(sub: Subparsers) -> None:
    """`qkv prepare` and its options."""
    p = sub.add_parser(
        "prepare",
        help="tokenize a corpus once into shards on disk, for corpora larger than memory",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Read a corpus (TSV, JSONL or two aligned files) in worker processes, train the "
        "tokenizer on a uniform sample of its pairs (or take a model's), and write the token ids as "
        "memory-mappable .npy shards with a length index, prepared.json and the tokenizer. `qkv train "
        "--data DIR` then trains on it with memory that does not grow with the corpus. The directory is "
        "written atomically: a killed run leaves no half-written one.",
        epilog="examples:\n"
        "  qkv prepare --data train.tsv --src-col 2 --tgt-col 1 --valid dev.tsv --out data/zh-en\n"
        "  qkv train --data data/zh-en --preset small --out runs/zh-en       # train on it\n"
        "  qkv prepare --src train.zh --tgt train.en --vocab-size 16000 --workers 8 --out data/zh-en\n"
        "  qkv prepare --data more.jsonl --tokenizer-from runs/zh-en --out data/more   # for --init-from\n"
        "  qkv prepare --data big.tsv --skip-bad --tokenizer-sample 2000000 --out data/big\n"
        "\nThe tokenizer sample: each pair gets a random key (from --seed) and the pairs with the smallest\n"
        "keys are kept, a uniform sample of the whole file (its first lines are often one sub-corpus).\n"
        "A corpus of at most --tokenizer-sample pairs is sampled whole: its tokenizer is the one\n"
        "`qkv train --data FILE` would train.",
    )
    g = p.add_argument_group("data")
    add_corpus_options(
        g,
        data_type=input_file,
        data_help='pairs: TSV (see --src-col/--tgt-col) or JSONL ({"src": ..., "tgt": ...} per line)',
        valid_help="validation pairs in the same format, kept beside the shards as text (valid.jsonl)",
    )
    g.add_argument(
        "--max-positions",
        type=positive_int,
        help=f"longest side in tokens, </s> included; longer pairs are left out and counted (default "
        f"{DEFAULT_MAX_POSITIONS}, or the --tokenizer-from model's). `qkv train` gives its model this many "
        "positions unless told otherwise",
    )
    g = p.add_argument_group("tokenizer")
    add_tokenizer_options(g)
    g.add_argument(
        "--tokenizer-from",
        type=input_directory,
        metavar="DIR",
        help="use this model's (or run's) tokenizers instead of training one: for qkv train --init-from "
        "DIR, or to add data to a model",
    )
    g.add_argument(
        "--tokenizer-sample",
        type=positive_int,
        default=500_000,
        metavar="N",
        help="train the tokenizer on a uniform sample of at most N pairs (default 500000)",
    )
    g.add_argument("--seed", type=seed, default=0, help="seed of the tokenizer sample (default 0)")
    g = p.add_argument_group("output")
    g.add_argument(
        "--out", type=output_directory, metavar="DIR", required=True, help="the prepared directory to write"
    )
    add_overwrite_option(p)
    g.add_argument(
        "--workers",
        type=positive_int,
        metavar="N",
        help="worker processes reading and tokenizing (default: every core this process may use)",
    )
    g.add_argument(
        "--shard-mb",
        type=positive_int,
        metavar="MB",
        help="corpus megabytes per shard (default: a 32nd of the corpus, from 1 to 16): each worker takes a "
        "shard at a time, and the shards are the same whatever the number of workers",
    )
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_prepare)
