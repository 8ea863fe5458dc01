"""The benchmark suite runs end to end at --quick sizes and writes its JSON (a smoke test: no timings checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_quick_suite_prints_every_table_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for title in (
        "peak matmul rate",
        "training step",
        "decoding, preset",
        "decoding, OPUS-MT shape",
        "BERT encoder forward",
    ):
        assert title in done.stdout
    result = json.loads(out.read_text())
    assert result["machine"]["device"] == "cpu" and result["machine"]["cores"] >= 1
    sections = result["sections"]
    assert set(sections) == {"peak", "train", "decode", "decode-opus", "bert"}
    assert "qkv" in sections["train"]["rows"] and "qkv" in sections["decode"]["rows"]
    qkv_train = sections["train"]["rows"]["qkv"]
    assert qkv_train["tiny_tok_s"] > 0 and 0 < qkv_train["tiny_mfu"]
    # The three decoders run the same weights: greedy outputs agree wherever a baseline ran, in both shapes.
    for section in ("decode", "decode-opus"):
        assert set(sections[section]["rows"]) >= {"qkv"}
        for system, row in sections[section]["rows"].items():
            if system != "qkv":
                assert row["agree"] == 1.0, (section, system)


def test_opus_mt_shape_is_the_issues_and_only_quick_shrinks_it() -> None:
    """The decode-opus model as OPUS-MT models are (6+6 layers, d_model 512, 8 heads, FFN 2048, 65,001 shared
    tokens with </s> 0, <unk> 1 and <pad> last, decoding from <pad>, swish, Marian's sinusoids, scaled
    embeddings, a logits bias); --quick keeps everything but the sizes."""
    from benchmarks.common import FULL, QUICK
    from benchmarks.decode import opus_mt_shape

    full = opus_mt_shape(FULL).config
    assert (full.encoder_layers, full.decoder_layers, full.d_model, full.heads, full.d_ff) == (
        6,
        6,
        512,
        8,
        2048,
    )
    assert full.src_vocab_size == full.tgt_vocab_size == 65001 and full.share_embeddings and full.tie_output
    assert (full.eos_id, full.pad_id, full.bos_id) == (0, 65000, 65000)
    assert full.activation == "silu" and full.sinusoid_layout == "halves"
    assert full.scale_embedding and full.logits_bias and not full.norm_first and full.dropout == 0.0
    quick = opus_mt_shape(QUICK).config
    assert quick.d_model < full.d_model and quick.tgt_vocab_size < full.tgt_vocab_size
    assert quick.pad_id == quick.bos_id == quick.tgt_vocab_size - 1 and quick.eos_id == 0
    kept = (
        "activation",
        "sinusoid_layout",
        "scale_embedding",
        "logits_bias",
        "share_embeddings",
        "norm_first",
    )
    assert all(getattr(quick, name) == getattr(full, name) for name in kept)


def test_only_runs_one_decoding_shape(tmp_path: Path) -> None:
    out = tmp_path / "opus.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "decode-opus", "--device", "cpu",
         "--threads", "1", "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert set(json.loads(out.read_text())["sections"]) == {"decode-opus"}


def test_only_rejects_an_unknown_section() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--only", "train,nonsense"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "nonsense" in done.stderr


def test_interleaved_best_times_takes_turns_on_each_systems_threads() -> None:
    """One call of each system per round, each on its own thread count; the best is each one's fastest."""
    import torch

    from benchmarks.common import interleaved_best_times, pick_device

    device = pick_device("cpu", 2)
    calls: list[tuple[str, int]] = []

    def system(name: str) -> object:
        return lambda: calls.append((name, torch.get_num_threads()))

    best = interleaved_best_times({"a": (system("a"), 1), "b": (system("b"), 2)}, device, repeats=3)
    assert calls == [("a", 1), ("b", 2)] * 3
    assert set(best) == {"a", "b"} and all(0 < seconds < 1 for seconds in best.values())
    assert torch.get_num_threads() == device.threads  # given back

    # warm=True: each system runs twice in a row in its turn and only the second call is timed. A system
    # whose odd-numbered calls are slow (a cold start) is then timed on its fast even-numbered ones.
    calls.clear()

    def cold_first(name: str) -> object:
        def run() -> None:
            calls.append((name, torch.get_num_threads()))
            if sum(1 for called, _ in calls if called == name) % 2 == 1:
                time.sleep(0.05)

        return run

    systems = {"a": (cold_first("a"), 1), "b": (cold_first("b"), 2)}
    best = interleaved_best_times(systems, device, repeats=2, warm=True)
    assert calls == [("a", 1), ("a", 1), ("b", 2), ("b", 2)] * 2
    assert all(seconds < 0.04 for seconds in best.values())
    calls.clear()
    cold = interleaved_best_times(systems, device, repeats=1)  # the same systems, not warmed: slow
    assert all(seconds >= 0.05 for seconds in cold.values())


