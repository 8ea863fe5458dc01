"""Hashes of what qkv translates, to show that a change to the code changed no output.

``python -m benchmarks.translation_hashes --models DIR`` trains three small models into DIR once (a
demo-corpus Transformer, a non-autoregressive model started from it, and a pre-LN Transformer on the
Tatoeba cmn-eng training split when ``../shared/data`` is there), then translates the demo corpus's
held-out sentences and the cmn-eng dev sources with every decoding path through ``qkv translate``
(greedy, beam 4, int8, batch size 1, mask-predict, length beam, adaptive, teacher rescoring) and prints
one sha256 per path as JSON.

Run it from two trees on the same DIR (``PYTHONPATH=OLD/src`` and ``PYTHONPATH=NEW/src``): the models
are trained by whichever runs first and only read afterwards, so equal hashes mean equal translations.
``--compare A.json B.json`` prints the paths whose hashes differ and exits 1 if any does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

CMN_ENG = Path(__file__).resolve().parents[2] / "shared" / "data" / "cmn-eng"
STEPS = 400


def _qkv(*args: str, stdin: Path | None = None) -> bytes:
    """Run ``python -m qkv ARGS`` in this interpreter's environment; its stdout."""
    with open(stdin, "rb") if stdin is not None else open(os.devnull, "rb") as source:
        done = subprocess.run(
            [sys.executable, "-m", "qkv", *args], stdin=source, capture_output=True, check=False
        )
    if done.returncode != 0:
        raise SystemExit(f"qkv {' '.join(args)} failed:\n{done.stderr.decode(errors='replace')}")
    return done.stdout


def _train(models: Path) -> None:
    """The three models and the two inputs, made once."""
    models.mkdir(parents=True, exist_ok=True)
    # The demo's schedule (qkv demo): with the default warm-up, 400 steps leave a model that repeats one
    # token, and outputs that cannot differ say nothing.
    common = ("--max-steps", str(STEPS), "--lr", "2e-3", "--warmup", "100", "--threads", "2", "--seed", "1")
    if not (models / "demo-at").exists():
        _qkv("train", "--preset", "tiny", "--out", str(models / "demo-at"), *common)
    if not (models / "demo-nat").exists():
        _qkv(
            "train", "--model-type", "nat", "--init-from", str(models / "demo-at"),
            "--out", str(models / "demo-nat"), *common,
        )  # fmt: skip
    if CMN_ENG.is_dir() and not (models / "cmn-at").exists():
        _qkv(
            "train", "--data", str(CMN_ENG / "train.tsv"), "--src-col", "2", "--tgt-col", "1",
            "--preset", "tiny", "--pre-ln", "--vocab-size", "4000", "--out", str(models / "cmn-at"), *common,
        )  # fmt: skip
    demo_src = models / "demo.src"
    if not demo_src.exists():
        from qkv.data import demo

        _, held_out = demo.splits(seed=0)
        demo_src.write_text("".join(src + "\n" for src, _ in held_out), encoding="utf-8")
    cmn_src = models / "cmn.src"
    if CMN_ENG.is_dir() and not cmn_src.exists():
        lines = (CMN_ENG / "dev.tsv").read_text(encoding="utf-8").splitlines()
        cmn_src.write_text("".join(line.split("\t")[1] + "\n" for line in lines[:400]), encoding="utf-8")


def _first_lines(path: Path, count: int) -> Path:
    out = path.with_name(f"{path.stem}-first{count}{path.suffix}")
    if not out.exists():
        out.write_text("".join(path.read_text(encoding="utf-8").splitlines(keepends=True)[:count]), "utf-8")
    return out


def hashes(models: Path) -> dict[str, str]:
    """sha256 of each decoding path's output, by path name."""
    _train(models)
    at, nat, cmn = (str(models / name) for name in ("demo-at", "demo-nat", "cmn-at"))
    demo_src, cmn_src = models / "demo.src", models / "cmn.src"
    runs: dict[str, tuple[tuple[str, ...], Path]] = {
        "demo greedy": (("--model", at, "--beam", "1"), demo_src),
        "demo beam 4": (("--model", at, "--beam", "4"), demo_src),
        "demo int8 greedy": (("--model", at, "--beam", "1", "--int8"), demo_src),
        "demo int8 beam 4": (("--model", at, "--beam", "4", "--int8"), demo_src),
        "demo batch 1 greedy": (
            ("--model", at, "--beam", "1", "--batch-size", "1"),
            _first_lines(demo_src, 60),
        ),
        "demo batch 1 beam 4": (
            ("--model", at, "--beam", "4", "--batch-size", "1"),
            _first_lines(demo_src, 60),
        ),
        "nat single pass": (("--model", nat, "--iterations", "1"), demo_src),
        "nat mask-predict 4 lb 3": (("--model", nat, "--iterations", "4", "--length-beam", "3"), demo_src),
        "nat mask-predict 10 adaptive": (("--model", nat, "--iterations", "10", "--adaptive"), demo_src),
        "nat int8 mask-predict 4": (("--model", nat, "--iterations", "4", "--int8"), demo_src),
        "nat lb 3 + AT rescoring": (
            ("--model", nat, "--iterations", "2", "--length-beam", "3", "--rescore-model", at),
            demo_src,
        ),
        "nat batch 1 mask-predict 4 lb 3": (
            ("--model", nat, "--iterations", "4", "--length-beam", "3", "--batch-size", "1"),
            _first_lines(demo_src, 60),
        ),
    }
    if (models / "cmn-at").exists():
        runs |= {
            "cmn-eng greedy": (("--model", cmn, "--beam", "1"), cmn_src),
            "cmn-eng beam 4": (("--model", cmn, "--beam", "4"), cmn_src),
            "cmn-eng int8 beam 4": (("--model", cmn, "--beam", "4", "--int8"), cmn_src),
            "cmn-eng batch 1 beam 4": (
                ("--model", cmn, "--beam", "4", "--batch-size", "1"),
                _first_lines(cmn_src, 60),
            ),
        }
    found = {}
    for name, (args, source) in runs.items():
        output = _qkv("translate", *args, stdin=source)
        found[name] = hashlib.sha256(output).hexdigest()
        print(f"{name:34} {found[name][:16]}  ({len(output.splitlines())} lines)", file=sys.stderr)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=Path, default=Path("runs/translation-hashes"))
    parser.add_argument("--json", type=Path, help="also write the hashes to this file")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"), help="compare two --json files")
    args = parser.parse_args(argv)
    if args.compare:
        a, b = (json.loads(p.read_text(encoding="utf-8")) for p in args.compare)
        differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        for name in differ:
            print(f"differs: {name}")
        print(f"{len(a.keys() & b.keys()) - len(differ)} paths equal, {len(differ)} differ")
        return 1 if differ else 0
    found = hashes(args.models)
    text = json.dumps(found, indent=1, sort_keys=True)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
