"""Makes docs/budget-lr.png: the learning rate and the loss of budgeted runs, drawn from their metrics.jsonl.

    qkv train ... --max-minutes 44 --out runs/zh-en        # the recipe of docs/real-data.md
    .venv/bin/python docs/make_lr_plot.py runs/zh-en-10 runs/zh-en --out docs/budget-lr.png

Each run is one colour: its learning rate per logged step (left axis), its dev NLL at each validation
(right panel), and a dot where it planned its step count (the ``planned_steps`` record).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def records(run: Path) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (qkv train --out)")
    parser.add_argument("--out", type=Path, default=Path("docs/budget-lr.png"))
    args = parser.parse_args()

    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 3.6), layout="constrained")
    lr_axes, nll_axes = figure.subplots(1, 2)
    for colour, run in zip(("tab:blue", "tab:orange", "tab:green", "tab:red"), args.runs, strict=False):
        rows = records(run)
        steps = [r for r in rows if "lr" in r]
        plan = next((r for r in rows if "planned_steps" in r), None)
        label = run.name + (f" ({plan['budget_minutes']:g} min)" if plan else "")
        lr_axes.plot([r["step"] for r in steps], [r["lr"] for r in steps], color=colour, label=label)
        if plan is not None:
            at = next(r["lr"] for r in steps if r["step"] >= plan["step"])
            lr_axes.plot([plan["step"]], [at], "o", color=colour)
            lr_axes.annotate(
                f"plan: {plan['planned_steps']:,} steps",
                (plan["step"], at),
                textcoords="offset points",
                xytext=(6, -12),
                fontsize=8,
                color=colour,
            )
        valid = [r for r in rows if "valid_nll" in r]
        nll_axes.plot(
            [r["step"] for r in valid], [r["valid_nll"] for r in valid], "o-", color=colour, label=label
        )
    lr_axes.set(
        xlabel="step", ylabel="learning rate", title="learning rate (decays to 0 at the planned step)"
    )
    nll_axes.set(xlabel="step", ylabel="dev NLL (nats/token)", title="dev loss")
    lr_axes.legend(fontsize=8)
    nll_axes.legend(fontsize=8)
    figure.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
