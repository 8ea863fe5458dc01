"""JSON files read so that every malformed one is a :class:`~qkv.storage.errors.CheckpointError` naming it.

:func:`read_json` and :func:`read_json_object` name the file (and line and column) for bytes that are not
UTF-8, text that is not JSON, JSON nested too deep or of the wrong shape.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from qkv.storage.errors import CheckpointError

__all__ = ["json_type", "parse_json", "read_json", "read_json_object"]


def read_json(path: str | os.PathLike[str], *, what: str = "a JSON file") -> Any:
    """The JSON value in ``path``; a :class:`CheckpointError` naming the file (and line and column) for bytes
    that are not UTF-8, text that is not JSON, or JSON nested too deeply to parse.

    ``what`` says what the file should be, for the messages ("a tokenizer.json", ...).
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file; is this a qkv model directory (see qkv train --out)?")
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise CheckpointError(f"{file}: not UTF-8 text (byte {error.start}); expected {what}") from error
    except OSError as error:
        raise CheckpointError(f"{file}: cannot be read ({error.strerror or error})") from error
    return parse_json(text, str(file))


def parse_json(text: str, source: str) -> Any:
    """``json.loads`` with every failure a one-line :class:`CheckpointError` naming ``source``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{source}:{error.lineno}:{error.colno}: invalid JSON: {error.msg}") from error
    except RecursionError as error:  # "[[[[...": the decoder recurses once per level
        raise CheckpointError(f"{source}: invalid JSON: nested too deeply to read") from error
    except ValueError as error:  # an integer of more digits than Python converts (sys.int_info)
        raise CheckpointError(f"{source}: invalid JSON: {error}") from error


def read_json_object(path: str | os.PathLike[str], *, what: str = "a JSON object") -> dict[str, Any]:
    """:func:`read_json`, which must give a JSON object ``{...}``."""
    value = read_json(path, what=what)
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object {{...}}, got {json_type(value)}")
    return value


def json_type(value: Any) -> str:
    """How JSON calls the type of ``value``, with an article: "an array", "a string", ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    names = {dict: "an object", list: "an array", str: "a string", int: "an integer", float: "a number"}
    return names.get(type(value), f"a {type(value).__name__}")
