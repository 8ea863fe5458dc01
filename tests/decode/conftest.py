"""A random tiny Transformer whose greedy outputs vary in tokens and length, and sources for it."""

from __future__ import annotations

import pytest
import torch

from qkv.config import preset
from qkv.models.seq2seq import Transformer

VOCAB = 20


def random_model(*, norm_first: bool = True, seed: int = 1, vocab: int = VOCAB) -> Transformer:
    """The 'tiny' preset (dropout 0, untied output) with every matrix scaled up, in eval mode.

    At the default init a random model repeats one token forever; scaled-up weights (x2) and a larger
    </s> output row (x2) make outputs differ from step to step and end at different lengths, some early,
    some at the length limit, so finished sentences really leave the batch.
    """
    torch.manual_seed(seed)
    config = preset("tiny", vocab, dropout=0.0, norm_first=norm_first, tie_output=False)
    model = Transformer(config)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.mul_(2.0)
        assert model.output_proj is not None
        model.output_proj.weight[config.eos_id].mul_(2.0)
    return model.eval()


@pytest.fixture
def model() -> Transformer:
    return random_model()


@pytest.fixture
def sources() -> list[list[int]]:
    """Six sources of 3..9 real tokens followed by </s> (2), unsorted lengths."""
    generator = torch.Generator().manual_seed(5)
    return [torch.randint(3, VOCAB, (n,), generator=generator).tolist() + [2] for n in (3, 5, 7, 9, 4, 6)]
