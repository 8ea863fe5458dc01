"""What the inference worker runs for one batch: the request's search over its texts, then, for the texts
that asked for it, the tokens and the cross-attention of the best candidate.

A batch shares one :class:`Options` (the key the batcher merges on); each text is a :class:`Job`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from qkv.decode import SearchConfig
from qkv.models.seq2seq import Transformer
from qkv.serve.models import ServedModel
from qkv.translator import Translation, Translator
from qkv.viz import cross_attention

AttentionMode = Literal["none", "mean", "heads"]

# What "mean" averages; the response names it in its "averaged" field.
AVERAGED = "layers and heads"


@dataclass(frozen=True)
class Options:
    """A batch's model and search. ``group`` keeps texts apart that must not share a batch with other
    requests' texts (sampling: each sentence's seed is its index in the batch)."""

    model: str
    method: Literal["greedy", "beam", "sample"]
    beam: int
    n_best: int
    max_length: int | None
    int8: bool
    group: int | None = None
    seed: int = 0
    has_rules: bool = False  # texts with a prefix or constraints are batched only with each other

    def search(self, default: SearchConfig) -> SearchConfig:
        """The server's default search with this request's options; ValueError naming a bad field."""
        lengths = default.lengths
        if self.max_length is not None:
            lengths = dataclasses.replace(lengths, max_len=self.max_length)
        return dataclasses.replace(
            default,
            method=self.method,
            beam=self.beam if self.method == "beam" else 1,
            n_best=self.n_best if self.method == "beam" else 1,
            lengths=lengths,
            seed=self.seed,
        )


@dataclass(frozen=True)
class Job:
    """One text of a request, what to report about it, and the target text its candidates must start
    with (``prefix``) and the phrases they must contain (``constraints``), as
    :meth:`qkv.translator.Translator.translations` takes them (the request handler checked them)."""

    text: str
    attention: AttentionMode = "none"
    tokens: bool = False
    prefix: str = ""
    constraints: tuple[str, ...] = ()


@dataclass(frozen=True)
class Result:
    """A text's translation, and its tokens and attention when asked for.

    Shapes: ``per_head`` (layers, heads, len(target_tokens), len(source_tokens)); ``mean`` its average
    over layers and heads (target rows x source columns); each row sums to 1. Both are None unless
    asked for, and empty lists for an empty text (no source tokens to attend to).
    """

    translation: Translation
    source_tokens: list[str] | None = None
    target_tokens: list[str] | None = None
    layers: int = 0
    heads: int = 0
    mean: list[list[float]] | None = None
    per_head: list[list[list[list[float]]]] | None = None


class Runner:
    """Runs batches for the :class:`~qkv.serve.batcher.Batcher`: ``runner(options, jobs) -> results``."""

    def __init__(self, models: dict[str, ServedModel]) -> None:
        self.models = models
        self._translators: dict[Options, Translator] = {}

    def translator(self, options: Options) -> Translator:
        """The model's translator with ``options``' search (kept for the next batch with the same options)."""
        found = self._translators.get(options)
        if found is None:
            base = self.models[options.model].translator
            found = dataclasses.replace(base, search=options.search(base.search), int8=options.int8)
            if len(self._translators) > 64:  # option sets are few in practice; never let them grow
                self._translators.clear()
            self._translators[options] = found
        return found

    def __call__(self, key: Hashable, payloads: list[Any]) -> list[Any]:
        assert isinstance(key, Options)
        jobs: list[Job] = payloads
        translator = self.translator(key)
        with torch.inference_mode():
            texts = [job.text for job in jobs]
            if key.has_rules:
                translations = translator.translations(
                    texts,
                    prefixes=[job.prefix for job in jobs],
                    constraints=[list(job.constraints) for job in jobs],
                )
            else:
                translations = translator.translations(texts)
            return [self._result(translator, job, t) for job, t in zip(jobs, translations, strict=True)]

    @staticmethod
    def _result(translator: Translator, job: Job, translation: Translation) -> Result:
        if not job.tokens and job.attention == "none":
            return Result(translation)
        src_tok, tgt_tok = translator.src_tokenizer, translator.tgt_tokenizer
        eos = translator.model.config.eos_id
        best = translation.candidates[0]
        source_tokens = [src_tok.id_to_token(i) for i in translation.source_ids]
        target_tokens = [tgt_tok.id_to_token(i) for i in [*best.ids, eos]]
        if job.attention == "none":
            return Result(translation, source_tokens, target_tokens)
        model = translator.model
        assert isinstance(model, Transformer), "the request handler refuses attention for other models"
        layers, heads = model.config.decoder_layers, model.config.heads
        if not translation.source_ids:
            per_head_empty: list[list[list[list[float]]]] | None = [] if job.attention == "heads" else None
            return Result(translation, source_tokens, target_tokens, layers, heads, [], per_head_empty)
        weights = cross_attention(model, translation.source_ids, best.ids)
        # weights: (layers, heads, len(target_tokens), len(source_tokens))
        layers, heads = int(weights.shape[0]), int(weights.shape[1])
        mean = weights.mean(dim=(0, 1))
        per_head = _rounded(weights) if job.attention == "heads" else None
        return Result(translation, source_tokens, target_tokens, layers, heads, _rounded(mean), per_head)


def _rounded(weights: torch.Tensor) -> Any:
    """Weights as nested lists of floats with 6 decimals (rows still sum to 1 within 1e-5, and the JSON
    is a third of float32's 17-digit repr)."""
    return torch.round(weights.double(), decimals=6).tolist()
