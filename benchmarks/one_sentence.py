"""One sentence, greedy: where a token's time goes, and the floor under it.

The speed issue's batch-1 bar is "one sentence greedy >= 3x Hugging Face generate()". This script times,
in one run and taking turns (:func:`~benchmarks.common.interleaved_best_times`, each row run once more
untimed right before its timed call, so that it is timed with its own weights in the caches, as when it
serves alone), the same ``small`` model (random weights, vocab 8000, one source of 20 tokens, exactly 32
decoder steps) as:

=====================  ======================================================================================
row                    what runs
=====================  ======================================================================================
HF generate()          MarianMTModel on the exported weights (the bar's baseline), 32 new tokens
CTranslate2            CTranslate2 on the exported weights, 32 steps, in its own process stopped outside its
                       turns (:mod:`benchmarks.ct2_worker`), at its best thread count: the C++ engine
qkv decode()           what users run: the encoder, 32 steps, greedy search (``qkv.decode``)
qkv steps              ``StepDecoder.step`` 32 times (plus its log-softmax): no encoder, no search
products only          the step's 19 weight products (StepDecoder's own, W_Q W_K W_V ... the output
                       projection) back to back, 32 times: nothing else
weights read once      summing the 19 products' weights (19 MB at ``small``, one contiguous copy), 32
                       times: what reading them costs at this machine's memory bandwidth
=====================  ======================================================================================

Every row prints ms a token, tokens/s and its ratio to HF, and the table's last note says what the bar
leaves: HF's time a token / 3. A row whose time is above that budget cannot meet the bar whatever runs
around it. (The step's operators compiled by ``torch.compile`` ran no faster than the step itself:
docs/performance-history.md.)

    .venv/bin/python -m benchmarks.one_sentence --threads 2   # about a minute
    .venv/bin/python -m benchmarks.one_sentence --quick       # tiny sizes: a smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from benchmarks.common import (
    Column,
    Device,
    Table,
    best_time_over_threads,
    interleaved_best_times,
    machine,
    optional,
    pick_device,
    quiet_transformers,
)
from qkv.config import preset
from qkv.decode import Lengths, SearchConfig, decode
from qkv.decode.step import CachedState, CachedStepper
from qkv.infer.stacks import StepDecoder, step_decoder
from qkv.models.seq2seq import Transformer


def _products(decoder: StepDecoder) -> list[Callable[[Tensor], Tensor]]:
    """The step's weight products in the order a step runs them (cross K/V excluded: once per sentence)."""
    found: list[Callable[[Tensor], Tensor]] = []
    for ops in decoder.layers:
        found += [ops.self_qkv, ops.self_out, ops.cross_q, ops.cross_out, ops.fc_in, ops.fc_out]  # type: ignore[list-item]
    return [*found, decoder.output]


def _weights(model: Transformer) -> list[Tensor]:
    """The weights the step's products read (the same set as :func:`_products`)."""
    found: list[Tensor] = []
    for layer in model.decoder:
        a, c, f = layer.self_attn, layer.cross_attn, layer.ffn
        for linear in (a.q_proj, a.k_proj, a.v_proj, a.out_proj, c.q_proj, c.out_proj, f.fc_in, f.fc_out):
            found.append(linear.weight.detach())
    output = model.output_proj if model.output_proj is not None else model.tgt_embed
    return [*found, output.weight.detach()]


