"""What every section shares: the machine record, the device, timing, sizes and the result table.

A :class:`Table` has systems as rows and measurements as columns; a measurement marked ``ratio`` gets a
second column, the row's value over the best value of the *other* rows (so the winner shows > 1.00x and
every loser its distance to the best). Throughputs are used everywhere, so higher is always better.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import platform
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch


# ---- sizes ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sizes:
    """Every size the suite uses; ``QUICK`` shrinks them so the whole suite runs in seconds (a smoke test)."""

    peak_n: int = 4096  # square matmul for the peak rate
    peak_repeats: int = 5
    train_presets: tuple[str, ...] = ("small", "base")
    train_batch: int = 64  # sentences (64 x 30 = 1,920 target tokens, a typical CPU training batch)
    train_src_len: int = 30  # tokens per source sentence (no padding: equal shapes for every system)
    train_tgt_len: int = 30  # target tokens per sentence (after <s>)
    vocab: int = 8000
    train_warmup: int = 2
    train_steps: int = 5  # timed steps, best of
    decode_preset: str = "small"
    decode_batch: int = 32
    decode_src_len: tuple[int, int] = (15, 25)  # source lengths drawn from this range (inclusive)
    decode_steps: int = 32  # decoder steps per sentence, forced equal for every system
    decode_repeats: int = 5
    # The OPUS-MT shape's config.json fields that --quick shrinks (benchmarks.decode.OPUS_MT_ZH_EN); none:
    # the real shape.
    opus_mt_overrides: tuple[tuple[str, int], ...] = ()
    bert_batch: int = 32
    bert_len: int = 128
    bert_repeats: int = 5


FULL = Sizes()
QUICK = Sizes(
    peak_n=256,
    peak_repeats=2,
    train_presets=("tiny",),
    train_batch=4,
    train_src_len=8,
    train_tgt_len=8,
    vocab=256,
    train_warmup=1,
    train_steps=1,
    decode_preset="tiny",
    decode_batch=4,
    decode_src_len=(5, 8),
    decode_steps=4,
    decode_repeats=1,
    opus_mt_overrides=(
        ("d_model", 32),
        ("encoder_layers", 1),
        ("decoder_layers", 1),
        ("encoder_attention_heads", 2),
        ("decoder_attention_heads", 2),
        ("encoder_ffn_dim", 64),
        ("decoder_ffn_dim", 64),
        ("vocab_size", 257),
        ("decoder_vocab_size", 257),
        ("pad_token_id", 256),  # <pad> last, as in OPUS-MT's vocabularies
        ("decoder_start_token_id", 256),
    ),
    bert_batch=2,
    bert_len=16,
    bert_repeats=1,
)


# ---- device ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Device:
    """Where the suite runs and how: float32 on CPU, bf16 autocast on a CUDA GPU."""

    torch_device: torch.device
    threads: int

    @property
    def is_cuda(self) -> bool:
        return self.torch_device.type == "cuda"

    @property
    def precision(self) -> str:
        return "bf16 autocast" if self.is_cuda else "float32"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast on GPU for every PyTorch system (qkv and the baselines alike); nothing on CPU."""
        if self.is_cuda:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def sync(self) -> None:
        if self.is_cuda:
            torch.cuda.synchronize(self.torch_device)

    def ctranslate2_options(self) -> dict[str, str]:
        """Where and in what precision CTranslate2 runs: bfloat16 on a GPU, float32 on the CPU."""
        if self.is_cuda:
            return {"device": "cuda", "compute_type": "bfloat16"}
        return {"device": "cpu", "compute_type": "float32"}

    def thread_options(self) -> list[int]:
        """Thread counts every system is timed at (its best is kept): 1 and all of them on a CPU (on 2
        cores a single-sentence step is too small to split, and CTranslate2 runs 2x faster on one thread
        here); the GPU needs no choice."""
        return [self.threads] if self.is_cuda else sorted({1, self.threads})

    def name(self) -> str:
        if self.is_cuda:
            return torch.cuda.get_device_name(self.torch_device)
        return cpu_model()


def pick_device(name: str, threads: int) -> Device:
    """``auto``: the first CUDA GPU if torch sees one, else the CPU. ``cuda`` without a GPU falls back too."""
    if threads > 0:
        torch.set_num_threads(threads)
    if name in ("auto", "cuda") and torch.cuda.is_available():
        return Device(torch.device("cuda", 0), torch.get_num_threads())
    if name == "cuda":
        print("--device cuda: no CUDA device is visible to torch; running on the CPU")
    return Device(torch.device("cpu"), torch.get_num_threads())


# ---- the machine -------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(name: str) -> str | None:
    try:
        module = importlib.import_module(name)
    except ImportError:
        return None
    return str(getattr(module, "__version__", "?"))


def machine(device: Device) -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": device.threads,
        "device": str(device.torch_device),
        "device_name": device.name(),
        "precision": device.precision,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": package_version("transformers"),
        "ctranslate2": package_version("ctranslate2"),
        "platform": platform.platform(),
    }
    if device.is_cuda:
        info["cuda"] = torch.version.cuda
    return info


