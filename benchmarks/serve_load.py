"""Load test of ``qkv serve``: concurrent clients on loopback, with dynamic batching and without.

For each server mode (dynamic batching as configured, then ``--max-batch 1``: one text per decoding
batch, the one-request-at-a-time baseline) a real ``python -m qkv serve`` process starts on 127.0.0.1 and
a free port; at each client level (``--clients``, default 1, 8, 32, 128) that many concurrent clients send
``--requests`` requests in all, one sentence each (``POST /v1/translate``), the sentences taken in turn
from ``--data`` (cmn-eng's dev set: column 2 is Chinese). Reported per mode and level: sentences/s
(requests answered over the level's wall time), p50/p95/p99 latency, the answers that were not 200 by
status, the requests lost (no answer at all: a connection error or a client timeout), and the server's
resident memory after the level. The notes give 32 clients' throughput over 1 client's, and batching over
``--max-batch 1`` at each level.

The clients run in this process (asyncio, httpx) on the same machine as the server: on a small machine
they take CPU from it, as a reverse proxy would. Bounded: ``--requests`` per level, and each request
gives up after ``--timeout`` s (counted as lost).

    python -m benchmarks.serve_load --model runs/zh-en/avg4 --languages zh:en --threads 2
    python -m benchmarks.serve_load --requests 50              # a random small model: the machinery only

Without ``--model``, a random ``small``-preset model with a BPE vocabulary trained on the data serves:
its translations are nonsense of full length, which makes each sentence's decoding cost the most.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import Column, Table, machine, pick_device
from benchmarks.serve_process import Server

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cmn-eng" / "dev.tsv"
START_TIMEOUT_S = 300


def read_sentences(path: Path, column: int) -> list[str]:
    """Column ``column`` (1-based) of a TSV file; the demo corpus's Chinese when the file is missing."""
    if not path.is_file():
        from qkv.data import demo

        print(f"{path} is missing: using the built-in demo corpus's sentences")
        return [zh for zh, _ in demo.generate(size=2000)]
    with path.open(encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [row[column - 1] for row in rows if len(row) >= column and row[column - 1].strip()]


def random_model(directory: Path, sentences: list[str]) -> Path:
    """A random ``small``-preset model with a BPE vocabulary trained on ``sentences``."""
    import torch

    from qkv import checkpoint
    from qkv.config import preset
    from qkv.models import saved
    from qkv.models.seq2seq import Transformer
    from qkv.tokenize import train_bpe

    tokenizer = train_bpe(sentences, 4000)
    torch.manual_seed(0)
    model = Transformer(preset("small", tokenizer.vocab_size, dropout=0.0))
    checkpoint.save_directory(
        directory,
        tensors={checkpoint.MODEL_FILE: model.state_dict()},
        json={checkpoint.CONFIG_FILE: {"model": model.config.to_dict()}},
        text=saved.tokenizer_files(tokenizer, tokenizer),
    )
    return directory


@dataclass
class Level:
    """One client level's outcome."""

    clients: int
    requests: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # of the 200 answers
    statuses: dict[int, int] = field(default_factory=dict)  # of the other answers
    lost: int = 0
    rss_mb: float = 0.0

    def percentile(self, q: float) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

    @property
    def sentences_per_s(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0


async def run_level(
    url: str, sentences: Sequence[str], clients: int, requests: int, body: dict[str, Any], timeout: float
) -> Level:
    """``requests`` requests from ``clients`` concurrent clients, each sending its next one as soon as
    its previous one is answered."""
    import httpx

    level = Level(clients, requests)
    next_index = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal next_index
        while next_index < requests:
            index = next_index
            next_index += 1
            started = time.perf_counter()
            try:
                response = await http.post(
                    "/v1/translate", json={**body, "texts": [sentences[index % len(sentences)]]}
                )
            except httpx.HTTPError:
                level.lost += 1
                continue
            if response.status_code == 200:
                level.latencies.append(time.perf_counter() - started)
            else:
                level.statuses[response.status_code] = level.statuses.get(response.status_code, 0) + 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        level.seconds = time.perf_counter() - started
    return level


def run_mode(
    name: str, server_args: list[str], args: argparse.Namespace, sentences: list[str]
) -> list[Level]:
    server = Server(server_args, threads=args.threads, start_timeout_s=START_TIMEOUT_S)
    levels: list[Level] = []
    try:
        body = (
            {"method": args.method, "beam": args.beam} if args.method == "beam" else {"method": args.method}
        )
        asyncio.run(run_level(server.url, sentences, 1, args.warmup, body, args.timeout))  # untimed
        for clients in args.clients:
            level = asyncio.run(run_level(server.url, sentences, clients, args.requests, body, args.timeout))
            level.rss_mb = server.rss_mb()
            levels.append(level)
            print(
                f"{name}, {clients} clients: {level.sentences_per_s:,.1f} sentences/s, "
                f"{len(level.latencies)} answered, {sum(level.statuses.values())} refused, {level.lost} lost",
                flush=True,
            )
    finally:
        code = server.stop(timeout_s=120)
    if code != 0:
        print(f"{name}: qkv serve exited with {code}:\n" + "\n".join(server.stderr.splitlines()[-20:]))
    return levels


def table(results: dict[str, list[Level]]) -> Table:
    columns = [
        Column("clients", "clients", "{:,.0f}"),
        Column("sentences_per_s", "sentences/s", "{:,.1f}"),
        Column("p50_ms", "p50 ms", "{:,.0f}"),
        Column("p95_ms", "p95 ms", "{:,.0f}"),
        Column("p99_ms", "p99 ms", "{:,.0f}"),
        Column("non_200", "non-200", "{:,.0f}"),
        Column("lost", "lost", "{:,.0f}"),
        Column("rss_mb", "server RSS MB", "{:,.0f}"),
    ]
    result = Table("serve_load", "qkv serve under concurrent clients (one sentence per request)", columns)
    for mode, levels in results.items():
        for level in levels:
            p50, p95, p99 = (level.percentile(q) for q in (50, 95, 99))
            result.rows[f"{mode}, {level.clients} clients"] = {
                "clients": level.clients,
                "sentences_per_s": level.sentences_per_s,
                "p50_ms": None if p50 is None else 1000 * p50,
                "p95_ms": None if p95 is None else 1000 * p95,
                "p99_ms": None if p99 is None else 1000 * p99,
                "non_200": sum(level.statuses.values()),
                "lost": level.lost,
                "rss_mb": level.rss_mb,
            }
    for mode, levels in results.items():
        by_clients = {level.clients: level for level in levels}
        if 1 in by_clients and 32 in by_clients and by_clients[1].sentences_per_s:
            ratio = by_clients[32].sentences_per_s / by_clients[1].sentences_per_s
            result.notes.append(f"{mode}: 32 clients give {ratio:.2f}x the sentences/s of 1 client")
    modes = list(results)
    if len(modes) == 2:
        batched = {level.clients: level for level in results[modes[0]]}
        for level in results[modes[1]]:
            other = batched.get(level.clients)
            if other is not None and level.sentences_per_s:
                result.notes.append(
                    f"{level.clients} clients: {modes[0]} gives {other.sentences_per_s / level.sentences_per_s:.2f}x "
                    f"the sentences/s of {modes[1]}"
                )
    return result


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def client_levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"every level must be >= 1, got {text!r}")
    return levels


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.serve_load",
        description="Load test of qkv serve on loopback: throughput and latency at each number of concurrent "
        "clients, with dynamic batching and with --max-batch 1.",
    )
    p.add_argument("--model", type=Path, help="the model directory to serve (default: a random small model)")
    p.add_argument("--languages", default="zh:en", help="the model's SRC:TGT (default zh:en)")
    p.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help=f"sentences, a TSV file (default {DEFAULT_DATA})"
    )
    p.add_argument(
        "--column", type=positive_int, default=2, help="the TSV column of the sentences (default 2)"
    )
    p.add_argument(
        "--clients", type=client_levels, default=[1, 8, 32, 128], help="levels, e.g. 1,8,32,128 (the default)"
    )
    p.add_argument("--requests", type=positive_int, default=2000, help="requests per level (default 2000)")
    p.add_argument(
        "--warmup", type=positive_int, default=20, help="untimed requests before the levels (default 20)"
    )
    p.add_argument("--method", choices=("greedy", "beam"), default="beam", help="the search (default beam)")
    p.add_argument("--beam", type=positive_int, default=4, help="beam size for --method beam (default 4)")
    p.add_argument("--threads", type=positive_int, default=2, help="the server's torch threads (default 2)")
    p.add_argument(
        "--max-batch", type=positive_int, default=64, help="the batching mode's texts per batch (default 64)"
    )
    p.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="the batching mode's wait for more texts (default 5)"
    )
    p.add_argument(
        "--timeout", type=float, default=120.0, help="seconds before a client gives up on a request"
    )
    p.add_argument("--no-baseline", action="store_true", help="skip the --max-batch 1 mode")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sentences = read_sentences(args.data, args.column)
    with tempfile.TemporaryDirectory(prefix="qkv-serve-load-") as scratch:
        model = args.model or random_model(Path(scratch) / "model", sentences)
        common = [
            "--model", str(model), "--languages", args.languages, "--threads", str(args.threads),
            "--queue-size", str(max(1024, 2 * max(args.clients))), "--max-beam", str(max(16, args.beam)),
            "--timeout", str(args.timeout),
        ]  # fmt: skip
        modes = {
            f"batching (max-batch {args.max_batch})": [
                *common, "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)
            ],
        }  # fmt: skip
        if not args.no_baseline:
            modes["max-batch 1"] = [*common, "--max-batch", "1", "--max-wait-ms", "0"]
        results = {name: run_mode(name, server_args, args, sentences) for name, server_args in modes.items()}
    result = table(results)
    print()
    print(result.render())
    if args.out is not None:
        info = machine(pick_device("cpu", args.threads))
        record = {"machine": info, "command": sys.argv, "date": time.strftime("%Y-%m-%d"), **result.to_dict()}
        args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
