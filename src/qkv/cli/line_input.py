"""Lines of `qkv translate`'s input: the arguments, or stdin streamed in batches."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator


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


def _decoded_lines(batch: list[bytes], first: int) -> list[str]:
    """A batch of stdin lines as text; invalid UTF-8 is replaced, with a warning naming the line."""
    texts = []
    for offset, raw in enumerate(batch):
        raw = raw.removesuffix(b"\r")
        try:
            texts.append(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            print(
                f"qkv translate: warning: line {first + offset}: invalid UTF-8 at byte {e.start}; "
                "undecodable bytes replaced by U+FFFD",
                file=sys.stderr,
            )
            texts.append(raw.decode("utf-8", errors="replace"))
    return texts


def input_batches(args: argparse.Namespace) -> Iterator[tuple[int, list[str]]]:
    """``(first line number, lines)`` batches of the arguments or of stdin."""
    if args.text:
        yield 1, list(args.text)
        return
    number = 1
    for batch in _stdin_line_batches(sys.stdin.fileno(), args.batch_size):
        yield number, _decoded_lines(batch, number)
        number += len(batch)
