"""What a run reports as it trains: a progress bar and one line per validation on the console, and every
record in ``metrics.jsonl`` (one JSON object a line) and, when the tensorboard package is installed, in
TensorBoard's event files under ``tensorboard/``.

Only rank 0 reports; on the other ranks of a ``torchrun`` job the bar is hidden and nothing is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm import tqdm


class RunLog:
    """The console and the metric files of the run in ``run_dir``; ``progress=False`` keeps the console
    quiet (the files are still written)."""

    def __init__(self, run_dir: Path, *, rank: int, progress: bool) -> None:
        self.run_dir = run_dir
        self.rank = rank
        self.progress = progress

    def progress_bar(self, total: int | None, initial: int) -> tqdm[Any]:
        """A bar counting optimizer steps, from ``initial`` (a resumed run's step) to ``total``, if known."""
        return tqdm(
            total=total,
            initial=initial,
            disable=not self.progress or self.rank != 0,
            unit="step",
            dynamic_ncols=True,
            desc="train",
        )

    def training(self, record: dict[str, Any], bar: tqdm[Any]) -> None:
        """A training record (loss, nll, lr, tokens_per_s, ...): on the bar, and into the files."""
        bar.set_postfix(
            loss=f"{record['loss']:.3f}",
            lr=f"{record['lr']:.2e}",
            tok_s=f"{record['tokens_per_s']:.0f}",
        )
        self.write(record)

    def validation(self, metrics: dict[str, Any]) -> None:
        """A validation's metrics: into the files, and one line on the console."""
        self.write(metrics)
        if self.progress:
            tqdm.write(
                "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
            )

    def note(self, message: str) -> None:
        """A line on the console (rank 0, unless quiet)."""
        if self.progress and self.rank == 0:
            tqdm.write(message)

    def write(self, record: dict[str, Any]) -> None:
        """Append a record to metrics.jsonl and, when TensorBoard is installed, to its event files."""
        if self.rank != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        writer = self._tensorboard()
        if writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    writer.add_scalar(key, value, record["step"])
            writer.flush()

    def _tensorboard(self) -> Any:
        if not hasattr(self, "_tb_writer"):
            self._tb_writer: Any = None
            try:
                from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
            except ImportError:
                return None
            self._tb_writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        return self._tb_writer
