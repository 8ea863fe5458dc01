"""The options of `qkv translate` beyond decoding: output formats, n-best lists and scores, word
alignments, jsonl input with per-line controls, prefixes, constraints, a glossary, and sampling; and
the combinations of them that are refused."""

from __future__ import annotations

import argparse

from qkv.cli.common import UsageError
from qkv.cli.flag_types import (
    input_file,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    seed,
)


def _top_p(text: str) -> float:
    """A type for --top-p: a probability mass in (0, 1]."""
    value = non_negative_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


TRANSLATE_EXAMPLES = """\
examples:
  qkv translate --model runs/demo "我爱你"
  qkv translate --model runs/zh-en < in.zh > out.en
  qkv translate --model runs/zh-en --scores < in.zh                  # SCORE<TAB>TEXT
  qkv translate --model runs/zh-en --beam 5 --n-best 3 --format tsv < in.zh   # LINE RANK SCORE TEXT
  qkv translate --model runs/zh-en --format jsonl --align "我爱你"    # n-best, tokens, alignment
  qkv translate --model runs/zh-en --align --align-layer 1 "我爱你"   # TEXT<TAB>0-0 1-1 2-2
  qkv translate --model runs/zh-en --sample --temperature 0.8 --top-k 50 --top-p 0.9 --seed 1 "我爱你"
  qkv translate --model runs/zh-en --prefix "I do" "我爱你"
  qkv translate --model runs/zh-en --constraints "adore" --constraints "truly" "我爱你"
  qkv translate --model runs/zh-en --glossary terms.tsv < in.zh      # 猫<TAB>kitten: 猫 -> kitten
  echo '{"text": "我爱你", "prefix": "I", "constraints": ["truly"]}' |
    qkv translate --model runs/zh-en --input-format jsonl --format jsonl
  qkv translate --model runs/zh-en --input-format jsonl --skip-bad < in.jsonl   # bad lines: empty

Scores are log-probabilities divided by the length penalty ((5+len)/6)^alpha, the number beam search
ranks by; jsonl also gives each candidate's log_prob. Alignments are i-j pairs (source word i, output word
j, from 0), one per output word: the argmax of a decoder layer's head-averaged cross-attention, over
words (a run of letters or digits, a punctuation mark, or one Chinese/Japanese character); see
docs/translating.md.
"""


