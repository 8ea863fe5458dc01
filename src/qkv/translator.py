"""Text in, text out: tokenize, decode with :mod:`qkv.decode`, detokenize.

Used by ``qkv translate``, ``qkv evaluate``, the demo and BLEU validation during training. Guarantees
one output line per input line: an empty input gives an empty output, an over-long one is truncated to
the model's positions (with a warning naming it), and outputs never contain a line break.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from qkv.align import WordAlignment, align
from qkv.decode import Hypothesis, SearchConfig, decode
from qkv.decode import nat as nat_decode
from qkv.decode.constraints import room_problem
from qkv.decode.search import DEFAULT_SEARCH
from qkv.models.nat import NATransformer
from qkv.models.seq2seq import Transformer
from qkv.tokenize import Tokenizer

_LINE_BREAKS = re.compile("[\r\n\u0085\u2028\u2029\v\f]")


@dataclass(frozen=True)
class Candidate:
    """One output of a text: its detokenized ``text`` (one line), its output ``ids`` (without <s> and
    </s>), and the search's ``score`` and ``log_prob`` (:class:`~qkv.decode.hypothesis.Hypothesis`;
    for a non-autoregressive model, its own length-normalised score and log-probability)."""

    text: str
    ids: list[int]
    score: float
    log_prob: float


@dataclass(frozen=True)
class Translation:
    """A text's translation: the ``source_ids`` the model read (ending in </s>; empty for an empty text)
    and its ``candidates``, best first (one, or ``n_best`` with beam search)."""

    source_ids: list[int]
    candidates: list[Candidate]

    @property
    def text(self) -> str:
        """The best candidate's text."""
        return self.candidates[0].text


