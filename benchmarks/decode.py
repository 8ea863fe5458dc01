"""Decoding: qkv vs Hugging Face generate() vs CTranslate2, the same weights, equal output lengths.

One randomly initialised qkv model (the ``small`` preset) is exported with :mod:`qkv.export` to a Hugging
Face MarianMTModel and to a CTranslate2 model, so the three systems run the same weights (and, greedy, give
the same tokens: the table's "agree" column). Sources are random ids of 15-25 tokens plus </s>; a batch of
32 sentences, and a single sentence, each greedy and with beam 4.

Equal output lengths: every system runs exactly ``L`` decoder steps per sentence, </s> being banned until
the last one. qkv: ``min_len = max_len = L - 1`` (``max_len_a=0, max_len_b=L-1``): L - 1 tokens, then the
forced </s> at step L. Hugging Face: ``min_new_tokens = max_new_tokens = L``. CTranslate2:
``min_decoding_length = max_decoding_length = L``. The run checks every output's length.
All three never produce <pad> or <s> (qkv's rule; ``suppress_tokens`` / ``suppress_sequences`` for the
others). Throughput counts the L steps of each sentence (its best hypothesis), not the beams.
CTranslate2 runs in a process of its own, stopped outside its turns (:mod:`benchmarks.ct2_worker`), so that
it can take turns with the torch systems without its threads slowing them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from benchmarks.common import (
    Column,
    Device,
    Sizes,
    Table,
    best_time_over_threads,
    interleaved_best_times,
    optional,
)
from benchmarks.ct2_worker import Worker
from qkv.config import preset
from qkv.decode import Lengths, SearchConfig, decode, pad_batch
from qkv.infer.products import full_range_activations, int8_available
from qkv.models.seq2seq import Transformer

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
CASES = [("batch", "greedy", 1), ("batch", "beam", 4), ("single", "greedy", 1), ("single", "beam", 4)]


def _vocabulary(size: int) -> list[str]:
    return SPECIALS + [f"w{i}" for i in range(len(SPECIALS), size)]


def _hf_model(model: Transformer, directory: Path, device: Device) -> Any:
    transformers = optional("transformers")
    if transformers is None:
        return None
    from qkv.export.marian import generation_config, marian_config, marian_state_dict

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(marian_config(model.config)))
    (directory / "generation_config.json").write_text(json.dumps(generation_config(model.config)))
    save_file(marian_state_dict(model), str(directory / "model.safetensors"), metadata={"format": "pt"})
    hf = transformers.MarianMTModel.from_pretrained(directory, attn_implementation="sdpa")
    return hf.to(device.torch_device).eval()


def _ct2_worker(
    model: Transformer,
    vocab: list[str],
    directory: Path,
    device: Device,
    threads: list[int],
    batches: dict[str, list[list[int]]],
) -> tuple[Worker | None, str | None]:
    """CTranslate2 on the exported weights, in a worker process frozen between its turns
    (:mod:`benchmarks.ct2_worker`), with one translator per thread count and the batches as tokens."""
    ctranslate2 = optional("ctranslate2")
    if ctranslate2 is None:
        return None, "ctranslate2 is not installed (pip install -e '.[bench]')"
    if device.is_cuda and ctranslate2.get_cuda_device_count() == 0:
        return None, "this ctranslate2 build sees no CUDA device"
    from qkv.export.ctranslate2 import save_spec, transformer_spec

    save_spec(transformer_spec(model, vocab, vocab), directory)
    tokens = {name: [[vocab[i] for i in s[:-1]] for s in srcs] for name, srcs in batches.items()}  # no </s>:
    # the export appends it itself
    worker = Worker(
        "translator",
        model_dir=str(directory),
        options=device.ctranslate2_options(),
        threads=threads,
        batches=tokens,
    )
    return worker, None


def _take_turns(
    table: Table,
    chosen: dict[str, dict[str, tuple[Callable[[], list[list[int]]], int]]],
    device: Device,
    sizes: Sizes,
    steps: int,
    batches: dict[str, list[list[int]]],
    on_threads: Callable[[int], None],
) -> None:
    """Time the systems again, taking turns (:func:`interleaved_best_times`, each turn warm; ``on_threads``
    tells CTranslate2 which of its translators runs), and keep each one's best of both measurements."""
    if len(table.rows) < 2:
        return
    for key, runs in chosen.items():
        sentences = len(batches[key.split("_")[0]])
        best = interleaved_best_times(
            runs, device, repeats=sizes.decode_repeats, on_threads=on_threads, warm=True
        )
        for system, seconds in best.items():
            row = table.rows[system]
            row[key] = max(row[key] or 0.0, sentences * steps / seconds)
    table.notes.append(
        f"best of {sizes.decode_repeats} runs per thread count, then of {sizes.decode_repeats} more with "
        f"{', '.join(table.rows)} taking turns at their best thread counts, each turn timed warm (run once "
        "more right before: after another system's turn its weights are no longer cached); CTranslate2 in "
        "a process of its own, stopped outside its turns"
    )


