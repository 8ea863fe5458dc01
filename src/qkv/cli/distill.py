"""`qkv distill`: sequence-level knowledge distillation, a teacher's translations of a corpus as a TSV."""

from __future__ import annotations

import argparse
import sys

from qkv.allocator import keep_freed_memory
from qkv.cli.common import (
    Subparsers,
    UsageError,
    add_overwrite_option,
    add_pair_file_options,
    resolve_device,
)
from qkv.cli.flag_types import device_name, input_directory, output_file, positive_int
from qkv.cli.translate import search_config


def cmd_distill(args: argparse.Namespace) -> int:
    from qkv.distill import distill
    from qkv.models import saved
    from qkv.models.nat import NATransformer

    keep_freed_memory()  # each step's logits reuse pages instead of faulting fresh ones (qkv.allocator)

    teacher = saved.load(args.teacher, device=resolve_device(args.device))
    if isinstance(teacher.model, NATransformer):
        raise UsageError(f"--teacher: {teacher.path} is non-autoregressive; the teacher must be an AT model")
    written = distill(
        teacher.model,
        teacher.src_tokenizer,
        teacher.tgt_tokenizer,
        args.data,
        args.out,
        src_col=args.src_col,
        tgt_col=args.tgt_col,
        tgt_path=args.tgt,
        search=search_config(beam=args.beam),
        batch_size=args.batch_size,
        skip_bad=args.skip_bad,
        progress=not args.quiet,
        warn=lambda message: print(f"qkv distill: warning: {message}", file=sys.stderr),
        overwrite=args.overwrite,
    )
    print(
        f"wrote {written:,} distilled pairs to {args.out} (source in column {args.src_col}, the teacher's "
        f"translation in column {args.tgt_col}); train on it with: qkv train --model-type nat "
        f"--data {args.out} --src-col {args.src_col} --tgt-col {args.tgt_col} ..."
    )
    return 0


def add_distill_parser(sub: Subparsers) -> None:
    """`qkv distill` and its options."""
    p = sub.add_parser(
        "distill",
        help="sequence-level knowledge distillation: translate a corpus's sources with a teacher",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Translate the source side of a training corpus with a trained autoregressive model "
        "(the teacher) and write a TSV of (source, teacher translation) in the same column layout, for "
        "`qkv train --model-type nat --data OUT.tsv` (Kim and Rush, 2016; the standard NAT recipe).",
        epilog="example:\n  qkv distill --teacher runs/zh-en --data train.tsv --src-col 2 --tgt-col 1 "
        "--out train.distilled.tsv",
    )
    p.add_argument(
        "--teacher",
        type=input_directory,
        metavar="DIR",
        required=True,
        help="an autoregressive model or run directory",
    )
    add_pair_file_options(p, target="target")
    p.add_argument(
        "--out", type=output_file, metavar="FILE", required=True, help="the distilled TSV to write"
    )
    p.add_argument("--beam", type=positive_int, default=4, help="teacher beam size; 1 = greedy (default 4)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="sentences per batch (default 64)")
    p.add_argument("--skip-bad", action="store_true", help="skip bad lines (default: stop at the first)")
    p.add_argument("--device", type=device_name, default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_overwrite_option(p)
    p.set_defaults(func=cmd_distill)