@dataclass
class Translator:
    """A model with its tokenizers and decoding options.

    An autoregressive model decodes with ``search`` (:class:`~qkv.decode.search.SearchConfig`: greedy,
    beam search or sampling, and their options); a non-autoregressive one
    (:class:`~qkv.models.nat.NATransformer`) with mask-predict: ``iterations`` passes (1 = the single
    pass) for each of its ``length_beam`` most probable lengths. With a ``teacher`` (an autoregressive
    model with its tokenizers), the length beam's candidates are rescored by it instead of by the NAT's
    own average log-probability. ``adaptive`` stops refining a candidate at the first pass that
    changes none of its tokens (``iterations`` is then a maximum). ``int8`` decodes with int8 weights and
    dynamically quantised activations (CPU), the teacher's rescoring included. ``target_lang`` (a
    multilingual Marian model's output language, e.g. ``"fra"``) is written as its token (``>>fra<<``) in
    front of every text that does not start with one, as MarianTokenizer users write it.
    """

    model: Transformer | NATransformer
    src_tokenizer: Tokenizer
    tgt_tokenizer: Tokenizer
    search: SearchConfig = DEFAULT_SEARCH
    batch_size: int = 64
    warn: Callable[[str], None] | None = None
    iterations: int = 1
    length_beam: int = 1
    teacher: tuple[Transformer, Tokenizer, Tokenizer] | None = None
    int8: bool = False
    adaptive: bool = False
    target_lang: str | None = None
    _shared_vocabularies: tuple[tuple[object, ...], bool, bool] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def translate(self, texts: Sequence[str], *, first_line: int = 1) -> list[str]:
        """One translation per text, in order. ``first_line`` numbers the texts in warnings."""
        return [t.text for t in self.translations(texts, first_line=first_line)]

    def translations(
        self,
        texts: Sequence[str],
        *,
        first_line: int = 1,
        prefixes: Sequence[str] | None = None,
        constraints: Sequence[Sequence[str]] | None = None,
    ) -> list[Translation]:
        """Each text's :class:`Translation` (its candidates with their ids and scores), in order.

        ``prefixes`` (one per text, "" for none) are forced at the start of every candidate and
        ``constraints`` (one list of phrases per text, [] for none) must each appear in every candidate
        (:func:`qkv.decode.decode`: beam search with dynamic beam allocation; not with sampling). Both are
        text in the target language, encoded with the target tokenizer as standalone texts
        (:meth:`target_ids`). ValueError names the line (``first_line`` numbers the texts) whose prefix or
        constraints cannot be met (:meth:`controls_problem`), and a non-autoregressive model takes
        neither. With sampling, text ``k`` is drawn as sentence ``first_line - 1 + k`` of a stream
        (:func:`qkv.decode.decode`'s ``first_index``): the same seed and line number give the same
        sample, whatever the batches.
        """
        sources = self.source_ids(texts, first_line=first_line)
        forced, phrases = self._all_controls_ids(len(texts), prefixes, constraints, first_line)
        if isinstance(self.model, NATransformer):
            if any(forced or ()) or any(phrases or ()):
                raise ValueError("a non-autoregressive model decodes without prefixes or constraints")
            found = [[hyp] for hyp in self._non_autoregressive(self.model, sources)]
        else:
            # Sampling seeds each sentence from (seed, first_index + its index in the call): a line draws
            # the same sample whatever batches a stream is cut into.
            found = decode(
                self.model,
                sources,
                self.search,
                batch_size=self.batch_size,
                int8=self.int8,
                prefixes=forced,
                constraints=phrases,
                first_index=first_line - 1,
            )
        return [
            Translation(
                source, [Candidate(self.text_of(h.tokens), h.tokens, h.score, h.log_prob) for h in hyps]
            )
            for source, hyps in zip(sources, found, strict=True)
        ]

    def _all_controls_ids(
        self,
        count: int,
        prefixes: Sequence[str] | None,
        constraints: Sequence[Sequence[str]] | None,
        first_line: int,
    ) -> tuple[list[list[int]] | None, list[list[list[int]]] | None]:
        """Every text's prefix and phrases as ids (None where not given), each checked with
        :meth:`controls_problem`; ValueError names the line."""
        if prefixes is not None and len(prefixes) != count:
            raise ValueError(
                f'got {len(prefixes)} prefixes for {count} texts: give one per text ("" for none)'
            )
        if constraints is not None and len(constraints) != count:
            raise ValueError(
                f"got {len(constraints)} constraint lists for {count} texts: give one per text ([] for none)"
            )
        if prefixes is None and constraints is None:
            return None, None
        forced: list[list[int]] = []
        phrases: list[list[list[int]]] = []
        for k in range(count):
            prefix = prefixes[k] if prefixes is not None else ""
            wanted = constraints[k] if constraints is not None else []
            problem = self.controls_problem(prefix, wanted)
            if problem is not None:
                raise ValueError(f"line {first_line + k}: {problem}")
            ids = self.controls_ids(prefix, wanted)
            forced.append(ids[0])
            phrases.append(ids[1])
        return (None if prefixes is None else forced), (None if constraints is None else phrases)

    def target_ids(self, phrase: str) -> list[int]:
        """A target-language phrase (a prefix or a constraint) as ids: the phrase encoded as a standalone
        text, with its outer spaces removed. So a phrase is matched as the tokenizer writes it at the start
        of a word: ``"cat"`` is ``▁cat`` and is met by "a cat." but not by "category" (whose first piece may
        differ); a subword tokenizer can segment a word differently inside a longer one."""
        return self.tgt_tokenizer.encode(phrase.strip())

    def unwritable(self, phrase: str) -> list[str]:
        """The characters of a target phrase that the target vocabulary cannot write (they would become
        <unk>, which decodes to nothing), each once, in order; [] when it writes the whole phrase."""
        unk = self.tgt_tokenizer.unk_id
        if unk is None or unk not in self.target_ids(phrase):
            return []
        chars = [c for c in dict.fromkeys(phrase) if not c.isspace() and unk in self.tgt_tokenizer.encode(c)]
        return chars or [phrase.strip()]

    def controls_problem(self, prefix: str, constraints: Sequence[str]) -> str | None:
        """What is wrong with a text's prefix and constraints, or None: an empty constraint, a phrase
        with characters the target vocabulary cannot write (a phrase met by <unk> would not be in the
        text), or more tokens than the model's positions leave for the output."""
        if isinstance(constraints, str):
            return "constraints must be a list of phrases"
        for what, phrase in [("prefix", prefix), *(("constraint", c) for c in constraints)]:
            if what == "constraint" and not phrase.strip():
                return f"constraint {phrase!r} is empty"
            missing = self.unwritable(phrase) if phrase.strip() else []
            if missing:
                return f"{what} {phrase!r}: the model's vocabulary cannot write {''.join(missing)!r}"
        forced, phrases = self.controls_ids(prefix, constraints)
        return room_problem(len(forced) + sum(map(len, phrases)), self.model.config.max_positions - 1)

    def controls_ids(self, prefix: str, constraints: Sequence[str]) -> tuple[list[int], list[list[int]]]:
        """A text's prefix and constraint phrases as ids: duplicate phrases once, and a phrase that lies
        inside another left out (the longer one meets it)."""
        ids: list[list[int]] = []
        for phrase in constraints:
            encoded = self.target_ids(phrase)
            if encoded not in ids:
                ids.append(encoded)
        phrases = [p for p in ids if not any(p != q and _inside(p, q) for q in ids)]
        return (self.target_ids(prefix) if prefix.strip() else []), phrases

    def alignments(
        self, texts: Sequence[str], translations: Sequence[Translation], *, layer: int | None = None
    ) -> list[WordAlignment]:
        """The word alignment of each text with its best candidate (:func:`qkv.align.align`: the argmax
        of decoder layer ``layer``'s head-averaged cross-attention, over words). ValueError for a
        non-autoregressive model (its decoder reads no causal prefix to align)."""
        if not isinstance(self.model, Transformer):
            raise ValueError("word alignments need an autoregressive model")
        found = []
        for text, translation in zip(texts, translations, strict=True):
            source, start = self._source_text(text)
            found.append(
                align(
                    self.model,
                    self.src_tokenizer,
                    self.tgt_tokenizer,
                    source,
                    translation.source_ids,
                    translation.candidates[0].ids,
                    layer=layer,
                    text_start=start,
                )
            )
        return found

    def source_ids(self, texts: Sequence[str], *, first_line: int = 1) -> list[list[int]]:
        """Each text as the model reads it: ``target_lang``'s token in front where set, tokenized, cut to
        the model's positions (with a warning naming the line), ending in </s>; [] for an empty text."""
        c = self.model.config
        sources: list[list[int]] = []
        for offset, text in enumerate(texts):
            text, _ = self._source_text(text)
            ids = self.src_tokenizer.encode(text) if text.strip() else []
            if len(ids) + 1 > c.max_positions:
                if self.warn is not None:
                    self.warn(
                        f"line {first_line + offset}: {len(ids)} tokens, more than the model's "
                        f"{c.max_positions - 1}; truncated to the first {c.max_positions - 1}"
                    )
                ids = ids[: c.max_positions - 1]
            sources.append([*ids, c.eos_id] if ids else [])
        return sources

    def _source_text(self, text: str) -> tuple[str, int]:
        """The text the source tokenizer reads (``target_lang``'s token in front where set) and where the
        user's text starts in it."""
        if self.target_lang is not None and text.strip() and not text.lstrip().startswith(">>"):
            prefix = f">>{self.target_lang}<< "
            return prefix + text, len(prefix)
        return text, 0

    def text_of(self, ids: Sequence[int]) -> str:
        """Output ids as one line of text."""
        return _LINE_BREAKS.sub(" ", self.tgt_tokenizer.decode(ids)).strip()

    def _teacher_shares_vocabularies(self) -> tuple[bool, bool]:
        """Whether the teacher's source and target tokenizers are this model's (the same serialised
        tokenizer and the same special ids), worked out once for each model, teacher and tokenizers
        (the fields may be reassigned: the answer is kept with the objects it was worked out for)."""
        assert self.teacher is not None
        inputs = (self.teacher, self.model, self.src_tokenizer, self.tgt_tokenizer)
        found = self._shared_vocabularies
        if found is not None and all(a is b for a, b in zip(found[0], inputs, strict=True)):
            return found[1], found[2]
        teacher, teacher_src, teacher_tgt = self.teacher
        mine, theirs = self.model.config, teacher.config
        specials = (mine.pad_id, mine.bos_id, mine.eos_id) == (theirs.pad_id, theirs.bos_id, theirs.eos_id)
        same_src = specials and _same_tokenizer(self.src_tokenizer, teacher_src)
        same_tgt = specials and _same_tokenizer(self.tgt_tokenizer, teacher_tgt)
        self._shared_vocabularies = (inputs, same_src, same_tgt)
        return same_src, same_tgt

    def _non_autoregressive(self, model: NATransformer, sources: list[list[int]]) -> list[Hypothesis]:
        """The NAT model's best candidate for each source, chosen by the teacher if there is one."""
        found = nat_decode.translate_ids(
            model,
            sources,
            iterations=self.iterations,
            length_beam=self.length_beam,
            batch_size=self.batch_size,
            int8=self.int8,
            adaptive=self.adaptive,
        )
        if self.teacher is None or self.length_beam == 1:
            return [hyps[0] for hyps in found]
        teacher, teacher_src, teacher_tgt = self.teacher
        eos = teacher.config.eos_id
        # Through text where the teacher has its own vocabulary (a distilled NAT may train its own
        # tokenizer); with the same tokenizers (a NAT started from its teacher's weights), the ids as
        # they are: the teacher scores exactly the candidate the NAT wrote, not a re-segmentation of its
        # text, and without a decode and an encode per candidate.
        same_src, same_tgt = self._teacher_shares_vocabularies()
        flat_src: list[list[int]] = []
        flat_out: list[list[int]] = []
        for source, hyps in zip(sources, found, strict=True):
            if same_src or not source:
                src_ids = list(source)
            else:
                src_ids = [*teacher_src.encode(self.src_tokenizer.decode(source)), eos]
            for hyp in hyps:
                flat_src.append(src_ids)
                flat_out.append(
                    hyp.tokens if same_tgt else teacher_tgt.encode(self.tgt_tokenizer.decode(hyp.tokens))
                )
        scores: list[float] = []
        chunk = self.batch_size * self.length_beam  # the candidates of batch_size sentences: one pass
        for start in range(0, len(flat_src), chunk):
            end = start + chunk
            scores += nat_decode.teacher_scores(
                teacher, flat_src[start:end], flat_out[start:end], int8=self.int8
            )
        best: list[Hypothesis] = []
        row = 0
        for hyps in found:
            chosen = max(range(len(hyps)), key=lambda i: scores[row + i])
            best.append(hyps[chosen])
            row += len(hyps)
        return best


def _inside(short: list[int], long: list[int]) -> bool:
    """Whether ``short`` occurs contiguously in ``long``."""
    n = len(short)
    return any(long[i : i + n] == short for i in range(len(long) - n + 1))


def _same_tokenizer(a: Tokenizer, b: Tokenizer) -> bool:
    """The same ids for every text: one object, or the same serialised tokenizer and special-token rule."""
    return a is b or (a.specials_in_text == b.specials_in_text and a.inner.to_str() == b.inner.to_str())
