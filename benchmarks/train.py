"""Training steps (forward, backward, AdamW) at equal batch shapes: qkv vs torch.nn.Transformer vs Marian.

Every system gets the same batch: ``batch`` sentences of ``src_len`` source and ``tgt_len`` target tokens
(random ids, no padding, so every system does exactly the same work), the same model shape (a qkv preset),
dropout 0.1, label smoothing 0.1 and ``torch.optim.AdamW`` with its defaults. A step is zero_grad,
forward, the loss (summed over target tokens, divided by their number), backward and optimizer.step().

* qkv: ``qkv.models.seq2seq.Transformer`` with qkv's label-smoothed loss (``qkv.train.loss``);
* torch.nn.Transformer: written below with the same embeddings (x sqrt(d_model)), sinusoidal positions and
  tied output projection; torch's ``F.cross_entropy(label_smoothing=0.1)``;
* HF MarianMTModel: built from the ``MarianConfig`` that ``qkv.export.marian`` writes for the preset
  (random init, SDPA attention); the same ``F.cross_entropy``.

MFU = achieved FLOP/s / the peak matmul rate, with the model FLOPs of :func:`train_flops`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.common import Column, Device, Sizes, Table, interleaved_best_times, optional
from qkv.config import ModelConfig, preset
from qkv.models.seq2seq import Transformer
from qkv.train.loss import label_smoothed_loss

LABEL_SMOOTHING = 0.1
DROPOUT = 0.1

FLOP_FORMULA = (
    "model FLOPs per step = 3 x forward matmul FLOPs (backward = 2 x forward), forward counted exactly: "
    "2*m*n*k for every matmul at the batch shape, i.e. per sentence with S source, T target tokens: "
    "encoder L_e*(8Sd^2 + 4S^2d + 4Sd*d_ff), decoder L_d*(8Td^2 + 4T^2d [full square, causal included] "
    "+ 4Td^2 + 4Sd^2 + 4TSd + 4Td*d_ff), output projection 2TdV; embeddings, softmax, LayerNorm, "
    "elementwise ops and the optimizer not counted"
)


def forward_flops(c: ModelConfig, batch: int, src_len: int, tgt_len: int) -> int:
    """Matmul FLOPs of one teacher-forced forward pass (see FLOP_FORMULA)."""
    d, f, s, t = c.d_model, c.d_ff, src_len, tgt_len
    encoder = c.encoder_layers * (8 * s * d * d + 4 * s * s * d + 4 * s * d * f)
    decoder = c.decoder_layers * (
        8 * t * d * d + 4 * t * t * d + 4 * t * d * d + 4 * s * d * d + 4 * t * s * d + 4 * t * d * f
    )
    output = 2 * t * d * c.tgt_vocab_size
    return batch * (encoder + decoder + output)


def train_flops(c: ModelConfig, batch: int, src_len: int, tgt_len: int) -> int:
    return 3 * forward_flops(c, batch, src_len, tgt_len)


# ---- the torch.nn.Transformer baseline ----------------------------------------------------------------------
class TorchSeq2Seq(nn.Module):
    """torch.nn.Transformer with what a translation model needs around it (as in the paper)."""

    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.d_model = c.d_model
        self.embed = nn.Embedding(c.src_vocab_size, c.d_model)
        nn.init.normal_(self.embed.weight, std=c.d_model**-0.5)
        position = torch.arange(c.max_positions, dtype=torch.float64)[:, None]
        angle = position / torch.pow(10000.0, torch.arange(0, c.d_model, 2, dtype=torch.float64) / c.d_model)
        table = torch.zeros(c.max_positions, c.d_model, dtype=torch.float64)
        table[:, 0::2], table[:, 1::2] = torch.sin(angle), torch.cos(angle)
        self.register_buffer("positions", table.float(), persistent=False)
        self.positions: Tensor
        self.dropout = nn.Dropout(c.dropout)
        self.transformer = nn.Transformer(
            c.d_model,
            c.heads,
            c.encoder_layers,
            c.decoder_layers,
            c.d_ff,
            c.dropout,
            activation=c.activation,
            batch_first=True,
            norm_first=c.norm_first,
        )

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        scale = math.sqrt(self.d_model)
        x = self.dropout(self.embed(src) * scale + self.positions[: src.shape[1]])
        y = self.dropout(self.embed(tgt) * scale + self.positions[: tgt.shape[1]])
        length = tgt.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=tgt.device).triu(1)  # True = masked
        src_pad, tgt_pad = src == 0, tgt == 0  # True = padding, torch's convention
        hidden = self.transformer(
            x,
            y,
            tgt_mask=causal,
            src_key_padding_mask=src_pad,
            tgt_key_padding_mask=tgt_pad,
            memory_key_padding_mask=src_pad,
            tgt_is_causal=True,
        )
        return F.linear(hidden, self.embed.weight)  # tied output projection


def marian_model(c: ModelConfig) -> Any:
    """Hugging Face MarianMTModel of the same shape, random init, SDPA attention; None without transformers."""
    transformers = optional("transformers")
    if transformers is None:
        return None
    from qkv.export.marian import marian_config

    config = transformers.MarianConfig(**marian_config(c))
    return transformers.MarianMTModel._from_config(config, attn_implementation="sdpa")


# ---- one step ------------------------------------------------------------------------------------------------
def _cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    tokens = (target != 0).sum()
    loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        target.reshape(-1),
        ignore_index=0,
        label_smoothing=LABEL_SMOOTHING,
        reduction="sum",
    )
    return loss / tokens


def make_step(
    system: str, c: ModelConfig, device: Device, src: Tensor, tgt: Tensor
) -> Callable[[], None] | None:
    """One training step of ``system`` on (src, tgt); None if its package is missing."""
    torch.manual_seed(0)
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
    model: nn.Module
    if system == "qkv":
        model = Transformer(c)

        def loss_of(m: nn.Module) -> Tensor:
            loss, _ = label_smoothed_loss(m(src, tgt_in), tgt_out, smoothing=LABEL_SMOOTHING, pad_id=c.pad_id)
            return loss / (tgt_out != c.pad_id).sum()

    elif system == "torch.nn.Transformer":
        model = TorchSeq2Seq(c)

        def loss_of(m: nn.Module) -> Tensor:
            return _cross_entropy(m(src, tgt_in), tgt_out)

    else:
        hf = marian_model(c)
        if hf is None:
            return None
        model = hf

        def loss_of(m: nn.Module) -> Tensor:
            out = m(
                input_ids=src,
                attention_mask=(src != 0).long(),
                decoder_input_ids=tgt_in,
                decoder_attention_mask=(tgt_in != 0).long(),
            )
            return _cross_entropy(out.logits, tgt_out)

    model.to(device.torch_device).train()
    # Every system gets the same optimizer, the one qkv's trainer uses: AdamW's fused kernel.
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=1e-4, fused=device.torch_device.type in ("cpu", "cuda")
    )

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with device.autocast():
            loss = loss_of(model)
        loss.backward()
        optimizer.step()

    return step


SYSTEMS = ("qkv", "torch.nn.Transformer", "HF MarianMTModel")


def run(sizes: Sizes, device: Device, peak: float) -> Table:
    b, s, t, v = sizes.train_batch, sizes.train_src_len, sizes.train_tgt_len, sizes.vocab
    columns: list[Column] = []
    for name in sizes.train_presets:
        columns += [
            Column(f"{name}_tok_s", f"{name} tgt tok/s", ratio=True),
            Column(f"{name}_mfu", f"{name} MFU", "{:.1%}"),
        ]
    table = Table(
        "train",
        f"training step (forward + backward + fused AdamW), batch {b} x {s} -> {t} tokens, vocab {v}, "
        f"dropout {DROPOUT}, label smoothing {LABEL_SMOOTHING}, {device.precision}, "
        f"best of {sizes.train_steps} after {sizes.train_warmup} warm-up, the systems taking turns",
        columns,
    )
    generator = torch.Generator().manual_seed(0)
    src = torch.randint(4, v, (b, s), generator=generator)
    tgt = torch.randint(4, v, (b, t + 1), generator=generator)
    tgt[:, 0] = 1  # <s>
    src, tgt = src.to(device.torch_device), tgt.to(device.torch_device)
    for system in SYSTEMS:
        table.rows[system] = {}
    for name in sizes.train_presets:
        c = preset(name, v, dropout=DROPOUT)
        flops = train_flops(c, b, s, t)
        params = Transformer(c).num_parameters()
        table.notes.append(f"{name}: {params:,} parameters, {flops / 1e9:,.1f} model GFLOPs per step")
        steps = {}
        for system in SYSTEMS:
            if system in table.skipped:
                continue
            step = make_step(system, c, device, src, tgt)
            if step is None:
                table.skipped[system] = "transformers is not installed (pip install -e '.[bench]')"
                table.rows.pop(system, None)
                continue
            for _ in range(sizes.train_warmup):
                step()
            steps[system] = (step, device.threads)
        # The systems take turns, one step each per round: the shared VM's speed drifts by 20-30% within
        # minutes, and each system's steps in one block let a slow minute land on one system only.
        best = interleaved_best_times(steps, device, repeats=sizes.train_steps)
        for system, seconds in best.items():
            table.rows[system][f"{name}_tok_s"] = b * t / seconds
            table.rows[system][f"{name}_mfu"] = flops / seconds / peak
        del steps
    table.notes.append(
        f"tgt tok/s = target tokens per second; MFU = model FLOP/s / peak ({peak / 1e9:,.1f} GFLOP/s)"
    )
    table.notes.append(FLOP_FORMULA)
    table.notes.append(
        "torch.nn.Transformer adds a final LayerNorm to each stack (not counted; a few d-wide ops)"
    )
    return table
