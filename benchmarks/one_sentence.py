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
qkv steps              ``FastDecoder.step`` 32 times (plus its log-softmax): no encoder, no search
compiled step          the step's operators written as one function with a static 64-position cache,
                       compiled by ``torch.compile`` (inductor, C++ wrapper): no Python between operators
                       (``--no-compile`` skips it; compiling takes 5-20 s)
products only          the step's 19 weight products (FastDecoder's own, W_Q W_K W_V ... the output
                       projection) back to back, 32 times: nothing else
weights read once      summing the 19 products' weights (19 MB at ``small``, one contiguous copy), 32
                       times: what reading them costs at this machine's memory bandwidth
=====================  ======================================================================================

Every row prints ms a token, tokens/s and its ratio to HF, and the table's last note says what the bar
leaves: HF's time a token / 3. A row whose time is above that budget cannot meet the bar whatever runs
around it. The compiled step is checked against ``FastDecoder.step`` (the same logits) before it is timed.

    .venv/bin/python -m benchmarks.one_sentence --threads 2          # about a minute
    .venv/bin/python -m benchmarks.one_sentence --quick --no-compile  # tiny sizes: a smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
from qkv.decode import decode
from qkv.decode.fast import FastDecoder, fast_decoder
from qkv.decode.step import CachedState, CachedStepper
from qkv.models.seq2seq import Transformer
from qkv.nn.layers import DecoderLayer
from qkv.nn.packed import stack_linears

CAPACITY = 64  # the compiled step's static cache: positions 0 .. CAPACITY - 1


def _products(decoder: FastDecoder) -> list[Callable[[Tensor], Tensor]]:
    """The step's weight products in the order a step runs them (cross K/V excluded: once per sentence)."""
    found: list[Callable[[Tensor], Tensor]] = []
    for layer in decoder.layers:
        found += [layer.self_qkv, layer.self_out, layer.cross_q, layer.cross_out, layer.fc_in, layer.fc_out]
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


def static_step(model: Transformer) -> Callable[..., Tensor]:
    """The decoder step as one plain function over a static cache, for ``torch.compile``.

    ``step(token (1,), position (1,), keys, values, cross_keys, cross_values) -> log-probs (1, vocab)``;
    keys/values: one (1, heads, CAPACITY, d_head) buffer per layer, written at ``position``; cross: one
    (1, heads, src_len, d_head) per layer. The same operators as :class:`~qkv.decode.fast.FastDecoder`
    (fused Q/K/V, Add & Norm written out), positions past ``position`` masked instead of cut off.
    """
    c = model.config
    d, heads = c.d_model, c.heads
    d_head = d // heads
    table = model.positions(CAPACITY, 0).detach().reshape(CAPACITY, d)
    embedding, multiplier = model.tgt_embed.weight.detach(), model.tgt_embed.multiplier
    output = (model.output_proj if model.output_proj is not None else model.tgt_embed).weight.detach()
    final = None if model.decoder_norm is None else model.decoder_norm
    slots = torch.arange(CAPACITY)
    # W_Q, W_K, W_V as one product, as FastDecoder stacks them
    fused_qkv = [
        stack_linears([layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj])
        for layer in model.decoder
    ]

    def norm(h: Tensor, module: nn.Module) -> Tensor:
        return F.layer_norm(h, (d,), module.weight, module.bias, module.eps)

    def layer_step(
        layer: DecoderLayer,
        qkv_weights: tuple[Tensor, Tensor | None],
        h: Tensor,
        position: Tensor,
        allowed: Tensor,
        cache: tuple[Tensor, Tensor, Tensor, Tensor],
    ) -> Tensor:
        keys, values, cross_keys, cross_values = cache

        def self_attention(y: Tensor) -> Tensor:
            qkv = F.linear(y, *qkv_weights).view(1, 3, heads, 1, d_head)
            keys.index_copy_(2, position, qkv[:, 1])
            values.index_copy_(2, position, qkv[:, 2])
            context = F.scaled_dot_product_attention(qkv[:, 0], keys, values, attn_mask=allowed)
            return layer.self_attn.out_proj(context.reshape(1, d))  # type: ignore[no-any-return]

        def cross_attention(y: Tensor) -> Tensor:
            q = layer.cross_attn.q_proj(y).view(1, heads, 1, d_head)
            context = F.scaled_dot_product_attention(q, cross_keys, cross_values)
            return layer.cross_attn.out_proj(context.reshape(1, d))  # type: ignore[no-any-return]

        def feed_forward(y: Tensor) -> Tensor:
            hidden = layer.ffn.fc_in(y)
            hidden = F.gelu(hidden) if layer.ffn.activation == "gelu" else torch.relu(hidden)
            return layer.ffn.fc_out(hidden)  # type: ignore[no-any-return]

        if layer.norm_first:
            h = h + self_attention(norm(h, layer.norm_self_attn))
            h = h + cross_attention(norm(h, layer.norm_cross_attn))
            return h + feed_forward(norm(h, layer.norm_ffn))
        h = norm(h + self_attention(h), layer.norm_self_attn)
        h = norm(h + cross_attention(h), layer.norm_cross_attn)
        return norm(h + feed_forward(h), layer.norm_ffn)

    def step(
        token: Tensor,
        position: Tensor,
        keys: list[Tensor],
        values: list[Tensor],
        cross_keys: list[Tensor],
        cross_values: list[Tensor],
    ) -> Tensor:
        h = embedding.index_select(0, token) * multiplier + table.index_select(0, position)  # (1, d)
        allowed = (slots <= position).view(1, 1, 1, CAPACITY)
        for i, layer in enumerate(model.decoder):
            cache = (keys[i], values[i], cross_keys[i], cross_values[i])
            h = layer_step(layer, fused_qkv[i], h, position, allowed, cache)  # type: ignore[arg-type]
        if final is not None:
            h = norm(h, final)
        return torch.log_softmax(F.linear(h, output), dim=-1)

    return step


