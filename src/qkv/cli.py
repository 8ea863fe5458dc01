"""The ``qkv`` command: one thin function per subcommand; the work happens in the packages.

Run ``qkv --help`` or ``qkv SUBCOMMAND --help``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from qkv.allocator import keep_freed_memory
from qkv.config import (
    BERT_PRESETS,
    PRESETS,
    ConfigError,
    ModelConfig,
    NATConfig,
    model_config_from_dict,
    preset,
)


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
    return model_config_from_dict(data.get("model", data))


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


# -- qkv train -------------------------------------------------------------------------------------
def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA device is available here; use --device cpu")
    return name


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


# -- qkv translate / evaluate / attention ----------------------------------------------------------
def _load_translator(args: argparse.Namespace) -> Any:
    from qkv.models import saved
    from qkv.models.nat import NATransformer
    from qkv.translator import Translator

    device = _device(args.device)
    model = saved.load(args.model, device=device)
    is_nat = isinstance(model.model, NATransformer)
    if args.decoder == "nat" and not is_nat:
        raise UsageError(
            f"--decoder nat: {model.path} is an autoregressive model (train one with --model-type nat), "
            "or leave out --decoder"
        )
    if args.decoder == "at" and is_nat:
        raise UsageError(f"--decoder at: {model.path} is a non-autoregressive model; use --decoder nat")
    if args.iterations < 1 or args.length_beam < 1:
        raise UsageError("--iterations and --length-beam must be at least 1")
    if args.int8:
        from qkv.nn.packed import int8_available

        if next(model.model.parameters()).device.type != "cpu":
            raise UsageError("--int8 runs on a CPU; add --device cpu")
        if not int8_available():
            raise UsageError("--int8: this torch build has no fbgemm/x86 int8 kernels")
    teacher = None
    if args.rescore_model is not None:
        if not is_nat:
            raise UsageError("--rescore-model rescores a NAT model's length beam; --model is autoregressive")
        loaded = saved.load(args.rescore_model, device=device)
        if isinstance(loaded.model, NATransformer):
            raise UsageError(f"--rescore-model: {loaded.path} is not an autoregressive model")
        teacher = (loaded.model, loaded.src_tokenizer, loaded.tgt_tokenizer)
    return Translator(
        model.model,
        model.src_tokenizer,
        model.tgt_tokenizer,
        method="greedy" if args.beam == 1 else "beam",
        beam=args.beam,
        alpha=args.alpha,
        max_len_a=args.max_len_a,
        max_len_b=args.max_len_b,
        batch_size=args.batch_size,
        warn=lambda message: print(f"qkv translate: warning: {message}", file=sys.stderr),
        iterations=args.iterations,
        length_beam=args.length_beam,
        teacher=teacher,
        int8=args.int8,
        adaptive=args.adaptive,
    )


def _stdin_line_batches(fd: int, batch_size: int) -> Iterator[list[bytes]]:
    """Lines of a file descriptor in batches, split on b"\\n" only.

    A batch is handed over as soon as it is full or no more input is waiting, so translations of an
    interactive or slow stream come out while input is still arriving.
    """
    import os
    import select

    pending = b""
    lines: list[bytes] = []
    while True:
        if lines and (len(lines) >= batch_size or not select.select([fd], [], [], 0)[0]):
            yield lines[:batch_size]
            lines = lines[batch_size:]
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        *complete, pending = (pending + chunk).split(b"\n")
        lines.extend(complete)
    if pending:
        lines.append(pending)
    while lines:
        yield lines[:batch_size]
        lines = lines[batch_size:]


def cmd_translate(args: argparse.Namespace) -> int:
    translator = _load_translator(args)
    if args.text:
        for line in translator.translate(args.text):
            print(line)
        return 0
    number = 1
    for batch in _stdin_line_batches(sys.stdin.fileno(), args.batch_size):
        texts = []
        for offset, raw in enumerate(batch):
            raw = raw.removesuffix(b"\r")
            try:
                texts.append(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                print(
                    f"qkv translate: warning: line {number + offset}: invalid UTF-8 at byte {e.start}; "
                    "undecodable bytes replaced by U+FFFD",
                    file=sys.stderr,
                )
                texts.append(raw.decode("utf-8", errors="replace"))
        out = translator.translate(texts, first_line=number)
        sys.stdout.write("".join(line + "\n" for line in out))
        sys.stdout.flush()
        number += len(batch)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from qkv.data.corpus import read_corpus
    from qkv.evaluate import score

    corpus = read_corpus(
        args.data,
        tgt_path=args.tgt,
        src_col=args.src_col,
        tgt_col=args.tgt_col,
        max_chars=None,
        skip_bad=args.skip_bad,
    )
    print(corpus.report(), file=sys.stderr)
    translator = _load_translator(args)
    hypotheses: list[str] = []
    from tqdm import tqdm

    sources = corpus.sources
    step = max(args.batch_size * 4, 1)
    with tqdm(total=len(sources), unit="sent", desc="translate", disable=args.quiet, file=sys.stderr) as bar:
        for start in range(0, len(sources), step):
            hypotheses += translator.translate(sources[start : start + step], first_line=start + 1)
            bar.update(min(step, len(sources) - start))
    if args.output:
        Path(args.output).write_text("".join(h + "\n" for h in hypotheses), encoding="utf-8")
    scores = score(hypotheses, corpus.targets, tokenize=args.tokenize)
    print(scores.report())
    return 0


def cmd_attention(args: argparse.Namespace) -> int:
    from qkv.models.nat import NATransformer
    from qkv.viz import KINDS, attention_weights, plot_attention

    translator = _load_translator(args)
    if isinstance(translator.model, NATransformer):
        return _nat_attention(args, translator)
    target = args.target if args.target is not None else translator.translate([args.source])[0]
    maps = attention_weights(
        translator.model, translator.src_tokenizer, translator.tgt_tokenizer, args.source, target
    )
    kinds = tuple(args.kinds.split(",")) if args.kinds else KINDS
    out = plot_attention(
        maps,
        args.out,
        kinds=kinds,
        layers=args.layers,
        heads=args.heads,
        title=f"{args.source}  ->  {target}",
    )
    print(f"{args.source} -> {target}")
    print(f"wrote {out}")
    return 0


def _nat_attention(args: argparse.Namespace, translator: Any) -> int:
    """Heat maps of a non-autoregressive model: one image per mask-predict pass (FILE-iter1.png, ...)."""
    from qkv.viz import KINDS, nat_attention_weights, plot_attention

    if args.target is not None:
        raise UsageError("--target: a non-autoregressive model is not teacher-forced; leave it out")
    passes = nat_attention_weights(
        translator.model,
        translator.src_tokenizer,
        translator.tgt_tokenizer,
        args.source,
        iterations=args.iterations,
        adaptive=args.adaptive,
    )
    target = translator.translate([args.source])[0]
    kinds = tuple(args.kinds.split(",")) if args.kinds else KINDS
    out = Path(args.out)
    for number, maps in enumerate(passes, start=1):
        path = out if args.iterations == 1 else out.with_name(f"{out.stem}-iter{number}{out.suffix}")
        output = " ".join(maps.tgt_out_tokens)
        written = plot_attention(
            maps,
            path,
            kinds=kinds if number == 1 else tuple(k for k in kinds if k != "encoder") or kinds,
            layers=args.layers,
            heads=args.heads,
            title=f"{args.source}  ->  {output}  (mask-predict pass {number}/{len(passes)})",
        )
        print(f"wrote {written}")
    if len(passes) < args.iterations:
        why = "the output is too short to re-mask more tokens"
        if args.adaptive:
            why += ", or a pass changed none of them (--adaptive)"
        print(f"(stopped after {len(passes)} passes: {why})")
    print(f"{args.source} -> {target}")
    return 0


# -- qkv distill -----------------------------------------------------------------------------------
def cmd_distill(args: argparse.Namespace) -> int:
    from qkv.distill import distill
    from qkv.models import saved
    from qkv.models.nat import NATransformer

    teacher = saved.load(args.teacher, device=_device(args.device))
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
        beam=args.beam,
        batch_size=args.batch_size,
        skip_bad=args.skip_bad,
        progress=not args.quiet,
        warn=lambda message: print(f"qkv distill: warning: {message}", file=sys.stderr),
    )
    print(
        f"wrote {written:,} distilled pairs to {args.out} (source in column {args.src_col}, the teacher's "
        f"translation in column {args.tgt_col}); train on it with: qkv train --model-type nat "
        f"--data {args.out} --src-col {args.src_col} --tgt-col {args.tgt_col} ..."
    )
    return 0


# -- qkv embed -------------------------------------------------------------------------------------
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


def cmd_embed(args: argparse.Namespace) -> int:
    from qkv.embed import SentenceEmbedder, cosine_similarity
    from qkv.models.bert import CheckpointError

    texts = list(args.sentences) if args.sentences else _read_stdin_lines()
    try:
        embedder = SentenceEmbedder.from_pretrained(args.model)
    except (CheckpointError, FileNotFoundError) as e:
        raise UsageError(str(e)) from e
    vectors = embedder.embed(texts, batch_size=args.batch_size)
    if args.similarity:
        for row in cosine_similarity(vectors).tolist():
            print(json.dumps(row))
    else:
        for text, vector in zip(texts, vectors.tolist(), strict=True):
            print(json.dumps({"text": text, "embedding": vector}, ensure_ascii=False))
    return 0


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


# -- qkv average -----------------------------------------------------------------------------------
def cmd_average(args: argparse.Namespace) -> int:
    from qkv.averaging import average_run

    out, chosen = average_run(args.run, args.last, args.out)
    print(f"averaged {len(chosen)} checkpoints ({chosen[0].name} .. {chosen[-1].name}) into {out}")
    return 0


# -- qkv export ------------------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    if args.format == "marian":
        from qkv.export.marian import export_marian

        out = export_marian(args.model, args.out)
    else:
        from qkv.export.ctranslate2 import export_ctranslate2

        out = export_ctranslate2(args.model, args.out, quantization=args.quantization)
    print(f"wrote {out} ({args.format})")
    return 0


# -- qkv finetune ----------------------------------------------------------------------------------
def cmd_finetune(args: argparse.Namespace) -> int:
    from qkv import finetune
    from qkv.train.trainer import TrainConfig

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
    result, acc = finetune.finetune(
        args.out,
        kind=args.task,
        train_path=args.data,
        valid_path=args.valid,
        pretrained=args.model,
        train_config=config,
        text_col=args.text_col,
        label_col=args.label_col,
        device=_device(args.device),
        progress=not args.quiet,
    )
    print(f"stopped ({result.stopped_because}) at step {result.state.step}; model in {args.out}")
    if acc is not None:
        print(f"validation accuracy: {acc:.2%}")
    if args.export_hf:
        print(f"Hugging Face copy: {finetune.export_hf(finetune.load(args.out), args.export_hf)}")
    return 0


# -- qkv demo --------------------------------------------------------------------------------------
# The demo model: small enough to learn the built-in corpus in a few minutes on two CPU cores.
DEMO_MODEL = {"d_model": 128, "heads": 4, "d_ff": 512, "encoder_layers": 3, "decoder_layers": 3}
# Stopped by time before this fraction of --steps, the demo warns that its model is undertrained: the
# default 500 steps are what it takes to get the held-out set right (500/500 in the sessions' runs).
DEMO_ENOUGH_STEPS = 0.8


def cmd_demo(args: argparse.Namespace) -> int:
    import shutil
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
    if out.exists():
        if not (out / "checkpoints").is_dir():
            raise UsageError(f"{out}: exists and is not a qkv run directory; choose another --out")
        print(f"removing the previous demo run in {out}")
        shutil.rmtree(out)
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
            "will be poor. Is another process using the CPU? Give it more time with --max-minutes.",
            file=sys.stderr,
        )

    print("\n== 2. translate the held-out sentences (never seen in training)")
    model = saved.load(out)
    translator = Translator(model.seq2seq, model.src_tokenizer, model.tgt_tokenizer, method="greedy", beam=1)
    _, held_out = demo.splits(seed=args.seed)
    hypotheses = translator.translate([zh for zh, _ in held_out])
    correct = sum(h == en for h, (_, en) in zip(hypotheses, held_out, strict=True))
    for (zh, en), hyp in list(zip(held_out, hypotheses, strict=True))[:8]:
        mark = "ok " if hyp == en else "   "
        print(f"  {mark} {zh}  ->  {hyp}" + ("" if hyp == en else f"   (reference: {en})"))
    print(f"held-out exact match: {correct}/{len(held_out)} = {correct / len(held_out):.1%}")

    print("\n== 3. the headline")
    headline = translator.translate(["我爱你"])[0]
    print(f"我爱你 -> {headline}")

    print("\n== 4. look at the attention")
    maps = attention_weights(model.seq2seq, model.src_tokenizer, model.tgt_tokenizer, "我爱你", headline)
    image = plot_attention(maps, out / "attention.png", title=f"我爱你 -> {headline}")
    print(f"attention heat maps (encoder, decoder self, cross; every layer and head): {image}")
    print(f'\ndone in {time.monotonic() - start:.0f}s. Try: qkv translate --model {out} "他很高。"')
    return 0


# -- the parser ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qkv",
        description="qkv: the Transformer of 'Attention Is All You Need', as real, fast, readable software.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  qkv params --preset base --vocab 37000 --check   # the paper's base model, line by line\n"
        "  qkv demo                                         # the built-in demo\n"
        "  qkv train --out runs/demo --preset tiny --max-minutes 2\n"
        '  qkv translate --model runs/demo "我爱你"\n'
        "run `qkv COMMAND --help` for every option of a command\n",
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
        choices=sorted(PRESETS) + sorted(BERT_PRESETS),
        default="base",
        help="model shape (default: base, the paper's base model; bert-base and minilm are BERT encoders, "
        "whose vocabulary is fixed)",
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

    def decoding_options(p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group("decoding")
        g.add_argument(
            "--model",
            metavar="DIR",
            required=True,
            help="a model directory, or a run directory (its best/ model, else the latest checkpoint)",
        )
        g.add_argument("--beam", type=int, default=4, help="beam size; 1 = greedy (default 4)")
        g.add_argument(
            "--alpha", type=float, default=0.6, help="length penalty ((5+len)/6)^alpha (default 0.6)"
        )
        g.add_argument(
            "--max-len-a",
            type=float,
            default=1.2,
            help="output length limit: a * source length + b tokens (default a=1.2)",
        )
        g.add_argument("--max-len-b", type=int, default=10, help="see --max-len-a (default b=10)")
        g.add_argument("--batch-size", type=int, default=64, help="sentences per batch (default 64)")
        g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
        g.add_argument(
            "--int8",
            action="store_true",
            help="CPU: decode with int8 weights and dynamically quantised activations (faster, "
            "approximate: check BLEU with qkv evaluate --int8)",
        )
        g = p.add_argument_group("non-autoregressive decoding (models trained with --model-type nat)")
        g.add_argument(
            "--decoder",
            choices=["auto", "at", "nat"],
            default="auto",
            help="at: autoregressive (greedy/beam), nat: mask-predict; auto (default): the model's kind",
        )
        g.add_argument(
            "--iterations",
            type=int,
            default=1,
            help="nat: mask-predict passes; 1 = single pass, argmax everywhere (default 1)",
        )
        g.add_argument(
            "--adaptive",
            action="store_true",
            help="nat: stop refining a candidate at the first pass that changes none of its tokens, so "
            "--iterations is a maximum (faster: 3x at --iterations 10; it cost 0.1-0.6 BLEU on the demo "
            "corpus but 1-3 on cmn-eng, so check with qkv evaluate)",
        )
        g.add_argument(
            "--length-beam",
            type=int,
            default=1,
            help="nat: decode the L most probable lengths, keep the best by average log-prob (default 1)",
        )
        g.add_argument(
            "--rescore-model",
            metavar="DIR",
            help="nat: rescore the length beam's candidates with this autoregressive model (the teacher)",
        )

    p = sub.add_parser(
        "translate",
        help="translate sentences (arguments, or stdin lines to stdout)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Translate the sentences given as arguments, or stream stdin to stdout: one line in, one "
        "line out, in order; an empty line gives an empty line. Over-long inputs are truncated with a "
        "warning; invalid UTF-8 is replaced (U+FFFD) with a warning.",
        epilog='examples:\n  qkv translate --model runs/demo "我爱你"\n  qkv translate --model runs/zh-en < in.zh > out.en',
    )
    p.add_argument("text", nargs="*", help="sentences to translate (default: read stdin)")
    decoding_options(p)
    p.set_defaults(func=cmd_translate)

    p = sub.add_parser(
        "evaluate",
        help="translate a test set and score it with sacreBLEU (BLEU, chrF)",
        description="Translate the source side of a corpus and score against its target side with sacreBLEU; "
        "prints BLEU and chrF with their signatures. Tokenization: 13a for English targets, zh for Chinese "
        "(guessed from the references unless --tokenize is given).",
    )
    p.add_argument(
        "--data", metavar="FILE", required=True, help="TSV/JSONL pairs, or the source file with --tgt"
    )
    p.add_argument("--tgt", metavar="FILE", help="reference file (when --data is a plain source file)")
    p.add_argument("--src-col", type=int, default=1, help="TSV source column, 1-based (default 1)")
    p.add_argument("--tgt-col", type=int, default=2, help="TSV reference column, 1-based (default 2)")
    p.add_argument("--skip-bad", action="store_true", help="skip bad lines (default: stop at the first)")
    p.add_argument(
        "--tokenize",
        choices=["13a", "zh", "intl", "char", "none"],
        help="sacreBLEU tokenization (default: zh for Chinese references, else 13a)",
    )
    p.add_argument("--output", metavar="FILE", help="also write the translations here, one per line")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    decoding_options(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "attention",
        help="draw attention heat maps for one sentence",
        description="Heat maps of encoder self-attention, decoder self-attention and cross-attention, one "
        "panel per layer and head, tokens on the axes. Without --target the model's own translation is used.",
    )
    p.add_argument("source", help="the source sentence")
    p.add_argument("--target", help="the target sentence to teacher-force (default: the model's translation)")
    p.add_argument(
        "--out", default="attention.png", help="image file: .png, .pdf or .svg (default attention.png)"
    )
    p.add_argument("--kinds", help="comma-separated subset of encoder,decoder_self,cross (default all)")
    p.add_argument("--layers", type=int, nargs="+", help="layers to draw (default all)")
    p.add_argument("--heads", type=int, nargs="+", help="heads to draw (default all)")
    decoding_options(p)
    p.set_defaults(func=cmd_attention)

    p = sub.add_parser(
        "embed",
        help="sentence embeddings from a Hugging Face BERT / sentence-transformers checkpoint",
        description="Embed sentences with a BERT-architecture checkpoint (config.json + model.safetensors, "
        "tokenizer.json or vocab.txt), pooled as its sentence-transformers folder declares (modules.json, "
        "1_Pooling/config.json; mean pooling for a plain BERT directory). Prints one JSON line per "
        'sentence, {"text": ..., "embedding": [...]}, or with --similarity the cosine matrix, one JSON '
        "row per line. Without sentences, reads one per line from standard input.",
    )
    p.add_argument("--model", metavar="DIR", required=True, help="checkpoint directory")
    p.add_argument("sentences", nargs="*", help="sentences to embed (default: lines of standard input)")
    p.add_argument("--similarity", action="store_true", help="print the cosine similarity matrix instead")
    p.add_argument("--batch-size", type=int, default=32, help="sentences per forward pass (default: 32)")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser(
        "average",
        help="average the weights of a run's last N checkpoints",
        description="Write the element-wise mean of the last N checkpoints of a run as a model directory "
        "(the paper averages the last 5). Train with --keep-last N or more.",
    )
    p.add_argument("--run", metavar="DIR", required=True, help="the run directory")
    p.add_argument("--last", type=int, default=5, help="how many checkpoints (default 5)")
    p.add_argument("--out", metavar="DIR", required=True, help="model directory to write")
    p.set_defaults(func=cmd_average)

    p = sub.add_parser(
        "finetune",
        help="fine-tune a BERT checkpoint for classification (N->1) or tagging (N->N)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fine-tune a Hugging Face BERT directory with qkv's trainer (checkpoints, --resume-able "
        "run directory, progress, metrics.jsonl). classify: TSV lines of LABEL<TAB>TEXT; tag: TSV lines of "
        "TAGS<TAB>WORDS, space-separated, one tag per word (the first word piece carries it).",
        epilog="example:\n  qkv finetune --task classify --model all-MiniLM-L6-v2/ --data train.tsv "
        "--valid dev.tsv --out runs/sentiment --max-epochs 3",
    )
    p.add_argument("--task", choices=["classify", "tag"], required=True, help="classify (N->1) or tag (N->N)")
    p.add_argument("--model", metavar="DIR", required=True, help="a Hugging Face BERT directory")
    p.add_argument("--data", metavar="FILE", required=True, help="training TSV")
    p.add_argument("--valid", metavar="FILE", help="validation TSV (accuracy is reported)")
    p.add_argument("--label-col", type=int, default=1, help="TSV column of the label/tags (default 1)")
    p.add_argument("--text-col", type=int, default=2, help="TSV column of the text/words (default 2)")
    p.add_argument("--out", metavar="DIR", required=True, help="run directory")
    p.add_argument("--max-steps", type=int, help="optimizer steps (linear decay to 0 at the end)")
    p.add_argument("--max-epochs", type=int, help="epochs (default 3 if no --max-steps)")
    p.add_argument("--max-tokens", type=int, default=4096, help="padded tokens per batch (default 4096)")
    p.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (default 5e-5)")
    p.add_argument("--warmup", type=int, default=100, help="warm-up steps (default 100)")
    p.add_argument("--save-every", type=int, default=500, help="steps between checkpoints (default 500)")
    p.add_argument("--valid-every", type=int, default=500, help="steps between validations (default 500)")
    p.add_argument("--export-hf", metavar="DIR", help="also write the Hugging Face layout here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_finetune)

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
    p.add_argument("--teacher", metavar="DIR", required=True, help="an autoregressive model or run directory")
    p.add_argument(
        "--data", metavar="FILE", required=True, help="TSV/JSONL pairs, or the source file with --tgt"
    )
    p.add_argument("--tgt", metavar="FILE", help="target file (when --data is a plain source file)")
    p.add_argument("--src-col", type=int, default=1, help="TSV source column, 1-based (default 1)")
    p.add_argument("--tgt-col", type=int, default=2, help="TSV target column, 1-based (default 2)")
    p.add_argument("--out", metavar="FILE", required=True, help="the distilled TSV to write")
    p.add_argument("--beam", type=int, default=4, help="teacher beam size; 1 = greedy (default 4)")
    p.add_argument("--batch-size", type=int, default=64, help="sentences per batch (default 64)")
    p.add_argument("--skip-bad", action="store_true", help="skip bad lines (default: stop at the first)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser(
        "export",
        help="write a translation model in Hugging Face Marian or CTranslate2 layout",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export a qkv model directory (or a run directory's best model) so other toolkits "
        "run it with the same outputs: --format marian writes a Hugging Face MarianMTModel directory "
        "(post-LN, sinusoidal models), --format ctranslate2 a CTranslate2 model (any qkv model; needs "
        "pip install ctranslate2).",
        epilog="examples:\n"
        "  qkv export --model runs/zh-en --format marian --out runs/zh-en-marian\n"
        "  qkv export --model runs/zh-en --format ctranslate2 --out runs/zh-en-ct2 --quantization int8\n",
    )
    p.add_argument("--model", metavar="DIR", required=True, help="qkv model or run directory")
    p.add_argument("--format", choices=["marian", "ctranslate2"], required=True, help="the layout to write")
    p.add_argument("--out", metavar="DIR", required=True, help="output directory (replaced if present)")
    p.add_argument(
        "--quantization",
        default=None,
        help="ctranslate2 only: int8, int8_float32, float16, bfloat16, ... (default: float32)",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "demo",
        help="the built-in demo: train zh->en, translate 我爱你, draw attention",
        description="Trains a small Transformer on the built-in Chinese->English demo corpus, reports the "
        "held-out exact match, translates 我爱你 and writes attention heat maps. A few minutes on 2 CPU cores.",
    )
    p.add_argument(
        "--out", default="runs/demo", help="run directory (default runs/demo; replaced if present)"
    )
    p.add_argument("--steps", type=int, default=500, help="training steps (default 500)")
    p.add_argument(
        "--max-minutes", type=float, default=3.0, help="stop training earlier than that (default 3)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="CPU threads for PyTorch")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    keep_freed_memory()  # large tensors reuse pages instead of faulting fresh ones each step
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
