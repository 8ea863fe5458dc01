"""The ``qkv`` command: one thin function per subcommand; the work happens in the packages.

Run ``qkv --help`` or ``qkv SUBCOMMAND --help``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from qkv.config import PRESETS, ConfigError, ModelConfig, preset


class UsageError(Exception):
    """A problem with what the user asked for; printed without a traceback, exit code 2."""


# -- qkv params ------------------------------------------------------------------------------------
def _model_config_from_dir(path: Path) -> ModelConfig:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise UsageError(
            f"{config_path}: not found; --model expects a qkv model directory (config.json, "
            f"model.safetensors) as written by `qkv train`"
        )
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{config_path}: not valid JSON ({e})") from e
    return ModelConfig.from_dict(data.get("model", data))


def cmd_params(args: argparse.Namespace) -> int:
    from qkv import params
    from qkv.models.seq2seq import Transformer

    if args.model is not None:
        config = _model_config_from_dir(Path(args.model))
        title = f"{args.model}"
    else:
        config = preset(args.preset, args.vocab, args.tgt_vocab)
        vocab = f"{args.vocab:,}" if args.tgt_vocab is None else f"{args.vocab:,}/{args.tgt_vocab:,}"
        title = f"preset {args.preset!r}, vocabulary {vocab}"
    rows = params.seq2seq_rows(config)
    print(params.format_table(rows, title=f"Parameters of {title}"))
    if args.check:
        model = Transformer(config)
        counted = params.total(params.module_rows(model))
        formula = params.total(rows)
        verdict = "agrees" if counted == formula else "DISAGREES"
        print(f"\ninstantiated model: {counted:,} parameters — {verdict} with the formula ({formula:,})")
        return 0 if counted == formula else 1
    return 0


# -- qkv train -------------------------------------------------------------------------------------
def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA device is available here; use --device cpu")
    return name


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from qkv.train.pipeline import DataConfig, TokenizerConfig, train
    from qkv.train.trainer import NonFiniteLoss, TrainConfig, TrainingInterrupted

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data and args.src:
        raise UsageError("give either --data FILE (TSV or JSONL) or --src FILE --tgt FILE, not both")
    if bool(args.src) != bool(args.tgt):
        raise UsageError("--src and --tgt go together: two aligned plain-text files")
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
    stops = (args.max_steps, args.max_epochs, args.max_minutes)
    config = TrainConfig(
        max_tokens=args.max_tokens,
        accumulate=args.accumulate,
        max_steps=args.max_steps,
        max_epochs=args.max_epochs if any(x is not None for x in stops) else 10,
        max_minutes=args.max_minutes,
        lr=args.lr,
        schedule=args.schedule,
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
        log_every=args.log_every,
        max_bad_steps=args.max_bad_steps,
    )
    try:
        result = train(
            run_dir,
            data=data,
            tok=tok,
            preset_name=args.preset,
            model_overrides=overrides,
            train_config=config,
            resume=args.resume is not None,
            device=_device(args.device),
            progress=not args.quiet,
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


# -- qkv demo --------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from qkv.models.seq2seq import Transformer

    torch.manual_seed(args.seed)
    model = Transformer(preset(args.preset, 64)).eval()
    print(model.summary())
    src = torch.randint(4, 64, (2, 7))
    tgt = torch.randint(4, 64, (2, 5))
    with torch.inference_mode():
        logits = model(src, tgt)
    print(
        f"forward pass: source {tuple(src.shape)} + target {tuple(tgt.shape)} -> logits {tuple(logits.shape)}"
    )
    return 0


# -- the parser ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qkv",
        description="qkv: the Transformer of 'Attention Is All You Need', as real, fast, readable software.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  qkv params --preset base --vocab 37000 --check   # the paper's base model, line by line\n"
        "  qkv demo                                         # the built-in demo\n",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "params",
        help="parameter accounting, component by component",
        description="Print where every parameter of a model goes, with the formula for each "
        "component. Give a preset (and vocabulary size) or a saved model.",
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="base",
        help="model shape (default: base, the paper's base model)",
    )
    p.add_argument(
        "--vocab",
        type=int,
        default=37000,
        help="(shared) vocabulary size (default: 37000, the paper's joint BPE vocabulary)",
    )
    p.add_argument(
        "--tgt-vocab",
        type=int,
        default=None,
        help="separate target vocabulary size (implies unshared embeddings)",
    )
    p.add_argument(
        "--model", metavar="DIR", default=None, help="a saved qkv model directory instead of a preset"
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="also instantiate the model and check the formula against its real parameter count",
    )
    p.set_defaults(func=cmd_params)

    p = sub.add_parser(
        "train",
        help="train a translation model (default data: the built-in zh->en demo corpus)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train an encoder-decoder Transformer with teacher forcing and label-smoothed "
        "cross-entropy. Without --data, trains on the built-in Chinese->English demo corpus.",
        epilog="examples:\n"
        "  qkv train --out runs/demo --preset tiny --max-minutes 2\n"
        "  qkv train --data train.tsv --valid dev.tsv --src-col 2 --tgt-col 1 --preset small --out runs/zh-en\n"
        "  qkv train --resume runs/zh-en                      # continue exactly where it stopped\n"
        "  torchrun --nproc_per_node=2 -m qkv train ...       # data-parallel on 2 processes\n"
        "\nexit codes: 0 done, 2 bad usage or input, 3 non-finite loss, 130/143 stopped by SIGINT/SIGTERM "
        "(a checkpoint was saved)",
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        metavar="FILE",
        help='training pairs: TSV (see --src-col/--tgt-col) or JSONL ({"src": ..., "tgt": ...} per line)',
    )
    g.add_argument("--src", metavar="FILE", help="source side of two aligned plain-text files (with --tgt)")
    g.add_argument("--tgt", metavar="FILE", help="target side of two aligned plain-text files (with --src)")
    g.add_argument("--valid", metavar="FILE", help="validation pairs in the same format as --data")
    g.add_argument("--valid-src", metavar="FILE", help="validation source file (with --valid-tgt)")
    g.add_argument("--valid-tgt", metavar="FILE", help="validation target file")
    g.add_argument("--src-col", type=int, default=1, help="TSV column of the source, 1-based (default 1)")
    g.add_argument("--tgt-col", type=int, default=2, help="TSV column of the target, 1-based (default 2)")
    g.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip bad lines and report how many of each kind (default: stop at the first, naming "
        "file and line)",
    )
    g.add_argument("--max-chars", type=int, default=2000, help="longest line side accepted, in characters")
    g = p.add_argument_group("tokenizer")
    g.add_argument(
        "--tokenizer",
        choices=["bpe", "char"],
        default="bpe",
        help="bpe (Chinese characters stay single tokens, English gets subwords) or char",
    )
    g.add_argument("--vocab-size", type=int, default=8000, help="BPE vocabulary size (default 8000)")
    g.add_argument(
        "--separate-vocab",
        action="store_true",
        help="one vocabulary per side instead of one joint vocabulary (embeddings then unshared)",
    )
    g = p.add_argument_group("model")
    g.add_argument("--preset", choices=sorted(PRESETS), default="small", help="model shape (default small)")
    g.add_argument("--d-model", type=int, help="override the preset's model width")
    g.add_argument("--heads", type=int, help="override the number of attention heads")
    g.add_argument("--d-ff", type=int, help="override the feed-forward width")
    g.add_argument("--layers", type=int, help="encoder and decoder layers")
    g.add_argument("--encoder-layers", type=int, help="encoder layers")
    g.add_argument("--decoder-layers", type=int, help="decoder layers")
    g.add_argument("--dropout", type=float, help="override the dropout rate")
    g.add_argument("--pre-ln", action="store_true", help="pre-LN layers (default: post-LN, as in the paper)")
    g.add_argument("--max-positions", type=int, help="longest sequence in tokens (longer pairs are left out)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--max-tokens", type=int, default=4096, help="padded tokens per batch (default 4096)")
    g.add_argument("--accumulate", type=int, default=1, help="batches per optimizer step (default 1)")
    g.add_argument(
        "--lr", type=float, default=7e-4, help="peak learning rate (default 7e-4, the paper's base)"
    )
    g.add_argument(
        "--schedule",
        choices=["inverse_sqrt", "linear", "cosine", "constant"],
        default="inverse_sqrt",
        help="learning-rate schedule after warm-up (default inverse_sqrt, the paper's)",
    )
    g.add_argument("--warmup", type=int, default=4000, help="warm-up steps (default 4000)")
    g.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default 0)")
    g.add_argument("--label-smoothing", type=float, default=0.1, help="default 0.1 (the paper)")
    g.add_argument("--clip-norm", type=float, default=0.0, help="clip the gradient norm (0 = off)")
    g.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        default="fp32",
        help="bf16/fp16 autocast (fp16 with loss scaling on CUDA)",
    )
    g.add_argument(
        "--max-bad-steps",
        type=int,
        default=0,
        help="steps with a non-finite loss to skip before stopping (default 0)",
    )
    g = p.add_argument_group("run")
    g.add_argument("--out", metavar="DIR", help="run directory: checkpoints/, best/, metrics.jsonl")
    g.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its latest checkpoint")
    g.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    g.add_argument(
        "--max-epochs", type=int, help="stop after this many epochs (default 10 if no other limit)"
    )
    g.add_argument("--max-minutes", type=float, help="stop after this many minutes of wall time")
    g.add_argument("--seed", type=int, default=0, help="seed for weights, data order and dropout (default 0)")
    g.add_argument("--save-every", type=int, default=1000, help="steps between checkpoints (default 1000)")
    g.add_argument("--keep-last", type=int, default=2, help="checkpoints kept (default 2)")
    g.add_argument("--valid-every", type=int, default=1000, help="steps between validations (default 1000)")
    g.add_argument("--patience", type=int, help="stop after this many validations without improvement")
    g.add_argument("--log-every", type=int, default=10, help="steps between log lines (default 10)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    g.add_argument("--threads", type=int, help="CPU threads for PyTorch")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "demo",
        help="show the model on the built-in demo",
        description="The built-in demo: builds a model and runs a forward pass.",
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="small")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        code: int = args.func(args)
    except (UsageError, ConfigError, ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"qkv {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"qkv {args.command}: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