def run(sizes: Sizes, device: Device, workdir: Path) -> Table:
    steps = sizes.decode_steps
    v = sizes.vocab
    c = preset(sizes.decode_preset, v, dropout=0.0)
    torch.manual_seed(0)
    model = Transformer(c).to(device.torch_device).eval()
    generator = torch.Generator().manual_seed(1)
    low, high = sizes.decode_src_len
    sources = [
        torch.randint(
            4, v, (int(torch.randint(low, high + 1, (1,), generator=generator)),), generator=generator
        ).tolist()
        + [c.eos_id]
        for _ in range(sizes.decode_batch)
    ]
    batches = {"batch": sources, "single": sources[:1]}

    columns = [
        Column(f"{b}_{m}", f"{len(batches[b])}x {m}{'' if k == 1 else str(k)} tok/s", ratio=True)
        for b, m, k in CASES
    ]
    columns.append(Column("agree", "greedy = qkv", "{:.0%}"))
    table = Table(
        "decode",
        f"decoding, preset {sizes.decode_preset} (random init, the same weights in every system), vocab {v}, "
        f"batch {sizes.decode_batch} and 1, exactly {steps} decoder steps per sentence, {device.precision}, "
        f"best of {sizes.decode_repeats}",
        columns,
    )
    outputs: dict[str, list[list[int]]] = {}

    # -- qkv --------------------------------------------------------------------------------------
    def qkv_run(
        srcs: list[list[int]], method: str, beam: int, *, int8: bool = False
    ) -> Callable[[], list[list[int]]]:
        search = SearchConfig(
            method="greedy" if method == "greedy" else "beam",
            beam=beam,
            lengths=Lengths(min_len=steps - 1, max_len_a=0.0, max_len_b=steps - 1),
        )

        def go() -> list[list[int]]:
            with device.autocast():
                found = decode(model, srcs, search, batch_size=len(srcs), int8=int8)
            tokens = [hyps[0].tokens for hyps in found]
            if any(len(t) != steps - 1 for t in tokens):
                raise RuntimeError(
                    f"qkv: expected {steps - 1} tokens + </s>, got {sorted({len(t) for t in tokens})}"
                )
            return tokens

        return go

    # -- Hugging Face -------------------------------------------------------------------------------
    hf = _hf_model(model, workdir / "marian", device)

    def hf_run(srcs: list[list[int]], method: str, beam: int) -> Callable[[], list[list[int]]]:
        ids = pad_batch(srcs, c.pad_id, device.torch_device)
        mask = (ids != c.pad_id).long()

        def go() -> list[list[int]]:
            with torch.inference_mode(), device.autocast():
                out = hf.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    num_beams=beam,
                    do_sample=False,
                    min_new_tokens=steps,
                    max_new_tokens=steps,
                    forced_eos_token_id=None,
                )
            if out.shape[1] != steps + 1:
                raise RuntimeError(f"HF: expected <s> + {steps} tokens, got {out.shape[1]}")
            return [row[1:] for row in out.tolist()]

        return go

    # -- CTranslate2 --------------------------------------------------------------------------------
    # Each system runs each case at each of device.thread_options() and keeps its best.
    vocab = _vocabulary(v)
    ct2, ct2_missing = _ct2_worker(model, vocab, workdir / "ct2", device, device.thread_options(), batches)
    index = {t: i for i, t in enumerate(vocab)}
    current_threads = [device.threads]  # which CTranslate2 instance runs

    def use_threads(threads: int) -> None:
        current_threads[0] = threads

    def ct2_run(srcs: list[list[int]], method: str, beam: int) -> Callable[[], list[list[int]]]:
        name = next(n for n, batch in batches.items() if batch is srcs)

        def go() -> list[list[int]]:
            assert ct2 is not None
            found = ct2.call("translate", name, current_threads[0], beam, steps)
            return [[index[t] for t in tokens] for tokens in found]

        return go

    systems: list[
        tuple[str, Callable[[list[list[int]], str, int], Callable[[], list[list[int]]]], str | None]
    ] = [
        ("qkv", qkv_run, None),
        (
            "qkv int8",
            lambda srcs, method, beam: qkv_run(srcs, method, beam, int8=True),
            "a CPU mode" if device.is_cuda else (None if int8_available() else "no fbgemm/x86 int8 kernels"),
        ),
        (
            "HF generate()",
            hf_run,
            None if hf is not None else "transformers is not installed (pip install -e '.[bench]')",
        ),
        ("CTranslate2", ct2_run, ct2_missing),
    ]
    table.variant_of["qkv int8"] = "qkv"
    # Each system first on its own, at every thread count (which is best); then all of them again, taking
    # turns within each round at their best thread counts (interleaved_best_times): the ratios between
    # them then do not depend on which minute each ran in. CTranslate2 takes its turns from a worker
    # process that is frozen outside them (benchmarks.ct2_worker): in this process its threads would
    # slow the torch systems.
    chosen: dict[str, dict[str, tuple[Callable[[], list[list[int]]], int]]] = {}
    for system, make, missing in systems:
        if missing is not None:
            table.skipped[system] = missing
            continue
        row: dict[str, float | None] = {}
        used: list[str] = []
        for batch_name, method, beam in CASES:
            srcs = batches[batch_name]
            go = make(srcs, method, beam)
            best_seconds, best_threads = best_time_over_threads(
                go, device, repeats=sizes.decode_repeats, on_threads=use_threads
            )
            row[f"{batch_name}_{method}"] = len(srcs) * steps / best_seconds
            used.append(f"{len(srcs)}x {method}{'' if beam == 1 else beam}: {best_threads}")
            chosen.setdefault(f"{batch_name}_{method}", {})[system] = (go, best_threads)
            if batch_name == "batch" and method == "greedy":
                outputs[system] = [t[: steps - 1] for t in go()]
        table.rows[system] = row
        if len(device.thread_options()) > 1:
            table.notes.append(f"{system}: best threads per case ({', '.join(used)})")
    _take_turns(table, chosen, device, sizes, steps, batches, use_threads)
    if ct2 is not None:
        ct2.close()
    for system, found in outputs.items():
        if system == "qkv":
            continue
        same = sum(a == b for a, b in zip(found, outputs["qkv"], strict=True))
        table.rows[system]["agree"] = same / len(found)
    table.notes.append(
        f"every system runs {steps} decoder steps per sentence: qkv min_len = max_len = {steps - 1} "
        f"(+ the forced </s>), HF min_new_tokens = max_new_tokens = {steps}, CTranslate2 "
        f"min_decoding_length = max_decoding_length = {steps}"
    )
    table.notes.append(
        "tok/s = sentences x steps / seconds; 'greedy = qkv': share of batch greedy outputs equal to qkv's"
    )
    if "qkv int8" in table.rows:
        table.notes.append(
            "qkv int8: int8 weights, activations quantised per call (qkv translate --int8); compared with "
            "the other systems' float32, not with qkv's; activations in "
            + ("8 bits (AVX-512 VNNI)" if full_range_activations() else "7 bits (no AVX-512 VNNI)")
            + ": on the cmn-eng model 8 bits cost 0.13 BLEU at beam 4, 7 bits 0.49 (README)"
        )
    if device.is_cuda:
        table.notes.append("GPU: qkv and HF under bf16 autocast, CTranslate2 compute_type bfloat16")
    return table
