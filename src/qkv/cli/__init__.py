"""The ``qkv`` command line: a module per subcommand group, assembled in :mod:`qkv.cli.entry`."""

from qkv.cli.openmp import spin_briefly_before_sleeping

spin_briefly_before_sleeping()  # before anything imports torch: the OpenMP runtime reads it once, at load

from qkv.cli.entry import build_parser, main  # noqa: E402

__all__ = ["build_parser", "main"]
