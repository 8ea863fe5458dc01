"""The independent reference for scores: a float64 copy of the model, teacher-forced on a whole output."""

from __future__ import annotations

import copy

import torch

from qkv.models.seq2seq import Transformer

BOS, EOS = 1, 2


def float64_copy(model: Transformer) -> Transformer:
    return copy.deepcopy(model).double().eval()


def log_prob(model64: Transformer, source: list[int], tokens: list[int]) -> float:
    """log P(tokens, </s> | source): one teacher-forced forward pass in float64, summed in Python."""
    with torch.no_grad():
        logits = model64(torch.tensor([source]), torch.tensor([[BOS, *tokens]]))  # (1, len + 1, vocab)
        log_probs = torch.log_softmax(logits[0], dim=-1)
    return sum(float(log_probs[i, t]) for i, t in enumerate([*tokens, EOS]))
