"""Autoregressive vs non-autoregressive translation: quality and speed on the same sentences, in one run.

Rows (each at batch size 1 and 32, sentences sorted by length inside the decoder as qkv always does):
    AT greedy, AT beam 4                      the autoregressive model (--at)
    NAT single pass                           predict the length, one decoder pass, argmax everywhere
    NAT length beam L                         L candidate lengths, best average log-prob
    NAT length beam L + AT                    the same candidates, the best by the AT's score (one
                                              teacher-forced AT pass: "noisy parallel decoding")
    NAT mask-predict K                        K decoder passes (Ghazvininejad et al., 2019)
    NAT mask-predict K, lb L (+ AT)           K passes on each of L candidate lengths, the best by
                                              average log-prob (or by the AT's score)
    NAT mask-predict K adaptive (, lb L ...)  at most K passes: a candidate stops at the first pass that
                                              changes none of its tokens (Kasai et al., 2020); K >= 3
    deep-shallow AT greedy, beam 4            a deep encoder and a 1-layer decoder (Kasai et al., 2021):
                                              the honest baseline a NAT must beat (--deep-shallow)
    NAT cut single pass, mask-predict K       a NAT trained with the other length method (--nat-cut,
                                              `qkv train --length-method cut`): source length + 32
                                              positions, the output cut at the first </s>
Columns: BLEU and chrF (sacreBLEU, 13a, or zh for Chinese references), exact-match rate, sentences per
second, and the speed-up over AT greedy at the same batch size. It also reports how often each NAT's
output length (the length predictor's, or where the cut NAT's single pass writes its first </s>) equals
the reference's (exact and within +-2 tokens), and checks the issue's bar at batch 1
(real data: a NAT decoder within 3 BLEU of AT greedy and faster; exit status 1 where none is).

Real data (models trained by `qkv train`, the NAT on `qkv distill` output):

    .venv/bin/python benchmarks/nat.py --at runs/zh-en/avg4 --nat runs/zh-en-nat/avg4 --deep-shallow runs/zh-en-ds \\
        --data ../shared/data/cmn-eng/dev.tsv --src-col 2 --tgt-col 1 --threads 2 --json nat-bench.json

The demo (trains a small AT, distills the built-in demo corpus with it, trains a NAT of each length
method and a deep-shallow AT (5+1 layers) on that, both starting from the AT's weights (``--init-from``), then benchmarks them on the held-out demo sentences and checks the issue's two bars:
NAT exact match >= 90% of AT's, single pass >= 3x AT greedy's speed at batch 1):

    .venv/bin/python benchmarks/nat.py --demo --out runs/nat-demo --threads 2

The systems take turns of ``--turn`` sentences (default 32; see :func:`run_rows`): short against the
machine's drift, long enough that each system runs on its own weights as a user's file would.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from qkv.data import demo
from qkv.data.corpus import read_corpus
from qkv.decode import SearchConfig
from qkv.decode.nat import translate_ids
from qkv.distill import translate_all, tsv_line
from qkv.evaluate import score
from qkv.models import saved
from qkv.models.nat import NATransformer
from qkv.translator import Translator

# The model of `qkv demo`: learns the demo corpus in a few minutes on two CPU cores.
DEMO_MODEL = {"d_model": 128, "heads": 4, "d_ff": 512, "encoder_layers": 3, "decoder_layers": 3}


# Sentences each system translates in its turn (see run_rows).
DEFAULT_TURN = 32

# The autoregressive systems' searches.
GREEDY = SearchConfig(method="greedy", beam=1)
BEAM_4 = SearchConfig(method="beam", beam=4)


@dataclass
class Row:
    system: str
    decoder: str
    batch: int
    bleu: float
    chrf: float
    exact: float
    sent_per_s: float
    seconds: float
    speedup: float = 0.0


def run_rows(
    systems: list[tuple[str, str, Translator]],
    sources: list[str],
    refs: list[str],
    batch: int,
    *,
    turn: int = DEFAULT_TURN,
) -> list[Row]:
    """Translate every source with every system at ``batch`` sentences per call (after a short warm-up)
    and score each.

    The systems take turns, ``max(turn, batch)`` sentences each (every system translates sentences 0-31,
    then every system 32-63, ...), rather than one after another over the whole set: this project's
    machine is a shared VM whose speed drifts by 20-30% within minutes, and one system's whole run
    landing in a slow minute moved a ratio by 1.5x (AT greedy against the single pass: 2.05x, 2.60x and
    4.09x in three runs of the same code, one system after another). A turn of 32 sentences at batch 1
    takes a system 0.05-0.2 s, short against that drift, and lets each system run as a user runs it, one
    sentence after another on its own weights; turns of one sentence (``turn=1``) make every system start
    every sentence with the other 14 systems' weights in the CPU's caches, which costs a one-pass
    decoder (the NAT) more than a decoder that reads its weights 8 times per sentence (README)."""
    for _, _, translator in systems:
        translator.batch_size = batch
        translator.translate(sources[: min(len(sources), batch, 8)])  # warm-up: first-call allocations
    seconds = [0.0] * len(systems)
    hypotheses: list[list[str]] = [[] for _ in systems]
    per_turn = max(turn, batch)
    for begin in range(0, len(sources), per_turn):
        chunk = sources[begin : begin + per_turn]
        for i, (_, _, translator) in enumerate(systems):
            start = time.perf_counter()
            hypotheses[i] += translator.translate(chunk)
            seconds[i] += time.perf_counter() - start
    rows = []
    for (system, decoder, _), found, spent in zip(systems, hypotheses, seconds, strict=True):
        scores = score(found, refs)
        exact = sum(h == r for h, r in zip(found, refs, strict=True)) / max(len(refs), 1)
        rows.append(Row(system, decoder, batch, scores.bleu, scores.chrf, exact, len(sources) / spent, spent))
    return rows


def length_accuracy(nat: saved.SavedModel, sources: list[str], refs: list[str]) -> dict[str, float]:
    """How often the NAT's length equals the reference's length in target tokens (and within +-2): the
    length predictor's argmax, or (the cut method) the single pass's output length."""
    model = nat.model
    assert isinstance(model, NATransformer)
    c = model.config
    exact = near = 0
    with torch.inference_mode():
        for begin in range(0, len(sources), 64):
            src = [[*nat.src_tokenizer.encode(s), c.eos_id] for s in sources[begin : begin + 64]]
            if c.length_method == "cut":
                predicted = [len(hyps[0].tokens) for hyps in translate_ids(model, src)]
            else:
                longest = max(len(s) for s in src)
                src_ids = torch.tensor([[*s, *[c.pad_id] * (longest - len(s))] for s in src])
                encoded = model.encode(src_ids.to(next(model.parameters()).device))
                classes = model.length_logits(encoded).argmax(dim=-1, keepdim=True)
                predicted = model.lengths_of_classes(classes, model.source_lengths(src_ids))[:, 0].tolist()
            for p, ref in zip(predicted, refs[begin : begin + 64], strict=True):
                true = len(nat.tgt_tokenizer.encode(ref))
                exact += p == true
                near += abs(p - true) <= 2
    n = max(len(sources), 1)
    return {"exact": exact / n, "within_2": near / n, "sentences": len(sources)}


def benchmark(
    at_dir: str,
    nat_dir: str,
    deep_shallow_dir: str | None,
    sources: list[str],
    refs: list[str],
    *,
    batches: list[int],
    iterations: list[int],
    length_beam: int,
    int8: bool = False,
    turn: int = DEFAULT_TURN,
    adaptive: bool = True,
    cut_dir: str | None = None,
) -> tuple[list[Row], dict[str, dict[str, float]]]:
    at = saved.load(at_dir)
    nat = saved.load(nat_dir)
    if isinstance(at.model, NATransformer) or not isinstance(nat.model, NATransformer):
        raise SystemExit("--at must be an autoregressive model and --nat a non-autoregressive one")
    systems: list[tuple[str, str, Translator]] = [
        ("AT", "greedy", Translator(at.model, at.src_tokenizer, at.tgt_tokenizer, search=GREEDY)),
        ("AT", "beam 4", Translator(at.model, at.src_tokenizer, at.tgt_tokenizer, search=BEAM_4)),
        ("NAT", "single pass", Translator(nat.model, nat.src_tokenizer, nat.tgt_tokenizer)),
        (
            "NAT",
            f"length beam {length_beam}",
            Translator(nat.model, nat.src_tokenizer, nat.tgt_tokenizer, length_beam=length_beam),
        ),
        (
            "NAT",
            f"length beam {length_beam} + AT",
            Translator(
                nat.model,
                nat.src_tokenizer,
                nat.tgt_tokenizer,
                length_beam=length_beam,
                teacher=(at.model, at.src_tokenizer, at.tgt_tokenizer),
            ),
        ),
    ]
    teacher = (at.model, at.src_tokenizer, at.tgt_tokenizer)
    # Mask-predict with K passes, and from K = 3 on also adaptive (a candidate stops at the first pass that
    # changes nothing; with K = 2 there is no pass after the first refinement, so nothing to stop).
    variants = [(k, False) for k in iterations if k > 1]
    if adaptive:
        variants += [(k, True) for k in iterations if k > 2]
    for k, stops in variants:
        translator = Translator(nat.model, nat.src_tokenizer, nat.tgt_tokenizer, iterations=k, adaptive=stops)
        systems.append(("NAT", f"mask-predict {k}{' adaptive' if stops else ''}", translator))
    for k, stops in variants if length_beam > 1 else []:
        for rescorer, suffix in ((None, ""), (teacher, " + AT")):
            translator = Translator(
                nat.model, nat.src_tokenizer, nat.tgt_tokenizer, iterations=k, length_beam=length_beam,
                teacher=rescorer, adaptive=stops,
            )  # fmt: skip
            name = f"mask-predict {k}{' adaptive' if stops else ''}, lb {length_beam}{suffix}"
            systems.append(("NAT", name, translator))
    cut = saved.load(cut_dir) if cut_dir is not None else None
    if cut is not None:
        if not isinstance(cut.model, NATransformer) or cut.model.config.length_method != "cut":
            raise SystemExit("--nat-cut must be a NAT trained with --length-method cut")
        systems.append(
            ("NAT cut", "single pass", Translator(cut.model, cut.src_tokenizer, cut.tgt_tokenizer))
        )
        for k, stops in variants:
            translator = Translator(
                cut.model, cut.src_tokenizer, cut.tgt_tokenizer, iterations=k, adaptive=stops
            )
            systems.append(("NAT cut", f"mask-predict {k}{' adaptive' if stops else ''}", translator))
    if deep_shallow_dir is not None:
        ds = saved.load(deep_shallow_dir)
        if isinstance(ds.model, NATransformer):
            raise SystemExit("--deep-shallow must be an autoregressive model")
        c = ds.model.config
        name = f"AT {c.encoder_layers}+{c.decoder_layers}"
        systems.append(
            (name, "greedy", Translator(ds.model, ds.src_tokenizer, ds.tgt_tokenizer, search=GREEDY))
        )
        systems.append(
            (name, "beam 4", Translator(ds.model, ds.src_tokenizer, ds.tgt_tokenizer, search=BEAM_4))
        )
    for _, _, translator in systems:
        translator.int8 = int8  # every system, the AT baseline and the rescoring teacher included
    rows: list[Row] = []
    for batch in batches:
        found = run_rows(systems, sources, refs, batch, turn=turn)
        baseline = next(r.sent_per_s for r in found if r.system == "AT" and r.decoder == "greedy")
        for row in found:
            row.speedup = row.sent_per_s / baseline
            rows.append(row)
            print(
                f"  batch {batch:>2}  {row.system:<8} {row.decoder:<36} BLEU {row.bleu:6.2f}  "
                f"exact {row.exact:6.1%}  {row.sent_per_s:8.1f} sent/s",
                file=sys.stderr,
            )
    lengths = {"NAT (length predictor)": length_accuracy(nat, sources, refs)}
    if cut is not None:
        lengths["NAT cut (first </s>)"] = length_accuracy(cut, sources, refs)
    return rows, lengths


def print_table(rows: list[Row], lengths: dict[str, dict[str, float]]) -> None:
    print(
        f"{'system':<10} {'decoder':<36} {'batch':>5} {'BLEU':>6} {'chrF':>6} {'exact':>7} "
        f"{'sent/s':>9} {'vs AT greedy':>12}"
    )
    for r in rows:
        print(
            f"{r.system:<10} {r.decoder:<36} {r.batch:>5} {r.bleu:>6.2f} {r.chrf:>6.2f} {r.exact:>7.1%} "
            f"{r.sent_per_s:>9.1f} {r.speedup:>11.2f}x"
        )
    for name, found in lengths.items():
        print(
            f"\n{name} lengths on {found['sentences']:,} sentences: exact {found['exact']:.1%}, "
            f"within +-2 tokens {found['within_2']:.1%}"
        )


# -- the demo --------------------------------------------------------------------------------------
def train_demo(
    out: Path, minutes: float | None, steps: int, length_weight: float
) -> tuple[Path, Path, Path, Path]:
    """Train AT, distill, train a NAT of each length method and a deep-shallow AT (all from the AT's
    weights) on the built-in demo corpus; returns their dirs (AT, NAT, cut NAT, deep-shallow)."""
    from qkv.train.pipeline import DataConfig, TokenizerConfig, train
    from qkv.train.trainer import TrainConfig

    def config(seed: int = 0) -> TrainConfig:
        return TrainConfig(
            max_tokens=2048,
            max_steps=steps,
            max_minutes=minutes,
            lr=2e-3,
            warmup=200,
            seed=seed,
            save_every=steps,
            valid_every=max(steps // 2, 1),
            log_every=20,
        )

    train_pairs, held_out = demo.splits(seed=0)
    out.mkdir(parents=True, exist_ok=True)
    at_dir = out / "at"
    if not (at_dir / "checkpoints").is_dir():
        print("== training the AT teacher on the demo corpus", file=sys.stderr)
        train(at_dir, data=DataConfig(), tok=TokenizerConfig(), preset_name="small",
              model_overrides=dict(DEMO_MODEL), train_config=config())  # fmt: skip
    distilled = out / "train.distilled.tsv"
    held_out_tsv = out / "held_out.tsv"
    demo.write_tsv(held_out_tsv, held_out)  # column 1 English, column 2 Chinese
    if not distilled.is_file():
        print("== distilling the demo training sources with the AT teacher (greedy)", file=sys.stderr)
        teacher = saved.load(at_dir)
        assert not isinstance(teacher.model, NATransformer)
        translator = Translator(
            teacher.model, teacher.src_tokenizer, teacher.tgt_tokenizer, search=GREEDY, batch_size=128
        )
        translations = translate_all(translator, [zh for zh, _ in train_pairs])
        distilled.write_text(
            "".join(
                tsv_line(zh, en, src_col=2, tgt_col=1)
                for (zh, _), en in zip(train_pairs, translations, strict=True)
            ),
            encoding="utf-8",
        )
    data = DataConfig(train=str(distilled), valid=str(held_out_tsv), src_col=2, tgt_col=1)
    nat_dir, cut_dir, ds_dir = out / "nat", out / "nat-cut", out / "deep-shallow"
    if not (nat_dir / "checkpoints").is_dir():
        print("== training the NAT on the distilled corpus", file=sys.stderr)
        train(nat_dir, data=data, tok=TokenizerConfig(), preset_name="small", model_overrides={},
              train_config=config(), model_type="nat", length_weight=length_weight, init_from=at_dir)  # fmt: skip
    if not (cut_dir / "checkpoints").is_dir():
        print("== training the NAT that cuts at </s> on the distilled corpus", file=sys.stderr)
        train(cut_dir, data=data, tok=TokenizerConfig(), preset_name="small", model_overrides={},
              train_config=config(), model_type="nat", length_method="cut", init_from=at_dir)  # fmt: skip
    if not (ds_dir / "checkpoints").is_dir():
        print("== training the deep-shallow AT (5+1 layers) on the distilled corpus", file=sys.stderr)
        train(ds_dir, data=data, tok=TokenizerConfig(), preset_name="small", init_from=at_dir,
              model_overrides={"encoder_layers": 5, "decoder_layers": 1}, train_config=config())  # fmt: skip
    return at_dir, nat_dir, cut_dir, ds_dir


def demo_checks(rows: list[Row]) -> bool:
    """The issue's two bars on the demo corpus; prints each and returns whether both hold."""
    at = next(r for r in rows if r.system == "AT" and r.decoder == "greedy" and r.batch == 1)
    nat_rows = [r for r in rows if r.system == "NAT" and r.batch == 1]
    best = max(nat_rows, key=lambda r: r.exact)
    single = next(r for r in nat_rows if r.decoder == "single pass")
    quality = best.exact >= 0.9 * at.exact
    speed = single.sent_per_s >= 3 * at.sent_per_s
    print(
        f"\ncheck: NAT exact match ({best.decoder}) {best.exact:.1%} vs 90% of AT greedy's {at.exact:.1%} "
        f"= {0.9 * at.exact:.1%}: {'PASS' if quality else 'FAIL'}  (single pass: {single.exact:.1%})"
    )
    print(
        f"check: NAT single pass {single.sent_per_s:.1f} sent/s vs 3x AT greedy's {at.sent_per_s:.1f} at batch 1 "
        f"({single.sent_per_s / at.sent_per_s:.2f}x): {'PASS' if speed else 'FAIL'}"
    )
    return quality and speed


