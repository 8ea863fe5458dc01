"""Decoding: qkv vs Hugging Face generate() vs CTranslate2, the same weights, equal output lengths.

One randomly initialised model is exported with :mod:`qkv.export` to a Hugging Face MarianMTModel and to a
CTranslate2 model, so the three systems run the same weights (and, greedy, give the same tokens: the
table's "agree" column). Sources are random ids of 15-25 tokens plus </s>; a batch of 32 sentences, and a
single sentence, each greedy and with beam 4. Two model shapes (:class:`Shape`), one section each, through
the same code: ``decode``, qkv's ``small`` preset; ``decode-opus``, the shape of the OPUS-MT models (6+6
layers, d_model 512, 8 heads, FFN 2048, a 65,001-token shared vocabulary, SiLU, Marian's sinusoid layout,
scaled embeddings, the logits bias, decoding from <pad>), its config read from opus-mt-zh-en's config.json
by :func:`qkv.convert.marian.marian_model_config`, as ``qkv translate`` reads the real model.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

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
from qkv.config import ModelConfig, preset
from qkv.convert.marian import marian_model_config
from qkv.decode import Lengths, SearchConfig, decode, pad_batch
from qkv.infer.products import full_range_activations, int8_available
from qkv.models.seq2seq import Transformer

CASES = [("batch", "greedy", 1), ("batch", "beam", 4), ("single", "greedy", 1), ("single", "beam", 4)]
UNK_ID = 3  # qkv's own vocabularies: <pad> 0, <s> 1, </s> 2, <unk> 3

# Helsinki-NLP/opus-mt-zh-en's config.json, the fields that shape the computation (most OPUS-MT bilingual
# models have this shape, with vocabularies of other sizes).
OPUS_MT_ZH_EN: dict[str, object] = {
    "model_type": "marian",
    "activation_function": "swish",
    "d_model": 512,
    "encoder_layers": 6,
    "decoder_layers": 6,
    "encoder_attention_heads": 8,
    "decoder_attention_heads": 8,
    "encoder_ffn_dim": 2048,
    "decoder_ffn_dim": 2048,
    "vocab_size": 65001,
    "decoder_vocab_size": 65001,
    "share_encoder_decoder_embeddings": True,
    "max_position_embeddings": 512,
    "scale_embedding": True,
    "static_position_embeddings": True,
    "normalize_before": False,
    "normalize_embedding": False,
    "add_final_layer_norm": False,
    "add_bias_logits": False,
    "pad_token_id": 65000,
    "decoder_start_token_id": 65000,
    "bos_token_id": 0,
    "eos_token_id": 0,
    "forced_eos_token_id": 0,
    "dropout": 0.1,
    "attention_dropout": 0.0,
}
OPUS_MT_UNK_ID = 1  # OPUS-MT vocabularies: </s> 0, <unk> 1, ..., <pad> last


@dataclass(frozen=True)
class Shape:
    """The model a decoding section times: its table's name, how its title names it, its config, and
    the id of <unk> (the config does not name it; CTranslate2's vocabulary does)."""

    section: str
    title: str
    config: ModelConfig
    unk_id: int


def preset_shape(sizes: Sizes) -> Shape:
    """The ``decode`` section: qkv's own layout (interleaved sines, decoding from <s>), ``small`` preset."""
    config = preset(sizes.decode_preset, sizes.vocab, dropout=0.0)
    return Shape("decode", f"preset {sizes.decode_preset}", config, UNK_ID)


def opus_mt_shape(sizes: Sizes) -> Shape:
    """The ``decode-opus`` section: opus-mt-zh-en's config, shrunk by ``sizes.opus_mt_overrides`` (--quick)."""
    fields = {**OPUS_MT_ZH_EN, **dict(sizes.opus_mt_overrides), "dropout": 0.0}
    config = marian_model_config(fields, source="opus-mt-zh-en config.json")
    shrunk = ", shrunk by --quick" if sizes.opus_mt_overrides else ""
    shape = (
        f"OPUS-MT shape ({config.encoder_layers}+{config.decoder_layers} layers, d_model {config.d_model}, "
        f"{config.heads} heads, FFN {config.d_ff}, SiLU, Marian's sinusoids, logits bias{shrunk})"
    )
    return Shape("decode-opus", shape, config, OPUS_MT_UNK_ID)


SHAPES: dict[str, Callable[[Sizes], Shape]] = {"decode": preset_shape, "decode-opus": opus_mt_shape}


def _start_stand_in(config: ModelConfig, unk_id: int) -> int | None:
    """For a model that starts from <pad> (OPUS-MT: its vocabulary has no <s>), the id spelled <s> for
    CTranslate2, whose benchmark worker bans <pad> and <s> by name (:mod:`benchmarks.ct2_worker`); every
    system's copy of the weights gives it a logits bias of -1e9, so that banning it changes no output.
    None for a model with an <s> of its own."""
    if config.bos_id != config.pad_id:
        return None
    if not config.logits_bias:
        raise ValueError("a model that starts from <pad> needs a logits bias to rule out the <s> stand-in")
    return max(set(range(config.tgt_vocab_size)) - {config.pad_id, config.eos_id, unk_id})


def _vocabulary(config: ModelConfig | int, unk_id: int = UNK_ID) -> list[str]:
    """Token strings by id: the special tokens at the config's ids, ``w<id>`` for the others. A size in
    place of a config: qkv's own layout (<pad> 0, <s> 1, </s> 2, <unk> 3)."""
    if isinstance(config, int):
        config = preset("tiny", config)
    tokens = [f"w{i}" for i in range(config.tgt_vocab_size)]
    start = _start_stand_in(config, unk_id)
    for token_id, token in ((config.bos_id if start is None else start, "<s>"), (config.pad_id, "<pad>")):
        tokens[token_id] = token
    tokens[config.eos_id], tokens[unk_id] = "</s>", "<unk>"
    return tokens


def _ordinary_ids(config: ModelConfig, unk_id: int) -> Tensor:
    """The ids that are no special token (nor the <s> stand-in), the sources' ids."""
    special = {config.pad_id, config.bos_id, config.eos_id, unk_id, _start_stand_in(config, unk_id)}
    return torch.tensor([i for i in range(config.src_vocab_size) if i not in special])


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
    *,
    unk_id: int = UNK_ID,
) -> tuple[Worker | None, str | None]:
    """CTranslate2 on the exported weights, in a worker process frozen between its turns
    (:mod:`benchmarks.ct2_worker`), with one translator per thread count and the batches as tokens."""
    ctranslate2 = optional("ctranslate2")
    if ctranslate2 is None:
        return None, "ctranslate2 is not installed (pip install -e '.[bench]')"
    if device.is_cuda and ctranslate2.get_cuda_device_count() == 0:
        return None, "this ctranslate2 build sees no CUDA device"
    from qkv.export.ctranslate2 import save_spec, transformer_spec

    save_spec(transformer_spec(model, vocab, vocab, unk_id=unk_id), directory)
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


