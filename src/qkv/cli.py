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
    except (UsageError, ConfigError) as e:
        print(f"qkv {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"qkv {args.command}: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
