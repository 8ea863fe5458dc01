"""The entry point: pick the sections and the device, run, print one table per section, write JSON.

Every table has systems as rows and measurements as columns, with each throughput's ratio against the
best *other* system. The JSON holds every number, the machine (CPU model, cores, threads, torch and
baseline versions, device) and the sizes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import bert, decode, peak, train
from benchmarks.common import FULL, QUICK, Table, machine, pick_device, quiet_transformers
from qkv.allocator import keep_freed_memory

SECTIONS = ("peak", "train", "decode", "decode-opus", "bert")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections (default: all of {','.join(SECTIONS)})",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes and one iteration: a smoke test, not a measurement"
    )
    parser.add_argument("--json", metavar="FILE", default=None, help="also write every result here as JSON")
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="auto (default): a CUDA GPU if torch sees one",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch (and CTranslate2) threads; 0: torch's default"
    )
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"--only: unknown sections {unknown}; choose from {','.join(SECTIONS)}")
    args.sections = [s for s in SECTIONS if s in chosen]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # The `qkv` command sets glibc's malloc to keep freed memory (qkv.allocator). In this process it helps
    # every PyTorch system alike (qkv, torch.nn.Transformer, Hugging Face), so it is set for all of them.
    malloc_tuned = keep_freed_memory()
    sizes = QUICK if args.quick else FULL
    device = pick_device(args.device, args.threads)
    info = machine(device)
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, {info['torch_threads']} torch threads; "
        f"device {info['device']} ({info['device_name']}), {info['precision']}; torch {info['torch']}, "
        f"transformers {info['transformers']}, ctranslate2 {info['ctranslate2']}"
        + ("   [--quick: smoke-test sizes, the numbers mean nothing]" if args.quick else "")
    )
    info["malloc_keeps_freed_memory"] = malloc_tuned
    tables: list[Table] = []
    started = time.perf_counter()
    with quiet_transformers(), tempfile.TemporaryDirectory(prefix="qkv-bench-") as tmp:
        workdir = Path(tmp)
        # MFU needs the peak, so it is measured whenever a section reports MFU.
        peak_table, peaks = peak.run(sizes, device)
        rate = peak.peak_for(peaks, device)
        if "peak" in args.sections:
            tables.append(peak_table)
            print("\n" + peak_table.render(), flush=True)
        for section in args.sections:
            table: Table
            if section == "train":
                table = train.run(sizes, device, rate)
            elif section in decode.SHAPES:
                table = decode.run(sizes, device, workdir, section)
            elif section == "bert":
                table = bert.run(sizes, device, rate, workdir)
            else:
                continue
            tables.append(table)
            print("\n" + table.render(), flush=True)
    print(
        f"\n{time.perf_counter() - started:.0f} s in all; command: python -m benchmarks {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip()
    )
    if args.json:
        result: dict[str, Any] = {
            "machine": info,
            "quick": args.quick,
            "sizes": dataclasses.asdict(sizes),
            "peak_flops": peaks,
            "sections": {t.name: t.to_dict() for t in tables},
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"results: {args.json}")
    return 0
