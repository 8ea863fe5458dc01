"""One search configuration: which strategy decodes, and with which options.

The CLI, the Python API (:func:`qkv.decode.decode`, :class:`qkv.translator.Translator`) and the
benchmarks build one :class:`SearchConfig` and hand it down; :meth:`SearchConfig.run` is the one place
that turns it into a call of greedy decoding, beam search or sampling. Every value is checked when the
object is made, so a bad option is an error naming its field before any model runs.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from qkv.decode.beam import beam_search
from qkv.decode.constraints import TokenRules
from qkv.decode.greedy import greedy_search
from qkv.decode.hypothesis import DEFAULT_ALPHA, Hypothesis
from qkv.decode.lengths import DEFAULT_LENGTHS, Lengths
from qkv.decode.sampling import sample
from qkv.decode.step import S, Stepper

Method = Literal["greedy", "beam", "sample"]
METHODS: tuple[Method, ...] = ("greedy", "beam", "sample")

# torch.Generator.manual_seed takes seeds in [-2**63, 2**64 - 1] and raises RuntimeError outside.
_SEEDS = range(-(2**63), 2**64)

__all__ = ["DEFAULT_SEARCH", "METHODS", "Lengths", "Method", "SearchConfig"]


@dataclass(frozen=True)
class SearchConfig:
    """How outputs are searched for.

    method: ``"greedy"`` (the most probable token at each step), ``"beam"`` (beam search with ``beam``
        hypotheses, ``early_stopping`` picking the stopping rule of :mod:`qkv.decode.beam`, ``n_best``
        of them returned per sentence) or ``"sample"`` (each token drawn after ``temperature``, ``top_k``
        (0: off) and ``top_p`` (1: off) reshape the distribution; ``seed`` seeds the draws).
    alpha: the length penalty exponent (:func:`~qkv.decode.hypothesis.length_penalty`); it ranks beam
        search's hypotheses and sets every hypothesis's reported ``score``.
    lengths: the output length limits (:class:`~qkv.decode.lengths.Lengths`).
    """

    method: Method = "beam"
    beam: int = 4
    n_best: int = 1
    alpha: float = DEFAULT_ALPHA
    early_stopping: bool = True
    lengths: Lengths = DEFAULT_LENGTHS
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} must be 'greedy', 'beam' or 'sample'")
        if self.beam < 1:
            raise ValueError(f"beam={self.beam} must be at least 1")
        if self.n_best < 1:
            raise ValueError(f"n_best={self.n_best} must be at least 1")
        if self.method == "beam" and self.n_best > self.beam:
            raise ValueError(
                f"n_best={self.n_best} must be at most beam={self.beam}: beam search keeps {self.beam} "
                "hypotheses per sentence"
            )
        if not math.isfinite(self.alpha):
            raise ValueError(f"alpha={self.alpha} must be a finite number")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(
                f"temperature={self.temperature} must be a finite number > 0 "
                "(use greedy decoding for temperature 0)"
            )
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be at least 0 (0 keeps every token)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")
        if self.seed not in _SEEDS:
            raise ValueError(f"seed={self.seed} must be in [-2**63, 2**64 - 1]")

    def new_generator(self, device: torch.device | str | None = None) -> torch.Generator:
        """A generator seeded with ``seed`` on ``device``, for sampling: make one per decoding call and
        pass it to every batch's :meth:`run`, so the same seed, inputs and batches draw the same outputs."""
        return torch.Generator(device=device).manual_seed(self.seed)

    def sentence_generator(self, index: int, device: torch.device | str | None = None) -> torch.Generator:
        """A generator for sentence ``index`` of a call, seeded from ``(seed, index)``: a sentence's
        sample then depends on the seed and its place in the input, not on the batch it is decoded in."""
        digest = hashlib.blake2b(f"{self.seed}:{index}".encode(), digest_size=8).digest()
        return torch.Generator(device=device).manual_seed(int.from_bytes(digest, "little"))

    def run(
        self,
        stepper: Stepper[S],
        src_ids: Tensor,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        *,
        rules: TokenRules | None = None,
    ) -> list[list[Hypothesis]]:
        """Search one padded batch with the chosen strategy; each sentence's hypotheses, best first (one
        unless beam search with ``n_best`` > 1). Sampling draws with ``generator``, one for the batch or
        one per sentence (default: a new one from :meth:`new_generator` on ``src_ids``'s device).

        ``rules`` (one row per sentence) force prefixes and lexical constraints
        (:mod:`qkv.decode.constraints`). Under constraints the batch is searched first without them (the
        prefixes kept): a sentence whose hypotheses all hold its phrases keeps them, unchanged, and only
        the others are searched again with the constraints, by beam search with dynamic beam allocation
        (:mod:`qkv.decode.dba`); for greedy decoding that is beam search with one beam, which takes the
        phrases as early as it can (use a beam of 4 or more for good outputs). Sampling raises ValueError.

        Shapes: src_ids (batch, src_len), padded with ``stepper.pad_id`` -> ``batch`` lists, in order.
        """
        if rules is not None and rules.has_constraints:
            if self.method == "sample":
                raise ValueError("lexical constraints need beam search (method='beam'), not sampling")
            results = self.run(stepper, src_ids, generator, rules=rules.without_constraints())
            unmet = [
                i
                for i, (phrases, hyps) in enumerate(zip(rules.phrases, results, strict=True))
                if not all(phrases.met_by(h.tokens) for h in hyps)
            ]
            if unmet:
                rows = torch.tensor(unmet, dtype=torch.long, device=src_ids.device)
                searched = self._beam(stepper, src_ids[rows], rules.sentences(unmet))
                for i, hyps in zip(unmet, searched, strict=True):
                    results[i] = hyps
            return results
        if self.method == "beam":
            return self._beam(stepper, src_ids, rules)
        if self.method == "greedy":
            found = greedy_search(stepper, src_ids, alpha=self.alpha, lengths=self.lengths, rules=rules)
            return [[h] for h in found]
        found = sample(
            stepper,
            src_ids,
            generator=self.new_generator(src_ids.device) if generator is None else generator,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            alpha=self.alpha,
            lengths=self.lengths,
            rules=rules,
        )
        return [[h] for h in found]

    def _beam(self, stepper: Stepper[S], src_ids: Tensor, rules: TokenRules | None) -> list[list[Hypothesis]]:
        """Beam search with this configuration; greedy decoding's is one beam (under constraints)."""
        greedy = self.method == "greedy"
        return beam_search(
            stepper,
            src_ids,
            beam=1 if greedy else self.beam,
            alpha=self.alpha,
            early_stopping=self.early_stopping,
            n_best=1 if greedy else self.n_best,
            lengths=self.lengths,
            rules=rules,
        )


DEFAULT_SEARCH = SearchConfig()
