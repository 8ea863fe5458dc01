"""Options from a file: ``qkv train --config run.yaml``, flags overriding it, ``--dump-config`` printing it.

A config file holds the command's long options as keys (``max-tokens`` or ``max_tokens``), in YAML or
TOML (by the file's suffix: ``.toml`` is TOML, anything else YAML), the way OpenNMT-py's and Marian's
YAML files hold theirs. Every value goes through the same check as the flag (its type and choices), so a
file cannot hold what the command line would refuse; an unknown key is an error that names it and the
closest option. Flags given on the command line win over the file. Relative paths in a file are read
from the current directory, as the same flags would be.

The file's values become the parser's defaults and the command line is parsed again: what a flag sets
replaces the file's value, whatever order they come in.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from qkv.cli.common import UsageError
from qkv.cli.flag_types import input_file

# Options that say how to read or print the configuration, never part of it.
_NOT_CONFIG = {"config", "dump_config", "help"}


def add_config_options(p: argparse.ArgumentParser, *, example: str) -> None:
    """``--config FILE`` and ``--dump-config`` for a command whose options a file may hold."""
    g = p.add_argument_group("configuration file")
    g.add_argument(
        "--config",
        type=input_file,
        metavar="FILE",
        help="read options from a YAML (or .toml) file whose keys are this command's long options, e.g. "
        f"'{example}'; flags on the command line override it",
    )
    g.add_argument(
        "--dump-config",
        action="store_true",
        help="print the resolved options (file, flags and defaults) as YAML and exit; save it as the "
        "--config of a run to repeat it",
    )
    p.set_defaults(config_parser=p)


def options_of(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The options a config file may set, by their key (the long flag without ``--``, ``-`` as ``_``)."""
    found: dict[str, argparse.Action] = {}
    for action in p._actions:
        longs = [s for s in action.option_strings if s.startswith("--")]
        if longs and action.dest not in _NOT_CONFIG:
            found[longs[0][2:].replace("-", "_")] = action
    return found


def read_config_file(path: str) -> dict[str, Any]:
    """The mapping in a YAML or TOML file (``--config`` checked that it is a readable file); a parse error or
    a non-mapping names the file."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"--config {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if file.suffix.lower() == ".toml":
        if sys.version_info < (3, 11):
            raise UsageError(f"--config {path}: TOML needs Python 3.11 or newer; write the file in YAML")
        import tomllib

        try:
            loaded: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise UsageError(f"--config {path}: not valid TOML: {e}") from None
    else:
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            where = getattr(e, "problem_mark", None)
            at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
            raise UsageError(f"--config {path}: not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UsageError(
            f"--config {path}: holds a {type(loaded).__name__}; it must map option names to values"
        )
    return loaded


def checked_values(p: argparse.ArgumentParser, path: str, raw: dict[str, Any]) -> dict[str, Any]:
    """The file's values by their ``dest``, each checked as its flag would be."""
    options = options_of(p)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        action = options.get(name)
        if action is None:
            close = difflib.get_close_matches(name, list(options), n=1)
            hint = (
                f"; did you mean {close[0]!r}?"
                if close
                else f"; `qkv {p.prog.split()[-1]} --help` lists them"
            )
            raise UsageError(f"--config {path}: unknown option {key!r}{hint}")
        values[action.dest] = _checked(action, path, str(key), value)
    return values


def _checked(action: argparse.Action, path: str, key: str, value: Any) -> Any:
    where = f"--config {path}: {key}"
    if action.nargs == 0:  # a switch (store_true)
        if not isinstance(value, bool):
            raise UsageError(f"{where}: {value!r} must be true or false")
        return value
    if value is None:
        return None
    if isinstance(value, (list, dict)) or isinstance(value, bool):
        raise UsageError(f"{where}: {value!r} must be a single {_kind(action)}")
    text = str(value)
    converted: Any = text
    if action.type is not None:
        try:
            converted = action.type(text)  # type: ignore[operator]
        except (argparse.ArgumentTypeError, TypeError, ValueError) as e:
            raise UsageError(f"{where}: {e}") from None
    if action.choices is not None and converted not in action.choices:
        choices = ", ".join(str(c) for c in action.choices)
        raise UsageError(f"{where}: {value!r} is not one of {choices}")
    return converted


def _kind(action: argparse.Action) -> str:
    return getattr(action.type, "__name__", "value").replace("_", " ") if action.type else "string"


def with_config_file(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: Sequence[str]) -> Any:
    """``args`` again, with the ``--config`` file's values under the command line's flags."""
    command: argparse.ArgumentParser = args.config_parser
    values = checked_values(command, args.config, read_config_file(args.config))
    command.set_defaults(**values)
    return parser.parse_args(argv)


def dump_config(args: argparse.Namespace) -> str:
    """The resolved options of ``args`` as YAML, every option the file could hold, in --help's order."""
    resolved = {key: getattr(args, action.dest) for key, action in options_of(args.config_parser).items()}
    return yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True)
