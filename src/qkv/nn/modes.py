"""Run a model in eval mode (dropout off) for a while, then give it back in the mode it had.

``nn.Module.eval()`` walks every submodule and sets an attribute on each, which for a small model costs as
much as a whole non-autoregressive pass over a short sentence. :func:`eval_mode` switches only a model that
is in training mode, so decoding one sentence at a time does not pay it twice per sentence.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``with eval_mode(model):`` runs the block with ``model`` in eval mode and restores training mode
    afterwards if it was on (also when the block raises)."""
    was_training = model.training
    if was_training:
        model.eval()
    try:
        yield model
    finally:
        if was_training:
            model.train()
