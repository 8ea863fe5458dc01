"""How a command's failure reaches the user: one line on stderr and an exit code, never a traceback.

The exit codes, as ``qkv --help`` lists them: 2 when what the user gave is wrong (a flag, a file, its
contents, a configuration: fix the command and run it again), 1 when the command could not finish for a
reason outside it (a full disk, a permission, an I/O error, or a bug in qkv), 130 when interrupted, and 141
when the reader of its output went away (``qkv translate ... | head -1``), the code a shell reports for a
process ended by SIGPIPE, which is the quiet end every command-line tool gives there.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from qkv.cli.common import UsageError

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_OUTPUT_CLOSED = 141  # 128 + SIGPIPE

DEBUG_VARIABLE = "QKV_DEBUG"

# The library's own errors (ConfigError, CheckpointError, OutputExistsError, CorpusError, ExportError) are
# ValueErrors raised for what the user gave, so they are bad input with the rest.
BAD_INPUT = (
    UsageError,
    ValueError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
)


def debugging() -> bool:
    """Whether QKV_DEBUG asks for errors to propagate with their traceback (for developers)."""
    return os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


def one_line(message: str) -> str:
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def describe_os_error(error: OSError) -> str:
    """`path: reason` rather than Python's `[Errno 28] No space left on device: 'path'`."""
    if error.filename is not None and error.strerror:
        paths = f"{error.filename} -> {error.filename2}" if error.filename2 is not None else error.filename
        return f"{paths}: {error.strerror}"
    return error.strerror or str(error) or type(error).__name__


def _stdout_to_devnull() -> None:
    """After the reader of stdout went away, point stdout at /dev/null so that Python's flush at exit
    does not raise BrokenPipeError again (as the Python documentation on SIGPIPE recommends)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # a replaced sys.stdout (a test's capture) has no descriptor
        pass


def run_reporting_errors(
    command: str, func: Callable[[argparse.Namespace], int], args: argparse.Namespace
) -> int:
    """``func(args)``'s exit code; what it raises becomes one line `qkv COMMAND: error: ...` and a code."""

    def report(message: str) -> None:
        print(f"qkv {command}: error: {one_line(message)}", file=sys.stderr)

    try:
        code = func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers, rather than at exit
        return code
    except BrokenPipeError:
        _stdout_to_devnull()
        return EXIT_OUTPUT_CLOSED
    except KeyboardInterrupt:
        print(f"qkv {command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BAD_INPUT as e:
        if debugging():
            raise
        report(str(e) or type(e).__name__)
        return EXIT_BAD_INPUT
    except OSError as e:
        if debugging():
            raise
        report(describe_os_error(e))
        return EXIT_FAILED
    except MemoryError:
        if debugging():
            raise
        report("out of memory; try a smaller --batch-size or --max-tokens")
        return EXIT_FAILED
    except Exception as e:
        if debugging():
            raise
        report(f"internal error, {type(e).__name__}: {e} (set {DEBUG_VARIABLE}=1 to see the traceback)")
        return EXIT_FAILED
