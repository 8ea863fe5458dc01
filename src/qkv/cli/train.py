"""`qkv train`: train a translation model; decoding reaches the trainer only through a validation hook."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from qkv.allocator import keep_freed_memory
from qkv.cli.common import Subparsers, UsageError, resolve_device
from qkv.cli.config_files import add_config_options, dump_config
from qkv.cli.corpus_options import add_corpus_options, add_tokenizer_options, check_corpus_options
from qkv.cli.flag_types import (
    device_name,
    input_file,
    non_negative_int,
    output_directory,
    positive_float,
    positive_int,
    seed,
)
from qkv.cli.train_options import add_model_options, add_optimisation_options, resolved_schedule
from qkv.cli.translate import search_config


def corpus_or_prepared(text: str) -> str:
    """A type for --data: a corpus file, or a directory that `qkv prepare` wrote."""
    from qkv.data.prepared import MANIFEST

    path = Path(text)
    if path.is_dir():
        if not (path / MANIFEST).is_file():
            raise argparse.ArgumentTypeError(
                f"{text} is a directory without {MANIFEST}; give a corpus file or a `qkv prepare` output"
            )
        return text
    return input_file(text)


def _bleu_hook(sentences: int) -> Any:
    """A validation hook (for the trainer) that translates the first validation sentences greedily and
    reports sacreBLEU; decoding is wired in here because qkv.train never imports qkv.decode."""

    def make(prepared: Any) -> list[Any]:
        from qkv.evaluate import score
        from qkv.translator import Translator

        pairs = prepared.valid_pairs[:sentences]
        if not pairs:
            return []

        def bleu(model: Any, step: int) -> dict[str, float]:
            greedy = search_config(beam=1)
            translator = Translator(model, prepared.src_tokenizer, prepared.tgt_tokenizer, search=greedy)
            hypotheses = translator.translate([s for s, _ in pairs])
            return {"valid_bleu": score(hypotheses, [t for _, t in pairs]).bleu}

        return [bleu]

    return make


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from qkv.train.pipeline import DataConfig, TokenizerConfig, train
    from qkv.train.trainer import NonFiniteLoss, TrainConfig, TrainingInterrupted

    if args.threads:
        torch.set_num_threads(args.threads)
    check_corpus_options(args)
    if args.resume and args.init_from:
        raise UsageError("--resume continues a run from its own checkpoint; --init-from starts a new one")
    if args.resume and args.out and Path(args.resume) != Path(args.out):
        raise UsageError("--resume DIR continues the run in DIR; leave out --out")
    run_dir = args.resume or args.out
    if run_dir is None:
        raise UsageError("say where the run goes: --out DIR (or --resume DIR to continue one)")
    data = DataConfig(
        train=args.data or args.src,
        train_tgt=args.tgt,
        valid=args.valid or args.valid_src,
        valid_tgt=args.valid_tgt,
        src_col=args.src_col,
        tgt_col=args.tgt_col,
        skip_bad=args.skip_bad,
        max_chars=args.max_chars,
        demo_seed=args.seed,
    )
    tok = TokenizerConfig(kind=args.tokenizer, vocab_size=args.vocab_size, joint=not args.separate_vocab)
    overrides = {
        name: value
        for name, value in (
            ("d_model", args.d_model),
            ("heads", args.heads),
            ("d_ff", args.d_ff),
            ("encoder_layers", args.encoder_layers or args.layers),
            ("decoder_layers", args.decoder_layers or args.layers),
            ("dropout", args.dropout),
            ("norm_first", True if args.pre_ln else None),
            ("max_positions", args.max_positions),
        )
        if value is not None
    }
    if args.best_by == "bleu" and not args.valid_bleu:
        raise UsageError("--best-by bleu picks best/ by the BLEU that --valid-bleu N measures: give both")
    stops = (args.max_steps, args.max_epochs, args.max_minutes)
    stops_given = any(x is not None for x in stops)
    config = TrainConfig(
        max_tokens=args.max_tokens,
        accumulate=args.accumulate,
        batch_window=args.batch_window,
        max_steps=args.max_steps,
        max_epochs=args.max_epochs if stops_given else 10,
        max_minutes=args.max_minutes,
        lr=args.lr,
        schedule=resolved_schedule(
            args.schedule, max_steps=args.max_steps, max_epochs=args.max_epochs, max_minutes=args.max_minutes
        ),
        warmup=args.warmup,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        clip_norm=args.clip_norm,
        precision=args.precision,
        seed=args.seed,
        save_every=args.save_every,
        keep_last=args.keep_last,
        valid_every=args.valid_every,
        patience=args.patience,
        best_by=f"valid_{args.best_by}",
        log_every=args.log_every,
        max_bad_steps=args.max_bad_steps,
    )
    keep_freed_memory()  # training: large tensors reuse pages instead of faulting fresh ones each step
    try:
        result = train(
            run_dir,
            data=data,
            tok=tok,
            preset_name=args.preset,
            model_overrides=overrides,
            train_config=config,
            resume=args.resume is not None,
            device=resolve_device(args.device),
            progress=not args.quiet,
            keep_stops=not stops_given,  # --resume alone keeps the run's own stop conditions
            make_hooks=_bleu_hook(args.valid_bleu) if args.valid_bleu else None,
            model_type=args.model_type,
            length_weight=args.length_weight,
            length_method=args.length_method,
            init_from=args.init_from,
            before_fit=None if args.resume else lambda: _keep_resolved_options(args, Path(run_dir)),
        )
    except TrainingInterrupted as stop:
        print(f"qkv train: {stop}; continue with: qkv train --resume {run_dir}", file=sys.stderr)
        return stop.exit_code
    except NonFiniteLoss as e:
        print(f"qkv train: error: {e}", file=sys.stderr)
        return 3
    best = f", best model in {result.best_dir}" if result.best_dir else ""
    print(
        f"stopped ({result.stopped_because}) at step {result.state.step}; "
        f"last checkpoint {result.last_checkpoint}{best}"
    )
    return 0


RESOLVED_OPTIONS_FILE = "train.yaml"


def _keep_resolved_options(args: argparse.Namespace, run_dir: Path) -> None:
    """A new run keeps its resolved options in ``train.yaml``, a ``--config`` file that repeats it
    (written by torchrun's rank 0 only)."""
    from qkv.storage.atomic import write_file

    if os.environ.get("RANK", "0") != "0":
        return
    write_file(run_dir / RESOLVED_OPTIONS_FILE, dump_config(args))


def add_train_parser(sub: Subparsers) -> None:
    """`qkv train` and its options, in the groups --help shows."""
    p = sub.add_parser(
        "train",
        help="train a translation model (default data: the built-in zh->en demo corpus)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train an encoder-decoder Transformer with teacher forcing and label-smoothed "
        "cross-entropy. Without --data, trains on the built-in Chinese->English demo corpus.",
        epilog="examples:\n"
        "  qkv train --out runs/demo --preset tiny --max-minutes 2\n"
        "  qkv train --data train.tsv --valid dev.tsv --src-col 2 --tgt-col 1 --preset small --out runs/zh-en\n"
        "  qkv train --data data/zh-en --preset small --out runs/zh-en   # a `qkv prepare` output\n"
        "  qkv train --resume runs/zh-en                      # continue exactly where it stopped\n"
        "  torchrun --nproc_per_node=2 -m qkv train ...       # data-parallel on 2 processes\n"
        "  qkv train --config zh-en.yaml --lr 5e-4            # options from a file, a flag overriding one\n"
        "  qkv train --data train.tsv --out runs/x --dump-config > x.yaml   # those options, as a file\n"
        "\nexit codes: 0 done, 1 could not finish (disk full, I/O error), 2 bad usage or input, 3 non-finite "
        "loss, 130/143 stopped by SIGINT/SIGTERM (a checkpoint was saved)",
    )
    g = p.add_argument_group("data")
    add_corpus_options(
        g,
        data_type=corpus_or_prepared,
        data_help='training pairs: TSV (see --src-col/--tgt-col) or JSONL ({"src": ..., "tgt": ...} per '
        "line), or a directory written by `qkv prepare` (its tokenizer, its validation pairs unless --valid "
        "is given, and its longest pairs as --max-positions; the corpus and tokenizer options do not apply)",
        valid_help="validation pairs in the same format as --data",
    )
    g = p.add_argument_group("tokenizer")
    add_tokenizer_options(g)
    add_model_options(p)
    add_optimisation_options(p)
    g = p.add_argument_group("run")
    g.add_argument(
        "--out",
        type=output_directory,
        metavar="DIR",
        help="run directory: checkpoints/, best/, metrics.jsonl and train.yaml (the resolved options, a "
        "--config file that repeats the run)",
    )
    g.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the run in DIR from its latest checkpoint (its data too, unless data is given)",
    )
    g.add_argument("--max-steps", type=positive_int, help="stop after this many optimizer steps")
    g.add_argument(
        "--max-epochs",
        type=positive_int,
        help="stop after this many epochs (default 10 if no other limit; with --resume and no limit, "
        "the run's own limits)",
    )
    g.add_argument("--max-minutes", type=positive_float, help="stop after this many minutes of wall time")
    g.add_argument(
        "--seed", type=seed, default=0, help="seed for weights, data order and dropout (default 0)"
    )
    g.add_argument(
        "--save-every", type=positive_int, default=1000, help="steps between checkpoints (default 1000)"
    )
    g.add_argument("--keep-last", type=positive_int, default=2, help="checkpoints kept (default 2)")
    g.add_argument(
        "--valid-every", type=positive_int, default=1000, help="steps between validations (default 1000)"
    )
    g.add_argument(
        "--patience", type=positive_int, help="stop after this many validations without improvement"
    )
    g.add_argument(
        "--valid-bleu",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="at each validation also translate the first N validation pairs (greedy; a NAT: its single "
        "pass) and log their sacreBLEU as valid_bleu (default 0: off)",
    )
    g.add_argument(
        "--best-by",
        choices=["nll", "bleu"],
        default="nll",
        help="the validation metric that picks best/ and that --patience watches: nll (default) or bleu "
        "(needs --valid-bleu N; suits --model-type nat, whose validation loss on random masks of the "
        "references can rise while its BLEU improves). A resumed run keeps its own.",
    )
    g.add_argument("--log-every", type=positive_int, default=10, help="steps between log lines (default 10)")
    g.add_argument("--device", type=device_name, default="auto", help="cpu, cuda, cuda:N or auto (default)")
    g.add_argument("--threads", type=positive_int, help="CPU threads for PyTorch")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_options(p, example="max-tokens: 3072")
    p.set_defaults(func=cmd_train)