def run(sizes: Sizes, device: Device, workdir: Path, section: str = "decode") -> Table:
    """The table of ``section`` (a key of :data:`SHAPES`): its model decoded by every system."""
    shape = SHAPES[section](sizes)
    workdir = workdir / section
    steps = sizes.decode_steps
    c = shape.config
    v = c.tgt_vocab_size
    torch.manual_seed(0)
    model = Transformer(c).to(device.torch_device).eval()
    generator = torch.Generator().manual_seed(1)
    if c.logits_bias:  # random, as a trained model's (zero at init)
        bias = 0.1 * torch.randn(v, generator=torch.Generator().manual_seed(2))
        start = _start_stand_in(c, shape.unk_id)
        if start is not None:
            bias[start] = -1e9
        model.output_bias.copy_(bias)  # type: ignore[union-attr]
    ordinary = _ordinary_ids(c, shape.unk_id)
    low, high = sizes.decode_src_len
    sources = [
        ordinary[
            torch.randint(
                0,
                len(ordinary),
                (int(torch.randint(low, high + 1, (1,), generator=generator)),),
                generator=generator,
            )
        ].tolist()
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
        shape.section,
        f"decoding, {shape.title} (random init, the same weights in every system), vocab {v:,}, "
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
    vocab = _vocabulary(c, shape.unk_id)
    ct2, ct2_missing = _ct2_worker(
        model, vocab, workdir / "ct2", device, device.thread_options(), batches, unk_id=shape.unk_id
    )
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
