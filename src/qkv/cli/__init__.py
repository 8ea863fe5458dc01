"""The ``qkv`` command line: a module per subcommand group, assembled in :mod:`qkv.cli.entry`."""

from qkv.cli.entry import build_parser, main

__all__ = ["build_parser", "main"]