def add_translate_controls(p: argparse.ArgumentParser) -> None:
    """The output, input and sampling groups of `qkv translate`."""
    g = p.add_argument_group("output")
    g.add_argument(
        "--format",
        choices=["text", "tsv", "jsonl"],
        default="text",
        help="text (default): the translation, one line per input line; tsv: a row per candidate, "
        "LINE<TAB>RANK<TAB>SCORE<TAB>TEXT[<TAB>ALIGNMENT] (e.g. 3<TAB>1<TAB>-0.2170<TAB>I love you.); "
        'jsonl: an object per input line, {"text", "score", "tokens", "n_best": [{"text", "score", '
        '"log_prob", "tokens"}], and with --align "alignment", "source_words", "target_words"}',
    )
    g.add_argument(
        "--n-best",
        type=positive_int,
        default=1,
        metavar="N",
        help="the N best candidates of the beam, best first (N <= --beam; with --format tsv or jsonl), "
        "e.g. --beam 5 --n-best 5 --format tsv",
    )
    g.add_argument(
        "--scores",
        action="store_true",
        help="text format: SCORE<TAB>TEXT, the score beam search ranks by (tsv and jsonl always have it)",
    )
    g.add_argument(
        "--align",
        action="store_true",
        help="word alignment of each line with its translation, as source-output word pairs i-j "
        "(0-0 1-1 2-2 3-3): text format adds it as a last tab-separated column",
    )
    g.add_argument(
        "--align-layer",
        type=non_negative_int,
        metavar="L",
        help="the decoder layer --align reads, from 0 (default: the last, which aligned best on the demo "
        "model; Garg et al. 2019 took the penultimate of 6), "
        "e.g. --align --align-layer 1",
    )
    g = p.add_argument_group("input and per-line controls")
    g.add_argument(
        "--input-format",
        choices=["text", "jsonl"],
        default="text",
        help='text (default): a sentence a line; jsonl: an object a line, {"text": "我爱你", "prefix": "I", '
        '"constraints": ["adore"]} (only "text" is required): per-line prefix and constraints',
    )
    g.add_argument(
        "--skip-bad",
        action="store_true",
        help="jsonl input: a malformed line, or one whose prefix or constraints cannot be met, gives a "
        'warning and an empty line (jsonl: {"error": ..., "line": N}; tsv: no row) instead of stopping there',
    )
    g.add_argument(
        "--prefix",
        metavar="TEXT",
        help='the start of every translation, forced and kept verbatim (a jsonl line\'s "prefix" replaces '
        'it), e.g. --prefix "I do"',
    )
    g.add_argument(
        "--constraint",
        "--constraints",
        dest="constraint",
        metavar="PHRASE",
        action="append",
        default=[],
        help="a target phrase every candidate must contain (repeat for more; jsonl lines add their "
        '"constraints"): beam search with dynamic beam allocation guarantees it, e.g. --constraints "adore"',
    )
    g.add_argument(
        "--glossary",
        type=input_file,
        metavar="FILE",
        help="terminology: lines SOURCE TERM<TAB>TARGET TERM; a source term found in a line (exact, "
        "case-sensitive, longest first, whole words in spaced scripts) makes its target term a "
        "constraint for that line, e.g. --glossary terms.tsv",
    )
    g = p.add_argument_group("sampling (instead of beam search)")
    g.add_argument(
        "--sample",
        action="store_true",
        help="draw each token from the model's distribution (one candidate a line; --beam is ignored), "
        "e.g. --sample --temperature 0.8 --top-p 0.9 --seed 7",
    )
    g.add_argument(
        "--temperature",
        type=positive_float,
        metavar="T",
        help="divide the logits by T before sampling (default 1)",
    )
    g.add_argument(
        "--top-k",
        type=non_negative_int,
        metavar="K",
        help="sample among the K most probable tokens (default 0: all)",
    )
    g.add_argument(
        "--top-p",
        type=_top_p,
        metavar="P",
        help="sample among the most probable tokens that hold mass P (nucleus sampling; default 1: all)",
    )
    g.add_argument(
        "--seed",
        type=seed,
        help="the sampling seed (default 0): line i is drawn from (seed, i), so the same seed and input "
        "give the same output whatever --batch-size",
    )


def check_translate_flags(args: argparse.Namespace) -> None:
    """Flags that cannot go together, refused before the model loads."""
    sampling = {"--temperature": args.temperature, "--top-k": args.top_k, "--top-p": args.top_p,
                "--seed": args.seed}  # fmt: skip
    given = [flag for flag, value in sampling.items() if value is not None]
    if given and not args.sample:
        raise UsageError(f"{given[0]} is a sampling option: add --sample")
    if args.sample and args.n_best > 1:
        raise UsageError(
            "--n-best lists the beam's best candidates: with --sample there is one; leave out one"
        )
    if args.sample and (args.constraint or args.glossary):
        flag = "--constraint" if args.constraint else "--glossary"
        raise UsageError(f"{flag}: constraints need beam search; leave out --sample")
    if args.n_best > args.beam:
        raise UsageError(f"--n-best {args.n_best} needs a beam at least as wide: add --beam {args.n_best}")
    if args.n_best > 1 and args.format == "text":
        raise UsageError(
            f"--n-best {args.n_best} writes several candidates a line: add --format tsv (a row per "
            "candidate: line, rank, score, text) or --format jsonl"
        )
    if args.align_layer is not None and not args.align:
        raise UsageError("--align-layer picks the layer that --align reads: add --align")
    if args.skip_bad and args.input_format != "jsonl":
        raise UsageError("--skip-bad skips malformed jsonl lines: it goes with --input-format jsonl")
