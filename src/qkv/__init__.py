"""qkv: the Transformer of 'Attention Is All You Need', as real, fast, readable software."""

# The one place the version is written: pyproject.toml reads it (tool.setuptools.dynamic), `qkv --version`
# prints it, CHANGELOG.md names it.
__version__ = "0.1.0"
