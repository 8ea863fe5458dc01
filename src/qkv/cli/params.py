"""`qkv params`: parameter accounting of a preset or a saved model, component by component."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qkv.cli.common import Subparsers, UsageError
from qkv.cli.flag_types import input_directory, positive_int
from qkv.config import BERT_PRESETS, PRESETS, ModelConfig, NATConfig, model_config_from_dict, preset


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
    return model_config_from_dict(data.get("model", data))


def _bert_params(args: argparse.Namespace) -> int:
    import torch

    from qkv import params
    from qkv.models.bert import BertModel

    config = BERT_PRESETS[args.preset]
    print(f"Parameters of preset {args.preset!r} (vocabulary {config.vocab_size:,})\n")
    print(params.bert_report(config))
    if args.check:
        with torch.device("meta"):  # shapes only: counting needs no memory and no initialisation
            model = BertModel(config)
        counted = params.total(params.bert_module_rows(model))
        formula = params.total(params.bert_rows(config, with_biases=True))
        verdict = "agrees" if counted == formula else "DISAGREES"
        print(f"\ninstantiated model: {counted:,} parameters — {verdict} with the formula ({formula:,})")
        return 0 if counted == formula else 1
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    from qkv import params
    from qkv.models.nat import NATransformer
    from qkv.models.seq2seq import Transformer

    if args.model is None and args.preset in BERT_PRESETS:
        return _bert_params(args)
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
        model = NATransformer(config) if isinstance(config, NATConfig) else Transformer(config)
        counted = params.total(params.module_rows(model))
        formula = params.total(rows)
        verdict = "agrees" if counted == formula else "DISAGREES"
        print(f"\ninstantiated model: {counted:,} parameters — {verdict} with the formula ({formula:,})")
        return 0 if counted == formula else 1
    return 0


def add_params_parser(sub: Subparsers) -> None:
    """`qkv params` and its options."""
    p = sub.add_parser(
        "params",
        help="parameter accounting, component by component",
        description="Print where every parameter of a model goes, with the formula for each "
        "component. Give a preset (and vocabulary size) or a saved model.",
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS) + sorted(BERT_PRESETS),
        default="base",
        help="model shape (default: base, the paper's base model; bert-base and minilm are BERT encoders, "
        "whose vocabulary is fixed)",
    )
    p.add_argument(
        "--vocab",
        type=positive_int,
        default=37000,
        help="(shared) vocabulary size (default: 37000, the paper's joint BPE vocabulary)",
    )
    p.add_argument(
        "--tgt-vocab",
        type=positive_int,
        default=None,
        help="separate target vocabulary size (implies unshared embeddings)",
    )
    p.add_argument(
        "--model",
        type=input_directory,
        metavar="DIR",
        default=None,
        help="a saved qkv model directory instead of a preset",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="also instantiate the model and check the formula against its real parameter count",
    )
    p.set_defaults(func=cmd_params)
