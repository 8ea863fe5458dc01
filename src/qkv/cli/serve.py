"""`qkv serve`: the translation server (:mod:`qkv.serve`) on uvicorn.

Everything that can be wrong is found before the port is bound: the model flags, the host and key
rules, each model directory (loaded in full). The socket is then bound here, so a port in use is one
line too. SIGTERM (and SIGINT) stop the server gracefully: uvicorn stops accepting, finishes every
request it has read, then the app drains its queue; SIGTERM then exits 0.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import socket
import sys
from pathlib import Path

from qkv.cli.common import Subparsers, UsageError
from qkv.cli.flag_types import (
    input_file,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)

MAX_PORT = 65535


def add_serve_parser(sub: Subparsers) -> None:
    """`qkv serve` and its options."""
    p = sub.add_parser(
        "serve",
        help="a translation server: LibreTranslate-compatible API, /v1 API, web page with attention",
        description="Serve models over HTTP: LibreTranslate's API (POST /translate, GET /languages), qkv's "
        "/v1 API (n-best, scores, tokens, cross-attention), /healthz, /readyz, /metrics, the API's pages at "
        "/docs and a web page at /. Concurrent requests are decoded together in batches. Needs the serve "
        "extra (pip install 'qkv[serve]'). docs/serving.md has the details.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  qkv serve --model runs/demo/best --languages zh:en\n"
        "  qkv serve --model zh-en=runs/zh-en --model en-zh=runs/en-zh --port 5000\n"
        "  qkv serve --model opus-mt-en-de --host 0.0.0.0 --api-keys keys.txt\n",
    )
    g = p.add_argument_group("models")
    g.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="[NAME=]DIR",
        help="a model directory (qkv model or run directory, or Marian/OPUS-MT); repeat for more models; the "
        "first is the default. NAME (default SRC-TGT) is how requests name it",
    )
    g.add_argument(
        "--languages",
        action="append",
        default=[],
        metavar="SRC:TGT",
        help="the i-th --model's source and target language codes (zh:en); not needed when NAME or the "
        "directory's name is SRC-TGT (zh-en=DIR, opus-mt-zh-en)",
    )
    g.add_argument(
        "--beam", type=positive_int, default=4, help="LibreTranslate API's beam size; 1 = greedy (default 4)"
    )
    g = p.add_argument_group("network and access")
    g.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)"
    )
    g.add_argument(
        "--port",
        type=non_negative_int,
        default=8000,
        help="port (default 8000; 0: a free port, printed)",
    )
    g.add_argument(
        "--api-key", action="append", default=[], metavar="KEY", help="a key clients must send; repeatable"
    )
    g.add_argument("--api-keys", type=input_file, metavar="FILE", help="keys, one per line (# comments)")
    g.add_argument(
        "--allow-open",
        action="store_true",
        help="allow a non-loopback --host without API keys (anyone who reaches the port may translate)",
    )
    g = p.add_argument_group("batching")
    g.add_argument(
        "--max-batch",
        type=positive_int,
        default=64,
        help="texts per decoding batch; 1 = no batching (default 64)",
    )
    g.add_argument(
        "--max-tokens", type=positive_int, default=4096, help="padded source tokens per batch (default 4096)"
    )
    g.add_argument(
        "--max-wait-ms",
        type=non_negative_float,
        default=5.0,
        help="how long a batch waits for more texts after its first (default 5 ms)",
    )
    g.add_argument(
        "--threads", type=positive_int, help="torch threads for decoding (default: torch's choice)"
    )
    g = p.add_argument_group("limits")
    g.add_argument(
        "--max-body-bytes", type=positive_int, default=1 << 20, help="request body size (default 1 MiB)"
    )
    g.add_argument("--max-texts", type=positive_int, default=128, help="texts per request (default 128)")
    g.add_argument("--max-chars", type=positive_int, default=5000, help="characters per text (default 5000)")
    g.add_argument(
        "--max-beam", type=positive_int, default=16, help="largest beam a request may ask for (default 16)"
    )
    g.add_argument(
        "--queue-size",
        type=positive_int,
        default=1024,
        help="texts waiting for the worker; more are refused with 503 and Retry-After (default 1024)",
    )
    g.add_argument(
        "--timeout",
        type=positive_float,
        default=60.0,
        help="seconds a request may take; then 504 (default 60)",
    )
    p.set_defaults(func=cmd_serve)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _api_keys(args: argparse.Namespace) -> frozenset[str]:
    keys = {key for key in args.api_key if key}
    if args.api_keys is not None:
        lines = Path(args.api_keys).read_text(encoding="utf-8").splitlines()
        from_file = {line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")}
        if not from_file:
            raise UsageError(f"--api-keys {args.api_keys}: the file has no keys (one per line)")
        keys |= from_file
    return frozenset(keys)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.set_inheritable(True)
    return sock


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        raise UsageError("qkv serve needs the serve extra: pip install 'qkv[serve]'") from None
    import torch

    from qkv.serve.app import create_app
    from qkv.serve.models import load_model, parse_specs
    from qkv.serve.state import Settings

    if args.port > MAX_PORT:
        raise UsageError(f"--port {args.port}: ports go up to {MAX_PORT}")
    if args.queue_size < args.max_texts:
        raise UsageError(
            f"--queue-size {args.queue_size} is less than --max-texts {args.max_texts}: a request with more "
            "texts than the queue holds could never be accepted"
        )
    specs = parse_specs(args.model, args.languages)
    keys = _api_keys(args)
    if not _is_loopback(args.host) and not keys and not args.allow_open:
        raise UsageError(
            f"--host {args.host}: other machines could reach this server; give --api-key/--api-keys, "
            "or --allow-open to serve without keys"
        )
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    models = []
    for spec in specs:
        models.append(load_model(spec, beam=args.beam, int8=False))
    from qkv.infer.products import int8_available

    settings = Settings(
        max_body_bytes=args.max_body_bytes,
        max_texts=args.max_texts,
        max_chars=args.max_chars,
        max_beam=args.max_beam,
        request_timeout_s=args.timeout,
        queue_size=args.queue_size,
        max_batch=args.max_batch,
        max_tokens=args.max_tokens,
        max_wait_ms=args.max_wait_ms,
        api_keys=keys,
        default_beam=min(args.beam, args.max_beam),
    )
    logging.basicConfig(level=logging.WARNING, format="qkv serve: %(levelname)s: %(message)s")
    servers: list[uvicorn.Server] = []
    app = create_app(
        models,
        settings,
        shutting_down=lambda: bool(servers) and servers[0].should_exit,
        int8_available=int8_available(),
    )
    sock = _bind(args.host, args.port)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=int(args.timeout) + 5,
    )
    server = uvicorn.Server(config)
    servers.append(server)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    pairs = ", ".join(f"{m.name} ({m.spec.source}->{m.spec.target})" for m in models)
    print(
        f"qkv serve: {pairs} on http://{shown}:{port}/ (SIGTERM or Ctrl-C stops)", file=sys.stderr, flush=True
    )
    # uvicorn re-raises the signal that stopped it once it is done; a SIGTERM that arrives then has been
    # answered by the graceful shutdown already, so it ends the process with code 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    server.run(sockets=[sock])
    return 0
