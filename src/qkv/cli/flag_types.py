"""Argparse types: each checks a flag's value as it is parsed, before any work starts.

A bad value is a usage error (exit 2) that argparse words as ``qkv translate: error: argument --beam: must
be >= 1, got 0``: the flag, what it needs, what it got. Numbers must be finite; paths must be of the kind the
flag reads (a file, a directory) or, for outputs, be creatable, so that a run never fails at its end for
something that was wrong at its start. Each type returns the text it was given, converted only to a number.
"""

from __future__ import annotations

import math
import os
import re
from argparse import ArgumentTypeError
from collections.abc import Callable
from pathlib import Path

SEED_MAX = 2**63 - 1  # torch.manual_seed takes any 64-bit seed; the trainer's step seeds stay below this


def int_between(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """A type for whole numbers in [minimum, maximum]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise ArgumentTypeError(f"must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise ArgumentTypeError(f"must be <= {maximum}, got {value}")
        return value

    return parse


positive_int = int_between(1)
non_negative_int = int_between(0)
seed = int_between(0, SEED_MAX)


def finite_float(text: str) -> float:
    """A type for real numbers: nan and inf are refused (every number of the CLI is finite)."""
    try:
        value = float(text)
    except ValueError:
        raise ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if not value > 0:
        raise ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    """A type for rates such as dropout and label smoothing: [0, 1), since a rate of 1 leaves nothing."""
    value = finite_float(text)
    if not 0 <= value < 1:
        raise ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def device_name(text: str) -> str:
    """A type for --device: auto, cpu, cuda or cuda:N of a GPU that is here (or mps where torch has it)."""
    if not DEVICE.fullmatch(text):
        raise ArgumentTypeError(f"expected cpu, cuda, cuda:N or auto, got {text!r}")
    if text in ("auto", "cpu"):
        return text
    import torch  # only to ask for an accelerator: `qkv --help` and CPU runs do not wait for it here

    if text == "mps":
        if not torch.backends.mps.is_available():
            raise ArgumentTypeError("mps: no Apple GPU is available here; use --device cpu")
        return text
    if not torch.cuda.is_available():
        raise ArgumentTypeError(f"{text}: no CUDA device is available here; use --device cpu")
    index = int(text.partition(":")[2] or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise ArgumentTypeError(f"{text}: there is no such GPU here (cuda:0 to cuda:{count - 1})")
    return text


def input_file(text: str) -> str:
    path = Path(text)
    if path.is_dir():
        raise ArgumentTypeError(f"{text} is a directory; give a file")
    if not path.exists():
        raise ArgumentTypeError(f"{text}: no such file")
    return text


def input_directory(text: str) -> str:
    path = Path(text)
    if not path.exists():
        raise ArgumentTypeError(f"{text}: no such directory")
    if not path.is_dir():
        raise ArgumentTypeError(f"{text} is a file; give a directory")
    return text


def _check_creatable(path: Path, text: str) -> None:
    """Refuse a path whose nearest existing ancestor is a file or not writable: it could not be made."""
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ArgumentTypeError(f"{text}: cannot be created, {ancestor} is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ArgumentTypeError(f"{text}: no permission to write in {ancestor}")


def output_directory(text: str) -> str:
    """A type for an output directory: missing (it is created) or a directory, never a file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise ArgumentTypeError(f"{text} is a file; give a directory (created if missing)")
    _check_creatable(path, text)
    return text


def output_file(text: str) -> str:
    """A type for an output file: missing or a file, never a directory; its directory may be created."""
    path = Path(text)
    if path.is_dir():
        raise ArgumentTypeError(f"{text} is a directory; give a file name")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise ArgumentTypeError(f"{text}: no permission to write it")
    else:
        _check_creatable(path.parent, text)
    return text
