"""Test doubles for :mod:`qkv.decode`: steppers whose output distributions are set by hand, and the
exhaustive search that the beam search is checked against.

Ids follow qkv: <pad>=0 <s>=1 </s>=2 <unk>=3; real tokens start at 4. Each sentence is identified by its
first source id (its "key"), so one batch can hold sentences with different scripts.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

PAD, BOS, EOS, UNK = 0, 1, 2, 3

Prefix = tuple[int, ...]
# key, prefix (the output tokens so far, without <s>) -> log-probs over the vocabulary
Script = Callable[[int, Prefix], list[float]]


@dataclass
class ScriptedState:
    """key (rows,): the sentence's script; prefix (rows, steps): tokens fed so far, <s> first."""

    key: Tensor
    prefix: Tensor

    def select(self, indices: Tensor, *, same_sources: bool = False, in_place: bool = False) -> ScriptedState:
        key = self.key.index_select(0, indices)
        if same_sources:  # the caller's promise: every row keeps its sentence; check it
            assert torch.equal(key, self.key), "same_sources=True but rows changed sentence"
        return ScriptedState(key, self.prefix.index_select(0, indices))

    def repeat_each(self, times: int) -> ScriptedState:
        return self.select(torch.arange(self.key.shape[0]).repeat_interleave(times))


class ScriptedStepper:
    """Implements qkv.decode.step.Stepper from a script; records how many rows each step ran on."""

    pad_id, bos_id, eos_id = PAD, BOS, EOS

    def __init__(self, script: Script, vocab_size: int, max_len: int = 100) -> None:
        self.script = script
        self.vocab_size = vocab_size
        self.max_len = max_len
        self.rows_per_step: list[int] = []

    def encode(self, src_ids: Tensor) -> ScriptedState:
        return ScriptedState(src_ids[:, 0].clone(), torch.empty(src_ids.shape[0], 0, dtype=torch.long))

    def step(self, tokens: Tensor, state: ScriptedState) -> tuple[Tensor, ScriptedState]:
        prefix = torch.cat([state.prefix, tokens], dim=1)
        self.rows_per_step.append(prefix.shape[0])
        rows = [
            self.script(key, tuple(row[1:]))
            for key, row in zip(state.key.tolist(), prefix.tolist(), strict=True)
        ]
        return torch.tensor(rows, dtype=torch.float32), ScriptedState(state.key, prefix)


def table_script(table: dict[Prefix, dict[int, float]], vocab_size: int) -> Script:
    """A script from probabilities written by hand: prefix -> {token: probability}; the rest get 0.

    A prefix missing from the table ends at once (</s> with probability 1).
    """

    def script(key: int, prefix: Prefix) -> list[float]:
        probs = table.get(prefix, {EOS: 1.0})
        return [math.log(probs[t]) if probs.get(t, 0.0) > 0 else -math.inf for t in range(vocab_size)]

    return script


def random_script(vocab_size: int, seed: int = 0, spread: float = 2.0) -> Script:
    """Pseudo-random log-probs that depend on the key and the whole prefix (every id, <pad> included)."""

    def script(key: int, prefix: Prefix) -> list[float]:
        code = seed
        for token in (key, *prefix):
            code = (code * 1_000_003 + token + 1) % (2**61 - 1)
        generator = torch.Generator().manual_seed(code)
        logits = spread * torch.randn(vocab_size, generator=generator, dtype=torch.float64)
        return torch.log_softmax(logits, dim=0).tolist()

    return script


def exhaustive_search(
    script: Script, key: int, vocab_size: int, max_len: int, alpha: float
) -> list[tuple[float, float, Prefix]]:
    """Every output of up to ``max_len`` tokens followed by </s>, scored in float64, best first.

    Tokens are every id but <pad>, <s> and </s>. log P = sum of the script's log-probs of the tokens
    and of </s>; score = log P / ((5 + n + 1) / 6) ** alpha with n tokens. Returns (score, log P, tokens).
    """
    allowed = [t for t in range(vocab_size) if t not in (PAD, BOS, EOS)]
    found = []
    for n in range(max_len + 1):
        for tokens in itertools.product(allowed, repeat=n):
            log_p = sum(script(key, tokens[:i])[tokens[i]] for i in range(n)) + script(key, tokens)[EOS]
            if log_p == -math.inf:
                continue
            found.append((log_p / ((5 + n + 1) / 6) ** alpha, log_p, tokens))
    return sorted(found, key=lambda f: f[0], reverse=True)


def src_for(keys: Sequence[int], length: int = 1) -> Tensor:
    """Sources whose first id is the key: (len(keys), length), real tokens after the key, no padding."""
    ids = torch.full((len(keys), length), 4, dtype=torch.long)
    ids[:, 0] = torch.tensor(list(keys))
    return ids