def data_checks(rows: list[Row], *, margin: float = 3.0) -> bool:
    """The issue's bar on real data: a NAT decoder (mask-predict with some number of passes; one pass is
    the single pass) within ``margin`` BLEU of AT greedy and faster than it at batch 1. Prints every NAT
    row that meets it (or the closest ones) and returns whether one does."""
    at = next(r for r in rows if r.system == "AT" and r.decoder == "greedy" and r.batch == 1)
    nat_rows = [r for r in rows if r.system == "NAT" and r.batch == 1]
    close = [r for r in nat_rows if r.bleu >= at.bleu - margin]
    fast = [r for r in nat_rows if r.sent_per_s > at.sent_per_s]
    meeting = [r for r in close if r in fast]
    print(
        f"\ncheck: a NAT row within {margin:g} BLEU of AT greedy ({at.bleu:.2f}) and faster than it "
        f"({at.sent_per_s:.1f} sent/s) at batch 1: {'PASS' if meeting else 'FAIL'}"
    )
    shown = meeting or [
        *([max(close, key=lambda r: r.sent_per_s)] if close else []),
        *([max(fast, key=lambda r: r.bleu)] if fast else []),
    ]
    for r in shown:
        print(f"  {r.decoder}: BLEU {r.bleu - at.bleu:+.2f}, {r.speedup:.2f}x AT greedy")
    return bool(meeting)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--at", metavar="DIR", help="autoregressive model (or run) directory")
    p.add_argument("--nat", metavar="DIR", help="non-autoregressive model (or run) directory")
    p.add_argument("--deep-shallow", metavar="DIR", help="AT with a deep encoder and a 1-layer decoder")
    p.add_argument("--nat-cut", metavar="DIR", help="a NAT trained with --length-method cut")
    p.add_argument("--data", metavar="FILE", help="test pairs (TSV/JSONL)")
    p.add_argument("--src-col", type=int, default=1)
    p.add_argument("--tgt-col", type=int, default=2)
    p.add_argument("--limit", type=int, help="use only the first N test pairs")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32], help="batch sizes (default 1 32)")
    p.add_argument("--iterations", type=int, nargs="+", default=[2, 4, 10], help="mask-predict passes")
    p.add_argument("--length-beam", type=int, default=3, help="length beam size of the length-beam row")
    p.add_argument(
        "--no-adaptive",
        action="store_true",
        help="leave out the adaptive mask-predict rows (qkv translate --adaptive: a candidate stops at the "
        "first pass that changes none of its tokens)",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="every system (AT, NAT, rescoring teacher, deep-shallow) with int8 products, as qkv translate --int8",
    )
    p.add_argument(
        "--turn",
        type=int,
        default=DEFAULT_TURN,
        metavar="N",
        help=f"sentences each system translates before the next takes its turn (default {DEFAULT_TURN}; "
        "at least the batch size; 1: every system starts every sentence with cold caches)",
    )
    p.add_argument("--json", metavar="FILE", help="also write the results here")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--demo", action="store_true", help="train the three models on the demo corpus first")
    p.add_argument("--out", default="runs/nat-demo", help="--demo: where the runs go (reused if present)")
    p.add_argument(
        "--steps",
        type=int,
        default=600,
        help="--demo: training steps per model (default 600: the same models on a fast or a slow CPU)",
    )
    p.add_argument(
        "--minutes",
        type=float,
        help="--demo: also stop each model's training after this many minutes (default: no time limit; "
        "a cap makes a slow CPU train fewer steps, so it measures a weaker model)",
    )
    p.add_argument(
        "--length-weight",
        type=float,
        default=1.0,
        help="--demo: the NAT's length loss weight (default 1.0: with 600 steps, exact lengths 66.6%% "
        "of the time against 57.8%% with the CLI's 0.1)",
    )
    args = p.parse_args(argv)
    if args.turn < 1:
        p.error(f"--turn {args.turn}: give at least one sentence per turn")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.demo:
        at_dir, nat_dir, cut_dir, ds_dir = train_demo(
            Path(args.out), args.minutes, args.steps, args.length_weight
        )
        args.at, args.nat, args.nat_cut, args.deep_shallow = (
            str(at_dir),
            str(nat_dir),
            str(cut_dir),
            str(ds_dir),
        )
        _, held_out = demo.splits(seed=0)
        sources, refs = [zh for zh, _ in held_out], [en for _, en in held_out]
    else:
        if not (args.at and args.nat and args.data):
            p.error("give --at, --nat and --data (and --deep-shallow), or --demo")
        corpus = read_corpus(args.data, src_col=args.src_col, tgt_col=args.tgt_col, max_chars=None)
        sources, refs = corpus.sources, corpus.targets
    if args.limit:
        sources, refs = sources[: args.limit], refs[: args.limit]
    print(
        f"{len(sources):,} test sentences, torch {torch.__version__}, {torch.get_num_threads()} threads",
        file=sys.stderr,
    )
    rows, lengths = benchmark(
        args.at,
        args.nat,
        args.deep_shallow,
        sources,
        refs,
        batches=args.batches,
        iterations=args.iterations,
        length_beam=args.length_beam,
        int8=args.int8,
        turn=args.turn,
        adaptive=not args.no_adaptive,
        cut_dir=args.nat_cut,
    )
    print_table(rows, lengths)
    if 1 not in args.batches:
        ok = True  # both bars are about batch 1
    else:
        ok = demo_checks(rows) if args.demo else data_checks(rows)
    if args.json:
        result: dict[str, Any] = {
            "machine": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "int8": args.int8,
            "turn": args.turn,
            "models": {
                "at": args.at,
                "nat": args.nat,
                "nat_cut": args.nat_cut,
                "deep_shallow": args.deep_shallow,
            },
            "sentences": len(sources),
            "rows": [asdict(r) for r in rows],
            "lengths": lengths,
        }
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
