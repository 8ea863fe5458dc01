"""How decoding time grows with the output length, with the key/value cache and without.

With the cache each step runs the decoder on one new position (plus attention over the cached ones), so
doubling the output length about doubles the time. The uncached reference re-runs the whole prefix every
step, so its work grows with the square of the length: doubling it takes up to ~4x as long (less while
fixed per-step costs still dominate).

The output length is forced: </s> is banned until the last step (``min_len`` = max length), so both
paths produce exactly L and 2L tokens. Random weights are fine for timing.

    .venv/bin/python benchmarks/decode_scaling.py                 # small preset, about 30 s
    .venv/bin/python benchmarks/decode_scaling.py --length 32 --batch 4 --method beam
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from qkv.config import preset
from qkv.decode import Lengths, pad_batch
from qkv.decode.beam import beam_search
from qkv.decode.greedy import greedy_search
from qkv.decode.step import CachedStepper, Stepper, UncachedStepper
from qkv.models.seq2seq import Transformer


def time_decode(stepper: Stepper[Any], src: torch.Tensor, length: int, method: str, repeats: int) -> float:
    """Best-of-``repeats`` wall time (s) to decode exactly ``length`` tokens per sentence."""
    lengths = Lengths(max_len_a=0.0, max_len_b=length, min_len=length)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.inference_mode():
            if method == "greedy":
                hyps = greedy_search(stepper, src, lengths=lengths)
                got = {len(h.tokens) for h in hyps}
            else:
                found = beam_search(stepper, src, beam=4, lengths=lengths)
                got = {len(hyps[0].tokens) for hyps in found}
        best = min(best, time.perf_counter() - start)
        if got != {length}:
            raise RuntimeError(f"expected outputs of {length} tokens, got lengths {sorted(got)}")
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="small")
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--batch", type=int, default=8, help="sentences per batch")
    parser.add_argument("--src-len", type=int, default=20, help="source tokens per sentence")
    parser.add_argument("--length", type=int, default=64, help="L: output tokens of the short run")
    parser.add_argument("--method", choices=["greedy", "beam"], default="greedy", help="beam uses beam 4")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    # One thread by default: on a shared 2-core machine two threads contend with other work and the
    # timings turn to noise; the ratios, not the absolute times, are what this table shows.
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = Transformer(preset(args.preset, args.vocab, dropout=0.0)).eval()
    generator = torch.Generator().manual_seed(0)
    sources = [
        torch.randint(4, args.vocab, (args.src_len - 1,), generator=generator).tolist() + [2]
        for _ in range(args.batch)
    ]
    src = pad_batch(sources, model.config.pad_id)
    short, long = args.length, 2 * args.length

    print(
        f"{args.method} decoding, preset {args.preset} ({model.num_parameters():,} parameters), "
        f"batch {args.batch} x {args.src_len} source tokens, {torch.get_num_threads()} threads, "
        f"best of {args.repeats}"
    )
    header = (
        f"{'stepper':<10} {f'L={short} (s)':>12} {f'2L={long} (s)':>13} {'2L / L':>8} {'ms/token at 2L':>15}"
    )
    print(header)
    print("-" * len(header))
    timings = {}
    for name, stepper in (("cached", CachedStepper(model)), ("uncached", UncachedStepper(model))):
        time_decode(stepper, src, 4, args.method, 1)  # warm-up
        t_short = time_decode(stepper, src, short, args.method, args.repeats)
        t_long = time_decode(stepper, src, long, args.method, args.repeats)
        timings[name] = t_long
        print(
            f"{name:<10} {t_short:>12.3f} {t_long:>13.3f} {t_long / t_short:>7.2f}x "
            f"{1000 * t_long / long:>15.2f}"
        )
    print(f"cache speed-up at 2L = {long} tokens: {timings['uncached'] / timings['cached']:.1f}x")


if __name__ == "__main__":
    main()
