"""Corpora larger than memory: `qkv prepare` on 1 and 2 workers, then training memory against corpus size.

For each size a synthetic zh->en corpus is streamed to a TSV from the demo grammar (random clauses,
repeats allowed: the grammar has fewer distinct sentences than millions), prepared with `qkv prepare
--workers 1` on one core and `--workers 2` on two (wall time; the shards must be the same bytes), then `qkv train --data
PREPARED --preset tiny` runs a few hundred steps. Each command is a child process and its peak resident
memory is its own (``os.wait4``'s ``ru_maxrss``), so the table shows what training on a prepared corpus
costs as the corpus grows: batching holds one window of the corpus at a time (``--batch-window``, 524,288
pairs) and reads lengths and ids from the mapped shards, so the peak should not grow with the corpus.

    .venv/bin/python -m benchmarks.prepare_scale --sizes 20000 100000 --steps 50     # a quick look
    .venv/bin/python -m benchmarks.prepare_scale --sizes 500000 5000000 --steps 300  # docs/real-data.md
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from qkv.data.demo import sample_clause
from qkv.data.demo_grammar import render_en, render_zh

WRITE_BATCH = 10_000


def write_corpus(path: Path, pairs: int, seed: int = 0) -> None:
    """``pairs`` random demo-grammar pairs as English<TAB>Chinese lines, streamed (never all in memory)."""
    rng = random.Random(f"prepare_scale:{seed}")
    partial = path.with_name(
        path.name + ".part"
    )  # renamed when complete: a killed run leaves no short corpus
    with open(partial, "w", encoding="utf-8") as file:
        for start in range(0, pairs, WRITE_BATCH):
            lines = []
            for _ in range(min(WRITE_BATCH, pairs - start)):
                clause = sample_clause(rng)
                punctuated = clause.question or rng.random() >= 0.1
                lines.append(f"{render_en(clause)}\t{render_zh(clause, punctuated=punctuated)}\n")
            file.write("".join(lines))
    partial.rename(path)


def run_child(command: list[str], log: Path, cores: int | None = None) -> tuple[float, int]:
    """Run ``command`` to its end (output to ``log``), on its first ``cores`` CPUs only if given; (wall
    seconds, peak resident KiB of that child, or of the largest of its children)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    allowed = sorted(os.sched_getaffinity(0))
    pin = None if cores is None else (lambda: os.sched_setaffinity(0, allowed[:cores]))
    start = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=pin)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        sys.exit(f"failed (exit {process.returncode}): {' '.join(command)}\n{log.read_text()[-3000:]}")
    return seconds, usage.ru_maxrss  # KiB on Linux


def digest(directory: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        h.update(path.name.encode())
        with open(path, "rb") as file:
            while block := file.read(2**22):
                h.update(block)
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[500_000, 5_000_000], help="pairs per corpus")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], help="qkv prepare --workers to time"
    )
    parser.add_argument("--steps", type=int, default=300, help="training steps on each prepared corpus")
    parser.add_argument("--max-tokens", type=int, default=4096, help="qkv train --max-tokens")
    parser.add_argument("--threads", type=int, default=2, help="qkv train --threads")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/qkv-prepare-scale"), help="work directory")
    parser.add_argument("--keep", action="store_true", help="keep the corpora and runs afterwards")
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not run `qkv prepare --workers N` on N CPUs only (by default it does: N workers on N cores, "
        "the tokenizer's training threads included)",
    )
    args = parser.parse_args()

    args.dir.mkdir(parents=True, exist_ok=True)
    qkv = [sys.executable, "-m", "qkv"]
    rows = []
    for size in args.sizes:
        corpus = args.dir / f"corpus-{size}.tsv"
        if not corpus.exists():
            write_corpus(corpus, size)
        megabytes = corpus.stat().st_size / 2**20
        timings: dict[int, float] = {}
        prepare_peaks: dict[int, float] = {}
        digests: dict[int, str] = {}
        prepared = args.dir / f"prepared-{size}"
        for workers in args.workers:
            out = args.dir / f"prepared-{size}-w{workers}"
            shutil.rmtree(out, ignore_errors=True)
            seconds, prepare_peak = run_child(
                [*qkv, "prepare", "--data", str(corpus), "--src-col", "2", "--tgt-col", "1", "--workers",
                 str(workers), "--quiet", "--out", str(out)],
                args.dir / f"prepare-{size}-w{workers}.log",
                cores=workers if args.pin else None,
            )  # fmt: skip
            timings[workers] = seconds
            prepare_peaks[workers] = prepare_peak / 1024
            digests[workers] = digest(out)
            print(
                f"{size:,} pairs ({megabytes:,.0f} MB): prepared with {workers} worker(s) in {seconds:,.1f} s"
            )
            shutil.rmtree(prepared, ignore_errors=True)
            out.rename(prepared)
        if len(set(digests.values())) != 1:
            sys.exit(f"{size:,} pairs: the workers counts {sorted(digests)} wrote different shards")
        run = args.dir / f"run-{size}"
        shutil.rmtree(run, ignore_errors=True)
        train_seconds, peak_kib = run_child(
            [*qkv, "train", "--data", str(prepared), "--preset", "tiny", "--max-steps", str(args.steps),
             "--max-tokens", str(args.max_tokens), "--threads", str(args.threads), "--save-every",
             str(args.steps), "--valid-every", str(args.steps), "--quiet", "--out", str(run)],
            args.dir / f"train-{size}.log",
        )  # fmt: skip
        print(
            f"{size:,} pairs: {args.steps} training steps in {train_seconds:,.1f} s, peak RSS {peak_kib / 1024:,.0f} MB"
        )
        rows.append((size, megabytes, timings, max(prepare_peaks.values()), train_seconds, peak_kib / 1024))
        if not args.keep:
            shutil.rmtree(run, ignore_errors=True)

    print()
    first, last = args.workers[0], args.workers[-1]
    print(
        f"| pairs | TSV MB | prepare, {first} worker (s) | prepare, {last} workers (s) | speed-up | "
        f"peak RSS of prepare (MB) | train {args.steps} steps (s) | peak RSS of training (MB) |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for size, megabytes, timings, prepare_peak, train_seconds, peak in rows:
        print(
            f"| {size:,} | {megabytes:,.0f} | {timings[first]:,.1f} | {timings[last]:,.1f} | "
            f"{timings[first] / timings[last]:.2f}x | {prepare_peak:,.0f} | {train_seconds:,.1f} | {peak:,.0f} |"
        )
    if len(rows) > 1:
        small, small_peak = rows[0][0], rows[0][-1]
        large, large_peak = rows[-1][0], rows[-1][-1]
        growth = (large_peak - small_peak) * 2**20 / (large - small)
        print(f"\npeak RSS grows by {growth:,.1f} bytes per extra pair ({small:,} -> {large:,} pairs)")
    if not args.keep:
        shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
