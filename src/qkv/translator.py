"""Text in, text out: tokenize, decode with :mod:`qkv.decode`, detokenize.

Used by ``qkv translate``, ``qkv evaluate``, the demo and BLEU validation during training. Guarantees
one output line per input line: an empty input gives an empty output, an over-long one is truncated to
the model's positions (with a warning naming it), and outputs never contain a line break.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from qkv.decode import Method, translate_ids
from qkv.decode.greedy import DEFAULT_MAX_LEN_A, DEFAULT_MAX_LEN_B
from qkv.decode.hypothesis import DEFAULT_ALPHA
from qkv.models.seq2seq import Transformer
from qkv.tokenize import Tokenizer

_LINE_BREAKS = re.compile("[\r\n\u0085\u2028\u2029\v\f]")


@dataclass
class Translator:
    """A model with its tokenizers and decoding options."""

    model: Transformer
    src_tokenizer: Tokenizer
    tgt_tokenizer: Tokenizer
    method: Method = "beam"
    beam: int = 4
    alpha: float = DEFAULT_ALPHA
    max_len_a: float = DEFAULT_MAX_LEN_A
    max_len_b: int = DEFAULT_MAX_LEN_B
    batch_size: int = 64
    warn: Callable[[str], None] | None = None

    def translate(self, texts: Sequence[str], *, first_line: int = 1) -> list[str]:
        """One translation per text, in order. ``first_line`` numbers the texts in warnings."""
        c = self.model.config
        sources: list[list[int]] = []
        for offset, text in enumerate(texts):
            ids = self.src_tokenizer.encode(text) if text.strip() else []
            if len(ids) + 1 > c.max_positions:
                if self.warn is not None:
                    self.warn(
                        f"line {first_line + offset}: {len(ids)} tokens, more than the model's "
                        f"{c.max_positions - 1}; truncated to the first {c.max_positions - 1}"
                    )
                ids = ids[: c.max_positions - 1]
            sources.append([*ids, c.eos_id] if ids else [])
        outputs = translate_ids(
            self.model,
            sources,
            method=self.method,
            beam=self.beam,
            alpha=self.alpha,
            max_len_a=self.max_len_a,
            max_len_b=self.max_len_b,
            batch_size=self.batch_size,
        )
        return [_LINE_BREAKS.sub(" ", self.tgt_tokenizer.decode(ids)).strip() for ids in outputs]