# ---- timing ------------------------------------------------------------------------------------------------
def best_time(run: Callable[[], object], device: Device, *, repeats: int, warmup: int = 1) -> float:
    """The fastest of ``repeats`` timed calls (seconds), after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run()
    device.sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        device.sync()
        best = min(best, time.perf_counter() - start)
    return best


def best_time_over_threads(
    run: Callable[[], object],
    device: Device,
    *,
    repeats: int,
    on_threads: Callable[[int], None] = lambda threads: None,
) -> tuple[float, int]:
    """(fastest time, its thread count) of :func:`best_time` at each of ``device.thread_options()``.

    Before each, torch gets that many threads and ``on_threads`` is told (a CTranslate2 system switches to
    its instance built with that many); torch gets ``device.threads`` back afterwards.
    """
    best, best_threads = float("inf"), device.threads
    for threads in device.thread_options():
        torch.set_num_threads(threads)
        on_threads(threads)
        seconds = best_time(run, device, repeats=repeats)
        if seconds < best:
            best, best_threads = seconds, threads
    torch.set_num_threads(device.threads)
    on_threads(device.threads)
    return best, best_threads


def interleaved_best_times(
    runs: Mapping[str, tuple[Callable[[], object], int]],
    device: Device,
    *,
    repeats: int,
    on_threads: Callable[[int], None] = lambda threads: None,
    warm: bool = False,
) -> dict[str, float]:
    """The fastest of ``repeats`` timed calls of each system, ``{name: (run, threads)}``, the systems taking
    turns within each round, each on its own thread count.

    This project's machine is a shared VM whose speed drifts by 20-30% within minutes; when each system's
    runs come in one block, a slow minute lands on one system only. Taking turns spreads it over all.
    But a turn starts where the last system left the caches: on the Intel Xeon measured 2026-12-05, one
    sentence through qkv ran 8-11% slower right after CTranslate2's turn than after its own run (its weights no
    longer cached; a 10 ms matrix-product burst in between did not help, its own run did). ``warm=True``
    runs each system once more, untimed, right before each timed call: every system is then timed warm.
    """
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, (run, threads) in runs.items():
            torch.set_num_threads(threads)
            on_threads(threads)
            if warm:
                run()
                device.sync()
            start = time.perf_counter()
            run()
            device.sync()
            best[name] = min(best[name], time.perf_counter() - start)
    torch.set_num_threads(device.threads)
    on_threads(device.threads)
    return best


# ---- tables ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    key: str
    label: str
    fmt: str = "{:,.0f}"  # how a value prints
    ratio: bool = False  # add "x best other" beside it


@dataclass
class Table:
    """One section's results: systems (rows) by measurements (columns), with notes and skipped systems."""

    name: str
    title: str
    columns: list[Column]
    rows: dict[str, dict[str, float | None]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # system -> why it did not run
    notes: list[str] = field(default_factory=list)
    # A row that is a mode of another system (e.g. "qkv int8" of "qkv"): system -> that system. Rows of
    # one system are never each other's "other".
    variant_of: dict[str, str] = field(default_factory=dict)

    def ratio(self, system: str, key: str) -> float | None:
        """The row's value over the best value of the other systems' rows (None if either is missing)."""
        value = self.rows[system].get(key)
        family = self.variant_of.get(system, system)
        others = [r.get(key) for s, r in self.rows.items() if self.variant_of.get(s, s) != family]
        best = max((v for v in others if v is not None), default=None)
        if value is None or not best:
            return None
        return value / best

    def render(self) -> str:
        headers = ["system"]
        for c in self.columns:
            headers.append(c.label)
            if c.ratio:
                headers.append("x best other")
        lines: list[list[str]] = []
        for system, values in self.rows.items():
            cells = [system]
            for c in self.columns:
                v = values.get(c.key)
                cells.append("-" if v is None else c.fmt.format(v))
                if c.ratio:
                    r = self.ratio(system, c.key)
                    cells.append("-" if r is None else f"{r:.2f}x")
            lines.append(cells)
        widths = [max(len(row[i]) for row in [headers, *lines]) for i in range(len(headers))]

        def fmt(row: list[str]) -> str:
            first = row[0].ljust(widths[0])
            return "  ".join([first, *(cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True))])

        out = [f"== {self.title}", fmt(headers), "-" * len(fmt(headers))]
        out += [fmt(row) for row in lines]
        out += [f"{system:<{widths[0]}}  skipped: {why}" for system, why in self.skipped.items()]
        out += [f"  {note}" for note in self.notes]
        return "\n".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "columns": [{"key": c.key, "label": c.label} for c in self.columns],
            "rows": {
                system: {
                    **values,
                    **{f"{c.key}_vs_best_other": self.ratio(system, c.key) for c in self.columns if c.ratio},
                }
                for system, values in self.rows.items()
            },
            "skipped": self.skipped,
            "notes": self.notes,
        }


def optional(module: str) -> Any | None:
    """The module if it imports, else None (a baseline that is not installed is skipped, with a note)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hugging Face's progress bars and warnings would interleave with the tables."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    transformers = optional("transformers")
    if transformers is not None:
        transformers.logging.set_verbosity_error()
        with contextlib.suppress(AttributeError):
            transformers.utils.logging.disable_progress_bar()
    yield
