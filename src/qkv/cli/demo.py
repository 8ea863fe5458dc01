"""`qkv demo`: train on the built-in zh->en corpus, translate the held-out sentences, draw attention."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from qkv.allocator import keep_freed_memory
from qkv.cli.common import Subparsers, UsageError
from qkv.cli.flag_types import output_directory, positive_float, positive_int, seed
from qkv.cli.translate import search_config

# The demo model: small enough to learn the built-in corpus in a few minutes on two CPU cores.
DEMO_MODEL = {"d_model": 128, "heads": 4, "d_ff": 512, "encoder_layers": 3, "decoder_layers": 3}
# The demo is bounded by steps, so that its result does not depend on how busy the machine is: the
# default 500 steps are what it takes to get the held-out set right. The time limit is only a safety net
# (a machine many times slower than 2 idle cores); stopped by it before this fraction of --steps, the demo
# warns that its model is undertrained and says what to do.
DEMO_STEPS = 500
DEMO_SAFETY_MINUTES = 20.0
DEMO_ENOUGH_STEPS = 0.8


def cmd_demo(args: argparse.Namespace) -> int:
    import time

    import torch

    from qkv.data import demo
    from qkv.models import saved
    from qkv.train.pipeline import DataConfig, TokenizerConfig, train
    from qkv.train.trainer import TrainConfig
    from qkv.translator import Translator
    from qkv.viz import attention_weights, plot_attention

    start = time.monotonic()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    _remove_previous_demo_run(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text("a qkv demo run: `qkv demo` replaces this directory\n", encoding="utf-8")
    print("== 1. train on the built-in Chinese->English demo corpus (qkv.data.demo)")
    config = TrainConfig(
        max_tokens=2048,  # small batches: more updates per CPU second on this small corpus
        max_steps=args.steps,
        max_minutes=args.max_minutes,
        lr=2e-3,
        warmup=200,
        seed=args.seed,
        save_every=args.steps,
        valid_every=max(args.steps // 4, 1),
        log_every=20,
    )
    keep_freed_memory()  # training: large tensors reuse pages instead of faulting fresh ones each step
    result = train(
        out,
        data=DataConfig(demo_seed=args.seed),
        tok=TokenizerConfig(),
        preset_name="small",
        model_overrides=dict(DEMO_MODEL),
        train_config=config,
        progress=not args.quiet,
    )
    print(f"trained {result.state.step} steps in {time.monotonic() - start:.0f}s ({result.stopped_because})")
    if result.stopped_because == "max_minutes" and result.state.step < DEMO_ENOUGH_STEPS * args.steps:
        # Seen: the demo run while another job kept both cores busy got 33 of 500 steps in 3 minutes and
        # translated nothing right; say so before the numbers below, not after.
        print(
            f"warning: the time limit (--max-minutes {args.max_minutes:g}) stopped training at step "
            f"{result.state.step} of {args.steps}: the model is undertrained and its translations below "
            "will be poor. Is another process using the CPU? Give it more time with --max-minutes, "
            f"or run it again when the machine is less busy (the full {args.steps} steps take about 2 "
            "minutes on 2 idle cores).",
            file=sys.stderr,
        )

    print("\n== 2. translate the held-out sentences (never seen in training)")
    model = saved.load(out)
    greedy = search_config(beam=1)
    translator = Translator(model.seq2seq, model.src_tokenizer, model.tgt_tokenizer, search=greedy)
    _, held_out = demo.splits(seed=args.seed)
    hypotheses = translator.translate([zh for zh, _ in held_out])
    correct = sum(h == en for h, (_, en) in zip(hypotheses, held_out, strict=True))
    for (zh, en), hyp in list(zip(held_out, hypotheses, strict=True))[:8]:
        mark = "ok " if hyp == en else "   "
        print(f"  {mark} {zh}  ->  {hyp}" + ("" if hyp == en else f"   (reference: {en})"))
    print(f"held-out exact match: {correct}/{len(held_out)} = {correct / len(held_out):.1%}")

    print("\n== 3. the headline (held out of training with its close variants: the model never saw it)")
    headline = translator.translate(["我爱你"])[0]
    print(f"我爱你 -> {headline}")

    print("\n== 4. look at the attention")
    maps = attention_weights(model.seq2seq, model.src_tokenizer, model.tgt_tokenizer, "我爱你", headline)
    image = plot_attention(maps, out / "attention.png", title=f"我爱你 -> {headline}")
    print(f"attention heat maps (encoder, decoder self, cross; every layer and head): {image}")
    print(f'\ndone in {time.monotonic() - start:.0f}s. Try: qkv translate --model {out} "他很高。"')
    return 0


# What a demo run directory holds. It is replaced by the next demo only when it holds the marker and
# nothing else: a training run of the user's (or any file added to the demo's) is never deleted.
DEMO_MARKER = ".qkv-demo"
_DEMO_ENTRIES = {DEMO_MARKER, "checkpoints", "best", "metrics.jsonl", "attention.png"}


def _remove_previous_demo_run(out: Path) -> None:
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    others = sorted(entry.name for entry in out.iterdir() if entry.name not in _DEMO_ENTRIES)
    if not (out / DEMO_MARKER).is_file() or others:
        what = f"holds {', '.join(others[:5])}" if others else "is not a qkv demo run"
        raise UsageError(
            f"{out}: exists and {what}; the demo replaces only its own runs: choose another --out"
        )
    print(f"removing the previous demo run in {out}")
    shutil.rmtree(out)


def add_demo_parser(sub: Subparsers) -> None:
    """`qkv demo` and its options."""
    p = sub.add_parser(
        "demo",
        help="the built-in demo: train zh->en, translate 我爱你, draw attention",
        description="Trains a small Transformer on the built-in Chinese->English demo corpus, reports the "
        "held-out exact match, translates 我爱你 and writes attention heat maps. Training is bounded by "
        "--steps, so the result does not depend on how busy the machine is; the progress bar shows the time "
        "left (about 2 minutes of training on 2 idle CPU cores).",
    )
    p.add_argument(
        "--out",
        type=output_directory,
        default="runs/demo",
        help="run directory (default runs/demo; a previous demo run there is replaced, anything else is refused)",
    )
    p.add_argument(
        "--steps", type=positive_int, default=DEMO_STEPS, help=f"training steps (default {DEMO_STEPS})"
    )
    p.add_argument(
        "--max-minutes",
        type=positive_float,
        default=DEMO_SAFETY_MINUTES,
        help=f"a safety net: stop training after this many minutes even if --steps are not done, with a "
        f"warning (default {DEMO_SAFETY_MINUTES:g})",
    )
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--threads", type=positive_int, help="CPU threads for PyTorch")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)
