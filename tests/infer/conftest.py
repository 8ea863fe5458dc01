"""The fixtures of tests/decode (a random tiny Transformer and its sources), shared."""

from tests.decode.conftest import *  # noqa: F403
