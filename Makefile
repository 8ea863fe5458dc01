# qkv — the two commands a newcomer needs are `make demo` and `make test`; both set up first.
PYTHON      ?= python3
VENV        ?= .venv
# The CPU build of PyTorch lies on disk here; GPU users override, e.g.
#   make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC  ?= torch==2.13.0
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.qkv-installed
RUN_STAMP   := $(VENV)/.qkv-runtime-installed

.PHONY: setup setup-runtime demo test lint format bench clean

# Everything: the package, its plotting extra and the dev tools (pytest, ruff, mypy, and the Hugging Face
# packages the tests compare against). Idempotent: redone only when the venv is missing or
# pyproject.toml changed.
setup: $(STAMP)

$(STAMP): pyproject.toml | $(RUN_STAMP)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

# What the demo needs: PyTorch first (the on-disk CPU build), then qkv with matplotlib.
setup-runtime: $(RUN_STAMP)

$(RUN_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[plot]"
	touch $(RUN_STAMP)

demo: setup-runtime
	$(BIN)/qkv demo

test: setup
	$(BIN)/python -m pytest

# The side-by-side speed tables (qkv vs torch.nn.Transformer, Hugging Face, CTranslate2), also as JSON.
# Run it on an otherwise idle machine; `python -m benchmarks --help` lists the options.
BENCH_STAMP := $(VENV)/.qkv-bench-installed

$(BENCH_STAMP): pyproject.toml | $(STAMP)
	$(BIN)/python -m pip install -q -e ".[dev,bench]"
	touch $(BENCH_STAMP)

bench: setup $(BENCH_STAMP)
	$(BIN)/python -m benchmarks --json runs/bench.json

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy src/qkv

format: setup
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
