"""`qkv train`: train a translation model; decoding reaches the trainer only through a validation hook."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from qkv.allocator import keep_freed_memory
from qkv.cli.common import Subparsers, UsageError, resolve_device
from qkv.config import PRESETS


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
            translator = Translator(model, prepared.src_tokenizer, prepared.tgt_tokenizer, method="greedy")
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
    if args.data and args.src:
        raise UsageError("give either --data FILE (TSV or JSONL) or --src FILE --tgt FILE, not both")
    if bool(args.src) != bool(args.tgt):
        raise UsageError("--src and --tgt go together: two aligned plain-text files")
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
        max_steps=args.max_steps,
        max_epochs=args.max_epochs if stops_given else 10,
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
            init_from=args.init_from,
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
    g.add_argument(
        "--model-type",
        choices=["seq2seq", "nat"],
        default="seq2seq",
        help="seq2seq: the autoregressive Transformer (default); nat: non-autoregressive, trained as "
        "Mask-Predict's conditional masked LM with a length predictor (train it on a `qkv distill` output)",
    )
    g.add_argument(
        "--length-weight",
        type=float,
        default=0.1,
        help="nat: weight of the length-prediction loss (default 0.1)",
    )
    g.add_argument(
        "--init-from",
        metavar="DIR",
        help="start from a trained model (model or run dir): its tokenizers, its architecture (the flags "
        "below may change e.g. the depth) and every weight whose name and shape match. A NAT learns much "
        "faster from its autoregressive teacher's weights than from scratch",
    )
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
    g.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the run in DIR from its latest checkpoint (its data too, unless data is given)",
    )
    g.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    g.add_argument(
        "--max-epochs",
        type=int,
        help="stop after this many epochs (default 10 if no other limit; with --resume and no limit, "
        "the run's own limits)",
    )
    g.add_argument("--max-minutes", type=float, help="stop after this many minutes of wall time")
    g.add_argument("--seed", type=int, default=0, help="seed for weights, data order and dropout (default 0)")
    g.add_argument("--save-every", type=int, default=1000, help="steps between checkpoints (default 1000)")
    g.add_argument("--keep-last", type=int, default=2, help="checkpoints kept (default 2)")
    g.add_argument("--valid-every", type=int, default=1000, help="steps between validations (default 1000)")
    g.add_argument("--patience", type=int, help="stop after this many validations without improvement")
    g.add_argument(
        "--valid-bleu",
        type=int,
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
    g.add_argument("--log-every", type=int, default=10, help="steps between log lines (default 10)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    g.add_argument("--threads", type=int, help="CPU threads for PyTorch")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)