def test_nat_rows_take_turns_batch_by_batch_and_score_each_system() -> None:
    """With turns no longer than a batch, the NAT benchmark runs every system on sentences 0-1, then
    every system on 2-3, ...; each row is scored on that system's own outputs."""
    from benchmarks.nat import run_rows

    calls: list[tuple[str, tuple[str, ...]]] = []

    class Echo:  # a Translator's interface: batch_size and translate(texts)
        def __init__(self, name: str, wrong: set[str]) -> None:
            self.name, self.wrong, self.batch_size = name, wrong, 0

        def translate(self, texts: list[str]) -> list[str]:
            calls.append((self.name, tuple(texts)))
            return ["?" if t in self.wrong else t.upper() for t in texts]

    sources = ["a", "b", "c", "d", "e"]
    refs = [s.upper() for s in sources]
    systems = [("AT", "greedy", Echo("at", set())), ("NAT", "single pass", Echo("nat", {"c"}))]
    rows = run_rows(systems, sources, refs, batch=2, turn=1)  # type: ignore[arg-type]
    timed = calls[2:]  # after one warm-up call each
    assert timed == [
        ("at", ("a", "b")), ("nat", ("a", "b")), ("at", ("c", "d")), ("nat", ("c", "d")),
        ("at", ("e",)), ("nat", ("e",)),
    ]  # fmt: skip
    assert [(r.system, r.batch) for r in rows] == [("AT", 2), ("NAT", 2)]
    assert rows[0].exact == 1.0 and rows[1].exact == 0.8
    assert all(r.sent_per_s > 0 for r in rows)


def test_nat_rows_take_turns_of_several_batches() -> None:
    """A turn of 4 sentences at batch 2: each system gets sentences 0-3 in one call (its translator
    batches them by two), then 4; the default turn is at least as long as a batch."""
    from benchmarks.nat import DEFAULT_TURN, run_rows

    calls: list[tuple[str, int, tuple[str, ...]]] = []

    class Echo:
        def __init__(self, name: str) -> None:
            self.name, self.batch_size = name, 0

        def translate(self, texts: list[str]) -> list[str]:
            calls.append((self.name, self.batch_size, tuple(texts)))
            return list(texts)

    sources = ["a", "b", "c", "d", "e"]
    systems = [("AT", "greedy", Echo("at")), ("NAT", "single pass", Echo("nat"))]
    rows = run_rows(systems, sources, sources, batch=2, turn=4)  # type: ignore[arg-type]
    assert calls[2:] == [
        ("at", 2, ("a", "b", "c", "d")), ("nat", 2, ("a", "b", "c", "d")), ("at", 2, ("e",)), ("nat", 2, ("e",)),
    ]  # fmt: skip
    assert all(r.exact == 1.0 for r in rows)
    calls.clear()
    run_rows(systems, sources, sources, batch=1)  # type: ignore[arg-type]
    assert DEFAULT_TURN >= 32 and calls[2:] == [("at", 1, tuple(sources)), ("nat", 1, tuple(sources))]