def run(*, preset_name: str, vocab: int, steps: int, repeats: int, device: Device) -> Table:
    config = preset(preset_name, vocab, dropout=0.0)
    torch.manual_seed(0)
    model = Transformer(config).eval()
    generator = torch.Generator().manual_seed(1)
    source = torch.randint(4, vocab, (20,), generator=generator).tolist() + [config.eos_id]
    src_ids = torch.tensor([source])
    bos = torch.full((1, 1), config.bos_id)
    runs: dict[str, tuple[Callable[[], object], int]] = {}  # name -> (run, its threads)
    table = Table(
        "one_sentence",
        f"one sentence, greedy, preset {preset_name} (random init), vocab {vocab}, source 20 tokens, exactly "
        f"{steps} decoder steps, float32, {device.threads} threads, best of {repeats} (the rows taking turns)",
        [
            Column("ms", "ms/token", "{:.3f}"),
            Column("tok_s", "tok/s", "{:,.0f}"),
            Column("x_hf", "x HF", "{:.2f}x"),
        ],
    )

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as cleanup:  # cleanup: before tmp goes
        # -- HF generate(), on the exported weights (as in benchmarks/decode.py) -------------------------
        from benchmarks.decode import _hf_model  # the same export and loading as the decode section

        hf = _hf_model(model, Path(tmp) / "marian", device) if optional("transformers") else None
        if hf is None:
            table.skipped["HF generate()"] = "transformers is not installed (pip install -e '.[bench]')"
        else:
            ids, mask = src_ids, torch.ones_like(src_ids)

            def hf_run() -> object:
                with torch.inference_mode():
                    return hf.generate(
                        input_ids=ids,
                        attention_mask=mask,
                        do_sample=False,
                        num_beams=1,
                        min_new_tokens=steps,
                        max_new_tokens=steps,
                        forced_eos_token_id=None,
                    )

            runs["HF generate()"] = (hf_run, device.threads)

        # -- CTranslate2 on the same weights, in its own stopped process (as in benchmarks/decode.py) -----
        from benchmarks.decode import _ct2_worker, _vocabulary

        vocabulary = _vocabulary(vocab)
        ct2, missing = _ct2_worker(
            model, vocabulary, Path(tmp) / "ct2", device, device.thread_options(), {"one": [source]}
        )
        if ct2 is None:
            table.skipped["CTranslate2"] = missing or "not available"
        else:
            cleanup.callback(ct2.close)
            ct2_threads = [device.threads]  # which of the worker's translators runs

            def ct2_run() -> object:
                assert ct2 is not None
                return ct2.call("translate", "one", ct2_threads[0], 1, steps)

            # At its best thread count, as in the suite (benchmarks/decode.py): on the Xeon measured
            # 2026-12-05 one thread; its two-thread translator, called twice in a row (a warm turn), ran ~4x slower.
            _, best_threads = best_time_over_threads(
                ct2_run, device, repeats=3, on_threads=lambda threads: ct2_threads.__setitem__(0, threads)
            )
            ct2_threads[0] = best_threads
            runs[f"CTranslate2 ({best_threads} thread{'s' if best_threads > 1 else ''}, its best)"] = (
                ct2_run,
                best_threads,
            )

        # -- qkv decode(): the whole of it ------------------------------------------------------------
        greedy = SearchConfig(
            method="greedy", lengths=Lengths(min_len=steps - 1, max_len_a=0.0, max_len_b=steps - 1)
        )

        def qkv_decode() -> object:
            found = decode(model, [source], greedy)
            if len(found[0][0].tokens) != steps - 1:
                raise RuntimeError(f"qkv: expected {steps - 1} tokens + </s>, got {len(found[0][0].tokens)}")
            return found

        runs["qkv decode()"] = (qkv_decode, device.threads)

        # -- qkv steps: StepDecoder.step and its log-softmax, no search ---------------------------------
        stepper = CachedStepper(model)
        with torch.inference_mode():
            first: CachedState = stepper.encode(src_ids)

        def qkv_steps() -> object:
            with torch.inference_mode():
                state = CachedState(first.encoded, model.new_cache())
                for _ in range(steps):
                    log_probs, state = stepper.step(bos, state)
            return log_probs

        runs["qkv steps"] = (qkv_steps, device.threads)

        # -- products only, and the weights read once ---------------------------------------------------
        decoder = step_decoder(model, 1)
        products = _products(decoder)
        inputs = {width: torch.randn(1, width) for width in (config.d_model, config.d_ff)}
        d, d_ff = config.d_model, config.d_ff
        widths = [d, d, d, d, d, d_ff] * len(decoder.layers) + [d]  # each product's input width, in order

        def products_only() -> object:
            with torch.inference_mode():
                for _ in range(steps):
                    for product, width in zip(products, widths, strict=True):
                        out = product(inputs[width])
            return out

        runs["products only"] = (products_only, device.threads)
        weights = _weights(model)
        flat = torch.cat([w.reshape(-1) for w in weights])  # one contiguous copy: one pass, no per-call cost
        megabytes = flat.numel() * flat.element_size() / 1e6

        def weights_once() -> object:
            with torch.inference_mode():
                return [flat.sum() for _ in range(steps)]

        runs["weights read once"] = (weights_once, device.threads)

        best = interleaved_best_times(runs, device, repeats=repeats, warm=True)  # each row timed warm
    hf_ms = best["HF generate()"] / steps * 1e3 if "HF generate()" in best else None
    for name, seconds in best.items():
        ms = seconds / steps * 1e3
        table.rows[name] = {"ms": ms, "tok_s": 1e3 / ms, "x_hf": None if hf_ms is None else hf_ms / ms}
    table.notes.append(
        f"products: the step's {len(products)} weight products, {megabytes:.1f} MB of float32 weights"
    )
    if hf_ms is not None:
        budget = hf_ms / 3
        over = [
            name for name, row in table.rows.items() if name != "HF generate()" and (row["ms"] or 0) > budget
        ]
        table.notes.append(
            f"3x HF leaves {budget:.3f} ms a token for everything; above it: {'; '.join(over) or 'none'}"
        )
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=10, help="best of this many rounds (default 10)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 rounds: a smoke test")
    parser.add_argument("--json", type=Path, help="also write the table and the machine here")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: at least one round is needed")
    device = pick_device("cpu", args.threads)
    preset_name, vocab, steps, repeats = (
        ("tiny", 256, 4, 2) if args.quick else ("small", 8000, 32, args.repeats)
    )
    with quiet_transformers():
        table = run(
            preset_name=preset_name,
            vocab=vocab,
            steps=steps,
            repeats=repeats,
            device=device,
        )
    print(table.render())
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine(device), "table": table.to_dict()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
