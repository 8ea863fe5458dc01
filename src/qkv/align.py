"""Word alignment from cross-attention: for each output word, the source word it was translated from.

The rule is fairseq's ``--print-alignment`` and Garg et al. (2019, "Jointly Learning to Align and
Translate with Transformer Models", section 3): teacher-force the output, average one decoder layer's
cross-attention over its heads, and link each output word to the source word with the most attention.
Words, not subword pieces, are linked:

- a *word* (:func:`words`) is a run of letters and digits (inner apostrophes and hyphens kept: ``don't``,
  ``well-known``), a punctuation mark on its own, or a single character of a script written without
  spaces (Chinese, Japanese kana): ``我爱你。`` is four words, ``I love you.`` is four (``you`` and ``.``);
- a token belongs to the words its characters overlap (source: the tokenizer's offsets into the text;
  output: the text each token adds when the ids are decoded one more at a time); a token of several words
  counts for each;
- a source word's attention is the sum over its tokens (keys summed), an output word's row the mean over
  its tokens (queries averaged), as the attention plots merge pieces; </s> is left out on both sides.

Every output word gets exactly one link, ``(source word, output word)``, written ``i-j`` as fairseq and
Marian do. Which layer aligns best depends on the model: docs/translating.md measures each layer of the demo
model against the demo grammar's alignments (:func:`alignment_error_rate`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import tokenizers
import torch

from qkv.models.seq2seq import Transformer
from qkv.tokenize import Tokenizer
from qkv.viz import cross_attention

# Scripts written without spaces: each character is a word (CJK ideographs, their extensions and
# compatibility forms, Hiragana, Katakana).
_UNSPACED = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003ffff"
_WORD = re.compile(
    rf"[{_UNSPACED}]"  # one character of an unspaced script
    rf"|(?:(?![{_UNSPACED}])[^\W_])+(?:['’-](?:(?![{_UNSPACED}])[^\W_])+)*"  # letters and digits
    r"|[^\s]"  # anything else that is not a space: punctuation, symbols, one character each
)

#: Which decoder layer aligns by default: the last. Garg et al. (2019) took the penultimate layer of
#: their 6-layer models; on qkv's demo model (3 decoder layers) the last layer has the lowest alignment
#: error rate against the demo grammar's alignments (docs/translating.md). Negative numbers count from
#: the last layer.
DEFAULT_LAYER = -1


@dataclass(frozen=True)
class WordAlignment:
    """The words of a source text and of its translation, and ``links``: ``(i, j)`` when output word
    ``j`` was translated from source word ``i`` (0-based), one per output word, in output order."""

    source_words: list[str]
    target_words: list[str]
    links: list[tuple[int, int]]

    def __str__(self) -> str:
        """The Pharaoh format of fairseq and Marian: ``0-0 1-2 2-1``."""
        return " ".join(f"{i}-{j}" for i, j in self.links)


def words(text: str) -> list[tuple[int, int]]:
    """The ``(start, end)`` character spans of ``text``'s words (see the module docstring)."""
    return [m.span() for m in _WORD.finditer(text)]


def tokens_to_words(
    token_spans: Sequence[tuple[int, int]], word_spans: Sequence[tuple[int, int]]
) -> list[list[int]]:
    """For each token's character span, the words whose spans it overlaps (none for a space)."""
    found: list[list[int]] = []
    for start, end in token_spans:
        found.append([w for w, (ws, we) in enumerate(word_spans) if start < we and ws < end])
    return found


def source_token_spans(tokenizer: Tokenizer, text: str, ids: Sequence[int]) -> list[tuple[int, int]] | None:
    """Each of ``ids``'s character span in ``text``, from the tokenizer's offsets, where ``ids`` is
    ``text``'s encoding (or a prefix of it, when the model's positions cut it), without </s>. None for a
    tokenizer that keeps no offsets (SentencePiece) or ids that are not the text's encoding."""
    inner = getattr(tokenizer, "inner", None)
    if not isinstance(inner, tokenizers.Tokenizer):
        return None
    encoding = inner.encode(text, add_special_tokens=False)
    if list(encoding.ids[: len(ids)]) != list(ids):
        return None
    return [(int(s), int(e)) for s, e in encoding.offsets[: len(ids)]]