def test_nat_benchmark_rejects_an_empty_turn(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.nat import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--demo", "--turn", "0"])
    assert exit_info.value.code == 2
    assert "--turn 0" in capsys.readouterr().err


def test_nat_data_check_needs_one_row_both_close_and_faster(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.nat import Row, data_checks

    def row(system: str, decoder: str, bleu: float, sent_per_s: float, batch: int = 1) -> Row:
        return Row(system, decoder, batch, bleu, 0.0, 0.0, sent_per_s, 1.0, sent_per_s / 100.0)

    at = row("AT", "greedy", 34.0, 100.0)
    fast_but_poor = row("NAT", "single pass", 28.0, 390.0)
    close_but_slow = row("NAT", "mask-predict 4, lb 3 + AT", 33.5, 60.0)
    # Batch 32 rows and other systems do not count, however good.
    others = [row("NAT", "mask-predict 2", 33.0, 500.0, batch=32), row("AT 6+1", "greedy", 33.0, 150.0)]
    assert not data_checks([at, fast_but_poor, close_but_slow, *others])
    out = capsys.readouterr().out
    assert "FAIL" in out and "mask-predict 4, lb 3 + AT: BLEU -0.50, 0.60x" in out
    assert "single pass: BLEU -6.00, 3.90x" in out

    on_the_edge = row("NAT", "mask-predict 2, lb 3", 31.0, 101.0)  # exactly 3 BLEU below, a little faster
    assert data_checks([at, fast_but_poor, on_the_edge, close_but_slow])
    out = capsys.readouterr().out
    assert "PASS" in out and "mask-predict 2, lb 3: BLEU -3.00, 1.01x" in out and "single pass" not in out
    assert not data_checks([at, row("NAT", "mask-predict 2", 31.0, 100.0)])  # as fast is not faster


@pytest.mark.parametrize("adaptive", [True, False])
def test_nat_benchmark_adds_adaptive_mask_predict_rows_from_three_passes(
    monkeypatch: pytest.MonkeyPatch, adaptive: bool
) -> None:
    """Which systems the NAT benchmark runs: adaptive variants of every mask-predict row with K >= 3
    (with K = 2 nothing follows the one refinement), each Translator set as its name says."""
    from types import SimpleNamespace

    import benchmarks.nat as nat_bench
    from qkv.config import NATConfig, preset
    from qkv.models.nat import NATransformer
    from qkv.models.seq2seq import Transformer
    from qkv.translator import Translator

    at = Transformer(preset("tiny", 29, dropout=0.0))
    nat = NATransformer(NATConfig.from_dict(preset("tiny", 29, dropout=0.0).to_dict()))  # type: ignore[arg-type]
    loaded = {"at": at, "nat": nat}
    monkeypatch.setattr(
        nat_bench.saved,
        "load",
        lambda d: SimpleNamespace(model=loaded[d], src_tokenizer=None, tgt_tokenizer=None),
    )
    seen: list[tuple[str, str, object]] = []

    def run_rows(
        systems: list[tuple[str, str, object]], *args: object, **kwargs: object
    ) -> list[nat_bench.Row]:
        seen.extend(systems)
        return [nat_bench.Row(s, d, 1, 0.0, 0.0, 0.0, 1.0, 1.0) for s, d, _ in systems]

    monkeypatch.setattr(nat_bench, "run_rows", run_rows)
    monkeypatch.setattr(nat_bench, "length_accuracy", lambda *args: {})
    nat_bench.benchmark("at", "nat", None, ["a"], ["b"], batches=[1], iterations=[1, 2, 4], length_beam=3,
                        adaptive=adaptive)  # fmt: skip
    names = [decoder for _, decoder, _ in seen]
    with_k4 = [
        "mask-predict 4 adaptive",
        "mask-predict 4 adaptive, lb 3",
        "mask-predict 4 adaptive, lb 3 + AT",
    ]
    assert all((name in names) == adaptive for name in with_k4)
    assert not any("2 adaptive" in name for name in names)
    for _, decoder, translator in seen:
        assert isinstance(translator, Translator)
        assert translator.adaptive == ("adaptive" in decoder)
        if decoder.startswith("mask-predict"):
            assert translator.iterations == int(decoder.split()[1].rstrip(","))
            assert (translator.teacher is not None) == decoder.endswith("+ AT")


def test_one_sentence_floor_rows(tmp_path: Path) -> None:
    """benchmarks/one_sentence.py: every row timed (HF where transformers is installed), ratios to HF, the
    3x-HF budget named."""
    from benchmarks.one_sentence import main

    out = tmp_path / "one.json"
    assert main(["--quick", "--threads", "1", "--json", str(out)]) == 0
    table = json.loads(out.read_text())["table"]
    rows = table["rows"]
    assert {"qkv decode()", "qkv steps", "products only", "weights read once"} <= set(rows)
    for row in rows.values():
        assert row["ms"] > 0 and abs(row["tok_s"] * row["ms"] - 1e3) < 1e-6
    if "HF generate()" in rows:
        hf = rows["HF generate()"]["ms"]
        assert all(abs(r["x_hf"] - hf / r["ms"]) < 1e-9 for r in rows.values())
        assert any("3x HF leaves" in note for note in table["notes"])


def test_one_sentence_refuses_zero_rounds(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.one_sentence import main

    with pytest.raises(SystemExit) as stopped:
        main(["--repeats", "0"])
    assert stopped.value.code == 2 and "--repeats 0" in capsys.readouterr().err


def test_attention_kernels_times_both_ways_at_every_shape(capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/attention_kernels.py: one row per shape, both ways timed, and the way products_win takes."""
    from benchmarks.attention_kernels import SHAPES, main

    main(["--repeats", "1", "--threads", "1"])
    rows = capsys.readouterr().out.splitlines()[1:]
    assert len(rows) == len(SHAPES)
    for row, (what, batch, q_len, k_len, _) in zip(rows, SHAPES, strict=True):
        *_, products_ms, fused_ms, pick = row.split()
        assert row.startswith(what) and f"{batch} x {q_len} x {k_len}" in row
        assert float(products_ms) > 0 and float(fused_ms) > 0 and pick in ("products", "fused")