def run(
    *, preset_name: str, vocab: int, steps: int, repeats: int, compile_step: bool, device: Device
) -> Table:
    if steps > CAPACITY:
        raise ValueError(f"--steps {steps}: the compiled step's static cache holds {CAPACITY} positions")
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

            # At its best thread count, as in the suite (benchmarks/decode.py): on the Xeon of stop 19 one
            # thread; its two-thread translator, called twice in a row (a warm turn), ran ~4x slower.
            _, best_threads = best_time_over_threads(
                ct2_run, device, repeats=3, on_threads=lambda threads: ct2_threads.__setitem__(0, threads)
            )
            ct2_threads[0] = best_threads
            runs[f"CTranslate2 ({best_threads} thread{'s' if best_threads > 1 else ''}, its best)"] = (
                ct2_run,
                best_threads,
            )

        # -- qkv decode(): the whole of it ------------------------------------------------------------
        def qkv_decode() -> object:
            found = decode(
                model, [source], method="greedy", min_len=steps - 1, max_len_a=0.0, max_len_b=steps - 1
            )
            if len(found[0][0].tokens) != steps - 1:
                raise RuntimeError(f"qkv: expected {steps - 1} tokens + </s>, got {len(found[0][0].tokens)}")
            return found

        runs["qkv decode()"] = (qkv_decode, device.threads)

        # -- qkv steps: FastDecoder.step and its log-softmax, no search ---------------------------------
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

        # -- compiled step ----------------------------------------------------------------------------
        with torch.inference_mode():
            reference, state = stepper.step(bos, CachedState(first.encoded, model.new_cache()))
        cross = [(layer.cross_k, layer.cross_v) for layer in state.cache.layers]
        if compile_step:
            shape = (1, config.heads, CAPACITY, config.d_model // config.heads)
            compiled = torch.compile(
                static_step(model), fullgraph=True, dynamic=False, options={"cpp_wrapper": True}
            )
            positions = [torch.tensor([p]) for p in range(steps)]
            token = torch.tensor([config.bos_id])
            cross_k = [k for k, _ in cross]
            cross_v = [v for _, v in cross]

            def compiled_steps() -> object:
                with torch.inference_mode():
                    keys = [torch.zeros(shape) for _ in model.decoder]
                    values = [torch.zeros(shape) for _ in model.decoder]
                    for p in positions:
                        log_probs = compiled(token, p, keys, values, cross_k, cross_v)
                return log_probs

            start = time.perf_counter()
            with torch.inference_mode():
                got = compiled(
                    token,
                    positions[0],
                    [torch.zeros(shape) for _ in model.decoder],
                    [torch.zeros(shape) for _ in model.decoder],
                    cross_k,
                    cross_v,
                )
            table.notes.append(f"compiled step: {time.perf_counter() - start:.1f} s to compile")
            if not torch.allclose(got, reference, atol=1e-4, rtol=1e-4):
                raise RuntimeError(
                    f"the compiled step differs from FastDecoder.step: {(got - reference).abs().max().item():.2e}"
                )
            runs["compiled step"] = (compiled_steps, device.threads)
        else:
            table.skipped["compiled step"] = "--no-compile"

        # -- products only, and the weights read once ---------------------------------------------------
        decoder = fast_decoder(model, 1)
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
    parser.add_argument(
        "--no-compile", action="store_true", help="skip the compiled-step row (compiling takes 5-20 s)"
    )
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
            compile_step=not args.no_compile,
            device=device,
        )
    print(table.render())
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine(device), "table": table.to_dict()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