def output_token_spans(tokenizer: Tokenizer, ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """The decoded text of ``ids`` and each token's character span in it: the characters that decoding
    one more token adds (empty for a special token)."""
    text = tokenizer.decode(ids)
    spans: list[tuple[int, int]] = []
    end = 0
    for k in range(1, len(ids) + 1):
        prefix = tokenizer.decode(ids[:k])
        common = 0  # decoders may write a partial character (a byte piece) differently until it is whole
        limit = min(len(prefix), len(text))
        while common < limit and prefix[common] == text[common]:
            common += 1
        start, end = end, max(end, common)
        spans.append((start, end))
    return text, spans


def word_links(
    weights: torch.Tensor, source_words: Sequence[Sequence[int]], target_words: Sequence[Sequence[int]]
) -> list[tuple[int, int]]:
    """The argmax rule over words: ``weights`` is one layer's head-averaged cross-attention without the
    </s> row and column; ``source_words[t]`` / ``target_words[t]`` are the words of source / output token
    ``t``. A token's weight is shared equally by the words it belongs to.

    Shapes: weights (output tokens, source tokens).
    """
    n_src = 1 + max((w for ws in source_words for w in ws), default=-1)
    n_tgt = 1 + max((w for ws in target_words for w in ws), default=-1)
    if n_src == 0 or n_tgt == 0:
        return []
    to_src = torch.zeros(weights.shape[1], n_src, dtype=torch.float64)  # token -> word, keys summed
    for t, ws in enumerate(source_words):
        for w in ws:
            to_src[t, w] = 1.0 / len(ws)
    from_tgt = torch.zeros(n_tgt, weights.shape[0], dtype=torch.float64)  # word <- tokens, queries averaged
    for t, ws in enumerate(target_words):
        for w in ws:
            from_tgt[w, t] = 1.0
    from_tgt /= from_tgt.sum(1, keepdim=True).clamp(min=1.0)
    by_word = from_tgt @ weights.double() @ to_src  # (target words, source words)
    return [(int(i), j) for j, i in enumerate(by_word.argmax(1).tolist())]


def resolve_layer(model: Transformer, layer: int | None) -> int:
    """A decoder layer index counted from 0; None is :data:`DEFAULT_LAYER`. ValueError when out of range."""
    count = model.config.decoder_layers
    wanted = DEFAULT_LAYER if layer is None else layer
    if not -count <= wanted < count:
        raise ValueError(f"layer {wanted}: the decoder has layers 0..{count - 1} (or -{count}..-1)")
    return wanted % count


def align(
    model: Transformer,
    src_tokenizer: Tokenizer,
    tgt_tokenizer: Tokenizer,
    source: str,
    source_ids: Sequence[int],
    output_ids: Sequence[int],
    *,
    layer: int | None = None,
    text_start: int = 0,
) -> WordAlignment:
    """The word alignment of ``source`` and the output ``output_ids`` (a candidate's ``ids``, without
    <s>/</s>) by the rule of the module docstring, with decoder layer ``layer`` (default
    :data:`DEFAULT_LAYER`).

    ``source_ids`` are the ids the model read (ending in </s>, as :meth:`Translator.source_ids` gives
    them); they encode ``source``, whose words start at character ``text_start`` (characters before it,
    such as a multilingual model's ``>>fra<<`` token, belong to no word). With a tokenizer that keeps no
    character offsets (a Marian SentencePiece one), the source words are those of the decoded ids.
    """
    index = resolve_layer(model, layer)
    ids = list(source_ids)
    if ids and ids[-1] == model.config.eos_id:
        ids = ids[:-1]
    src_token_spans = source_token_spans(src_tokenizer, source, ids)
    if src_token_spans is None:  # no offsets: the words of the source as the model read it
        source, src_token_spans = output_token_spans(src_tokenizer, ids)
        text_start = 0
    src_spans = [(s, e) for s, e in words(source) if s >= text_start]
    src_words = [source[s:e] for s, e in src_spans]
    tgt_text, out_spans = output_token_spans(tgt_tokenizer, output_ids)
    tgt_spans = words(tgt_text)
    tgt_words = [tgt_text[s:e] for s, e in tgt_spans]
    if not ids or not output_ids:
        return WordAlignment(src_words, tgt_words, [])
    token_src = tokens_to_words(src_token_spans, src_spans)
    token_tgt = tokens_to_words(out_spans, tgt_spans)
    weights = cross_attention(model, [*ids, model.config.eos_id], list(output_ids))[index].mean(0)
    return WordAlignment(src_words, tgt_words, word_links(weights[:-1, :-1], token_src, token_tgt))


def alignment_error_rate(
    found: Sequence[tuple[int, int]],
    sure: Sequence[tuple[int, int]],
    possible: Sequence[tuple[int, int]] = (),
) -> float:
    """Och & Ney's (2003) alignment error rate of the links ``found`` against the gold ``sure`` links and
    ``possible`` ones (the sure links count as possible too): ``1 - (|A∩S| + |A∩P|) / (|A| + |S|)``.
    0 is a perfect alignment; 0 for two empty alignments."""
    a, s = set(found), set(sure)
    p = s | set(possible)
    if not a and not s:
        return 0.0
    return 1.0 - (len(a & s) + len(a & p)) / (len(a) + len(s))
