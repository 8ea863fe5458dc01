"""The option groups of `qkv train` that shape the model and its optimisation (the data, tokenizer and run
groups are in :mod:`qkv.cli.train`, beside the command that reads them all)."""

from __future__ import annotations

import argparse
from typing import cast

from qkv.cli.flag_types import (
    fraction,
    input_directory,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from qkv.config import PRESETS
from qkv.data.batching import WINDOW
from qkv.train.budget import CALIBRATION_SKIP, CALIBRATION_STEPS
from qkv.train.schedule import SCHEDULES, Schedule


def add_model_options(p: argparse.ArgumentParser) -> None:
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
        type=non_negative_float,
        default=0.1,
        help="nat: weight of the length-prediction loss (default 0.1)",
    )
    g.add_argument(
        "--length-method",
        choices=["classifier", "cut"],
        default="classifier",
        help="nat: how the output length is chosen. classifier: a length predictor classifies the "
        "offset from the source length (default; allows --length-beam); cut: the decoder gets source "
        "length + 32 positions and the output is cut at its first </s>",
    )
    g.add_argument(
        "--init-from",
        type=input_directory,
        metavar="DIR",
        help="start from a trained model (model or run dir): its tokenizers, its architecture (the flags "
        "below may change e.g. the depth) and every weight whose name and shape match. A NAT learns much "
        "faster from its autoregressive teacher's weights than from scratch",
    )
    g.add_argument("--preset", choices=sorted(PRESETS), default="small", help="model shape (default small)")
    g.add_argument("--d-model", type=positive_int, help="override the preset's model width")
    g.add_argument("--heads", type=positive_int, help="override the number of attention heads")
    g.add_argument("--d-ff", type=positive_int, help="override the feed-forward width")
    g.add_argument("--layers", type=positive_int, help="encoder and decoder layers")
    g.add_argument("--encoder-layers", type=positive_int, help="encoder layers")
    g.add_argument("--decoder-layers", type=positive_int, help="decoder layers")
    g.add_argument("--dropout", type=fraction, help="override the dropout rate")
    g.add_argument("--pre-ln", action="store_true", help="pre-LN layers (default: post-LN, as in the paper)")
    g.add_argument(
        "--max-positions", type=positive_int, help="longest sequence in tokens (longer pairs are left out)"
    )


def add_optimisation_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("optimisation")
    g.add_argument(
        "--max-tokens", type=positive_int, default=4096, help="padded tokens per batch (default 4096)"
    )
    g.add_argument(
        "--accumulate", type=positive_int, default=1, help="batches per optimizer step (default 1)"
    )
    g.add_argument(
        "--batch-window",
        type=positive_int,
        default=WINDOW,
        metavar="PAIRS",
        help="pairs sorted by length together to make batches. A larger corpus is dealt at random into "
        "windows of at most PAIRS each epoch and batched a window at a time, so that memory does not grow "
        f"with the corpus (as Marian's maxi-batches; default {WINDOW:,})",
    )
    g.add_argument(
        "--lr", type=positive_float, default=7e-4, help="peak learning rate (default 7e-4, the paper's base)"
    )
    g.add_argument(
        "--schedule",
        choices=["auto", *SCHEDULES],
        default="auto",
        help="learning-rate schedule after warm-up. linear and cosine decay to 0 at --max-steps, or at the end "
        f"of the --max-minutes budget: the step rate is measured over steps {CALIBRATION_SKIP + 1}-"
        f"{CALIBRATION_SKIP + CALIBRATION_STEPS} and the step count that "
        "fits is planned (docs/real-data.md). auto (default): linear when --max-minutes is the only limit "
        "given, else inverse_sqrt (the paper's)",
    )
    g.add_argument("--warmup", type=non_negative_int, default=4000, help="warm-up steps (default 4000)")
    g.add_argument(
        "--weight-decay", type=non_negative_float, default=0.0, help="AdamW weight decay (default 0)"
    )
    g.add_argument("--label-smoothing", type=fraction, default=0.1, help="default 0.1 (the paper)")
    g.add_argument(
        "--clip-norm", type=non_negative_float, default=0.0, help="clip the gradient norm (0 = off)"
    )
    g.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        default="fp32",
        help="bf16/fp16 autocast (fp16 with loss scaling on CUDA)",
    )
    g.add_argument(
        "--max-bad-steps",
        type=non_negative_int,
        default=0,
        help="steps with a non-finite loss to skip before stopping (default 0)",
    )


def resolved_schedule(
    schedule: str, *, max_steps: int | None, max_epochs: int | None, max_minutes: float | None
) -> Schedule:
    """``--schedule auto`` made concrete: a run bounded by its time budget alone decays to that budget
    (linear, the budgeted-training paper's best); any other run keeps the paper's inverse_sqrt."""
    if schedule != "auto":
        return cast(Schedule, schedule)
    budget_only = max_minutes is not None and max_steps is None and max_epochs is None
    return "linear" if budget_only else "inverse_sqrt"
