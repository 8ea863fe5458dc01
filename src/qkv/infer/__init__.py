"""Inference backends: the model's weights prepared once for fast CPU inference, under the one layer
definition of :mod:`qkv.nn.layers`.

products   linear maps with the weight packed for this CPU's BLAS (MKL or oneDNN), transposed, split
           across threads, or in int8; :func:`~qkv.infer.products.product` picks one per weight
snapshot   prepared weights kept per model while its parameters stay the same
layers     a trained layer as the :class:`~qkv.nn.layers.LayerOps` the layer functions run on
stacks     encoder-decoder stacks: whole-sequence passes (encoder, NAT, teacher forcing) and one-token steps

:func:`backend` is the one place that decides whether a pass runs on prepared weights and which ones:
searches, NAT decoding and BERT ask it instead of deciding themselves.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

Backend = Literal["float32", "int8"]


def prepared_weights_compute_the_same(model: nn.Module, activation: Tensor) -> bool:
    """Whether weights prepared for inference compute what the model's modules would, here and now: a
    float32 model on a CPU, in eval mode, no gradients wanted, CPU autocast off. ``activation``: any tensor
    of the pass (its device and dtype)."""
    return (
        activation.device.type == "cpu"
        and activation.dtype == torch.float32
        and not model.training
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
    )


def backend(model: nn.Module, activation: Tensor, *, fast: bool = True, int8: bool = False) -> Backend | None:
    """The backend a pass of ``model`` runs on: ``"float32"`` (prepared float32 products), ``"int8"``
    (int8 products, the user's choice: an approximation), or None: the model's own modules (the reference,
    which training, attention weights and other devices and dtypes use). ``fast=False`` asks for the
    reference. int8 where prepared weights cannot run is an error naming why, never a silent fallback."""
    if int8:
        if not fast or not prepared_weights_compute_the_same(model, activation):
            raise ValueError(
                "int8 decoding runs on a CPU, in float32, in eval mode, without gradients and without "
                f"attention weights (here: {activation.device.type}, {activation.dtype}, "
                f"training={model.training}, gradients={torch.is_grad_enabled()}, fast={fast})"
            )
        return "int8"  # where torch lacks the int8 kernels, preparing the products says so
    if fast and prepared_weights_compute_the_same(model, activation):
        return "float32"
    return None


__all__ = ["Backend", "backend", "prepared_weights_compute_the_same"]
