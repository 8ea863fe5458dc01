"""Forced target prefixes and lexical (terminology) constraints: per-hypothesis token rules.

A search that is given :class:`TokenRules` applies them to every step's log-probs, after the length
rules of :func:`~qkv.decode.step.constrain`, and hands each row's chosen token back with
:meth:`TokenRules.advance`; rows are kept, reordered or repeated with :meth:`TokenRules.select`, the same
indices as the decoder state. Without rules a search does no extra work.

**Prefix.** A sentence's prefix ids are forced right after <s>: at step ``t < len(prefix)`` every token
but ``prefix[t]`` is banned and ``prefix[t]`` keeps its model log-prob, so the prefix counts in the
hypothesis's ``log_prob`` and ``score`` (as fairseq's ``--prefix-size`` does) and stays, verbatim, at
the start of its ``tokens``.

**Constraints.** A sentence's phrases (each a non-empty list of target ids) must each appear contiguously
in every hypothesis returned (the prefix included). Each hypothesis tracks, per phrase, the longest
suffix of its output that is a start of the phrase (the Knuth-Morris-Pratt state, so "a a b" is found
in "a a a b"); a phrase once seen stays met. ``needed`` is the number of tokens that surely meet every
phrase from here: the unmet phrases' lengths, less the progress of the best-started one (finish that
one, then write the others one after another). It is the fewest that can, except where phrases share
tokens ("a b" and "b c" fit in the 3 tokens "a b c"; ``needed`` counts 4). The rules are

* </s> is banned while a phrase is unmet;
* the length limit of the sentence is raised, where needed, to ``len(prefix) + sum(len(phrase))``, so
  every phrase fits after the prefix;
* a token is banned when taking it would leave more ``needed`` tokens than there are steps left: the
  search keeps ``needed <= steps left`` at every step, and near the limit only tokens that carry on the
  phrases survive (in effect the remaining phrase tokens are forced).

So every finished hypothesis meets every phrase, and every sentence finishes with at least one (the
model's log-probs are finite): taking the next token of the best-started phrase always lowers
``needed`` by one or more. And the rules ban no output that holds the phrases at places that do not
overlap one another, within the limit (its tokens after any step hold what ``needed`` counts); what they
may ban is an output that fits in the limit only by sharing tokens between phrases. Beam search picks
its candidates with dynamic beam allocation (:mod:`qkv.decode.dba`) when a batch has constraints.

Phrases are checked before any model runs: a phrase must be non-empty, hold no <pad>, <s> or </s> and
only ids of the target vocabulary; a sentence's phrases must differ, and none may lie inside another
(the shorter one would be met by the longer; write only the longer). Phrases whose ends overlap ("a b"
and "b c") are allowed: each is matched on its own, so "a b c" meets both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

Phrase = tuple[int, ...]
Progress = tuple[int, ...]  # per phrase: tokens of it matched so far; len(phrase) once met

NEG_INF = float("-inf")


class Phrases:
    """The phrases one sentence must contain, and how a hypothesis's progress through them moves on."""

    def __init__(self, phrases: Sequence[Phrase]) -> None:
        self.phrases = tuple(phrases)
        self.total = sum(len(p) for p in self.phrases)  # tokens of all phrases
        self.tokens = frozenset(t for p in self.phrases for t in p)
        self.start: Progress = tuple(0 for _ in self.phrases)
        self._advance: dict[tuple[Progress, int], Progress] = {}  # memo: few states, few phrase tokens

    def advance(self, progress: Progress, token: int) -> Progress:
        """The progress after ``token``. A token in no phrase resets every unmet phrase."""
        if token not in self.tokens:
            return tuple(j if j == len(p) else 0 for p, j in zip(self.phrases, progress, strict=True))
        key = (progress, token)
        found = self._advance.get(key)
        if found is None:
            found = tuple(_match(p, j, token) for p, j in zip(self.phrases, progress, strict=True))
            self._advance[key] = found
        return found

    def unmet_length(self, progress: Progress) -> int:
        """The tokens of the phrases not met yet (0: all met)."""
        return sum(len(p) for p, j in zip(self.phrases, progress, strict=True) if j < len(p))

    def needed(self, progress: Progress) -> int:
        """The tokens that surely meet every phrase from ``progress``: finish the best-started unmet one,
        then write the others one after another (the module docstring says when fewer would do)."""
        unmet = [(len(p), j) for p, j in zip(self.phrases, progress, strict=True) if j < len(p)]
        if not unmet:
            return 0
        return sum(n for n, _ in unmet) - max(j for _, j in unmet)

    def met_by(self, tokens: Sequence[int]) -> bool:
        """Whether ``tokens`` (a whole output) hold every phrase."""
        progress = self.start
        for token in tokens:
            progress = self.advance(progress, token)
        return self.unmet_length(progress) == 0

    def next_tokens(self, progress: Progress) -> set[int]:
        """The tokens that carry an unmet phrase on (its next token; for a started one also its first)."""
        found: set[int] = set()
        for p, j in zip(self.phrases, progress, strict=True):
            if j < len(p):
                found.add(p[j])
                found.add(p[0])
        return found

    def allowed(self, progress: Progress, steps_after: int) -> list[int]:
        """The tokens after which every phrase can still be met in ``steps_after`` more tokens.

        Only phrase tokens can be among them when ``unmet_length > steps_after`` (any other token leaves
        ``needed = unmet_length``); the next token of the best-started phrase always is, when
        ``needed <= steps_after + 1``.
        """
        return sorted(t for t in self.tokens if self.needed(self.advance(progress, t)) <= steps_after)


def _match(phrase: Phrase, matched: int, token: int) -> int:
    """Knuth-Morris-Pratt: the longest start of ``phrase`` that ends the matched part plus ``token``."""
    if matched == len(phrase):
        return matched  # met phrases stay met
    text = (*phrase[:matched], token)
    for length in range(min(len(text), len(phrase)), 0, -1):
        if text[len(text) - length :] == phrase[:length]:
            return length
    return 0


# -- checking what the user gave --------------------------------------------------------------------


def check_prefixes(
    prefixes: Sequence[Sequence[int]], count: int, *, vocab_size: int, special: dict[str, int]
) -> list[list[int]]:
    """The prefixes as lists, checked: one per source, ids of the vocabulary, none of ``special``.

    ``special`` names the ids a prefix may not hold (e.g. ``{"<pad>": 0, "<s>": 1, "</s>": 2}``).
    Raises ValueError naming the sentence and the id.
    """
    if len(prefixes) != count:
        raise ValueError(
            f"got {len(prefixes)} prefixes for {count} sources: give one per source ([] for none)"
        )
    checked = []
    for index, prefix in enumerate(prefixes):
        ids = [int(t) for t in prefix]
        _check_ids(ids, f"sentence {index}: prefix {ids}", vocab_size, special)
        checked.append(ids)
    return checked


def check_constraints(
    constraints: Sequence[Sequence[Sequence[int]]], count: int, *, vocab_size: int, special: dict[str, int]
) -> list[list[Phrase]]:
    """The constraints as tuples, checked as the module docstring says; one list of phrases per source.

    Raises ValueError naming the sentence, the phrase and what is wrong.
    """
    if len(constraints) != count:
        raise ValueError(
            f"got {len(constraints)} constraint lists for {count} sources: give one per source ([] for none)"
        )
    checked = []
    for index, phrases in enumerate(constraints):
        if isinstance(phrases, (str, bytes)) or not all(isinstance(p, Sequence) for p in phrases):
            raise ValueError(f"sentence {index}: constraints must be a list of phrases (lists of ids)")
        found: list[Phrase] = []
        for phrase in phrases:
            ids = tuple(int(t) for t in phrase)
            where = f"sentence {index}: constraint {list(ids)}"
            if not ids:
                raise ValueError(f"{where} is empty: a phrase needs at least one id")
            _check_ids(list(ids), where, vocab_size, special)
            for other in found:
                if ids == other:
                    raise ValueError(f"{where} is given twice: give each phrase once")
                inner, outer = (ids, other) if len(ids) <= len(other) else (other, ids)
                if _contains(outer, inner):
                    raise ValueError(
                        f"{where}: {list(inner)} lies inside {list(outer)}, so it is met whenever "
                        f"{list(outer)} is; give only {list(outer)}"
                    )
            found.append(ids)
        checked.append(found)
    return checked


def _check_ids(ids: list[int], where: str, vocab_size: int, special: dict[str, int]) -> None:
    for token in ids:
        if not 0 <= token < vocab_size:
            raise ValueError(f"{where}: id {token} is outside the target vocabulary [0, {vocab_size})")
        for name, special_id in special.items():
            if token == special_id:
                raise ValueError(f"{where} holds {name} (id {token}), which a search never produces freely")


def _contains(outer: Phrase, inner: Phrase) -> bool:
    return any(outer[i : i + len(inner)] == inner for i in range(len(outer) - len(inner) + 1))


# -- the rules a search applies ---------------------------------------------------------------------


@dataclass(frozen=True)
class TokenRules:
    """Prefixes and constraints for the rows of a search.

    sentence: the batch sentence each row decodes, (rows,) long; progress: each row's
    :class:`Phrases` progress (empty tuples when the batch has no constraints). ``prefix_ids`` is
    (batch, longest prefix), -1 after a sentence's end; ``phrases`` one :class:`Phrases` per sentence.
    """

    prefix_ids: Tensor
    phrases: tuple[Phrases, ...]
    sentence: Tensor
    progress: tuple[Progress, ...]

    @property
    def has_constraints(self) -> bool:
        return any(p.phrases for p in self.phrases)

    @classmethod
    def create(
        cls,
        batch: int,
        *,
        prefixes: Sequence[Sequence[int]] | None = None,
        constraints: Sequence[Sequence[Phrase]] | None = None,
        device: torch.device | None = None,
    ) -> TokenRules:
        """Rules for ``batch`` sentences, one row each (checked ids, see :func:`check_prefixes` and
        :func:`check_constraints`)."""
        prefixes = [[] for _ in range(batch)] if prefixes is None else prefixes
        constraints = [[] for _ in range(batch)] if constraints is None else constraints
        if len(prefixes) != batch or len(constraints) != batch:
            raise ValueError(
                f"{len(prefixes)} prefixes and {len(constraints)} constraint lists for {batch} sentences"
            )
        longest = max((len(p) for p in prefixes), default=0)
        prefix_ids = torch.full((batch, longest), -1, dtype=torch.long)
        for row, prefix in enumerate(prefixes):
            prefix_ids[row, : len(prefix)] = torch.tensor(list(prefix), dtype=torch.long)
        phrases = tuple(Phrases(c) for c in constraints)
        progress = tuple(p.start for p in phrases) if any(p.phrases for p in phrases) else ()
        sentence = torch.arange(batch, device=device)
        return cls(prefix_ids.to(device), phrases, sentence, progress)

    def without_constraints(self) -> TokenRules | None:
        """The same rules with the prefixes only (None when there are none): what an unconstrained
        search of the same sentences applies."""
        if self.prefix_ids.shape[1] == 0:
            return None
        return TokenRules(self.prefix_ids, tuple(Phrases(()) for _ in self.phrases), self.sentence, ())

    def sentences(self, indices: Sequence[int]) -> TokenRules:
        """Fresh rules (one row each, nothing produced yet) for the batch sentences ``indices``, in that
        order: for a search of only those sentences."""
        rows = torch.tensor(list(indices), dtype=torch.long, device=self.prefix_ids.device)
        phrases = tuple(self.phrases[i] for i in indices)
        progress = tuple(p.start for p in phrases) if any(p.phrases for p in phrases) else ()
        sentence = torch.arange(len(indices), device=self.sentence.device)
        return TokenRules(self.prefix_ids[rows], phrases, sentence, progress)

    def limits(self, max_lens: Tensor, most: int) -> Tensor:
        """Each sentence's length limit, raised to fit its prefix and every phrase after it.

        ``most`` is the stepper's own limit (its positions): a sentence whose prefix and phrases need
        more raises ValueError. Shapes: max_lens (batch,) -> (batch,).
        """
        prefix_lens = (self.prefix_ids >= 0).sum(dim=1)
        phrase_lens = torch.tensor([p.total for p in self.phrases], dtype=torch.long)
        needed = (prefix_lens.cpu() + phrase_lens).to(max_lens.device)
        too_long = (needed > most).nonzero().flatten().tolist()
        if too_long:
            row = too_long[0]
            raise ValueError(f"sentence {row}: {room_problem(int(needed[row]), most)}")
        return torch.maximum(max_lens, needed)

    def select(self, rows: Tensor) -> TokenRules:
        """Keep rows ``rows`` (rows',) in that order; an index may repeat (beams)."""
        progress = self.progress
        if progress:
            progress = tuple(progress[r] for r in rows.tolist())
        return TokenRules(self.prefix_ids, self.phrases, self.sentence[rows], progress)

    def repeat_each(self, times: int) -> TokenRules:
        """Row i becomes rows ``i * times`` .. ``i * times + times - 1`` (beam search's start)."""
        rows = torch.arange(self.sentence.numel(), device=self.sentence.device)
        return self.select(rows.repeat_interleave(times))

    def advance(self, tokens: Tensor) -> TokenRules:
        """The rules after each row took ``tokens`` (rows,)."""
        if not self.progress:
            return self  # a prefix is followed by the step count alone
        sentences = self.sentence.tolist()
        progress = tuple(
            self.phrases[s].advance(p, t)
            for s, p, t in zip(sentences, self.progress, tokens.tolist(), strict=True)
        )
        return TokenRules(self.prefix_ids, self.phrases, self.sentence, progress)

    def restrict(self, log_probs: Tensor, steps_done: int, max_lens: Tensor, eos_id: int) -> None:
        """Write the rules into one step's log-probs, in place: the prefix, then the constraints.

        ``steps_done`` tokens were produced before this step (every row alike); ``max_lens`` is each
        row's length limit (as raised by :meth:`limits`). Shapes: log_probs (rows, vocab); max_lens (rows,).
        """
        if steps_done < self.prefix_ids.shape[1]:
            self._force_prefix(log_probs, steps_done)
        if self.progress:
            self._constrain(log_probs, steps_done, max_lens, eos_id)

    def _force_prefix(self, log_probs: Tensor, steps_done: int) -> None:
        forced = self.prefix_ids[self.sentence, steps_done]  # (rows,), -1 past a row's prefix
        is_forced = forced >= 0
        column = forced.clamp(min=0)[:, None]  # (rows, 1)
        kept = torch.where(is_forced[:, None], log_probs.gather(1, column), NEG_INF)
        log_probs.masked_fill_(is_forced[:, None], NEG_INF)
        log_probs.scatter_(1, column, torch.maximum(kept, log_probs.gather(1, column)))

    def _constrain(self, log_probs: Tensor, steps_done: int, max_lens: Tensor, eos_id: int) -> None:
        steps_left = (max_lens - steps_done).tolist()  # tokens each row may still produce before </s>
        unmet: list[int] = []
        tight: list[tuple[int, list[int]]] = []  # rows that must carry the phrases on, and how
        for row, (s, progress) in enumerate(zip(self.sentence.tolist(), self.progress, strict=True)):
            phrases = self.phrases[s]
            unmet_length = phrases.unmet_length(progress)
            if unmet_length == 0:
                continue
            unmet.append(row)
            if unmet_length > steps_left[row] - 1:
                tight.append((row, phrases.allowed(progress, steps_left[row] - 1)))
        if unmet:
            log_probs[torch.tensor(unmet, device=log_probs.device), eos_id] = NEG_INF
        for row, allowed in tight:
            columns = torch.tensor(allowed, dtype=torch.long, device=log_probs.device)
            kept = log_probs[row, columns]
            log_probs[row] = NEG_INF
            log_probs[row, columns] = kept


def room_problem(needed: int, most: int) -> str | None:
    """What is wrong when a sentence's forced prefix and constraint phrases need ``needed`` tokens and the
    model can write ``most`` (its positions less one for <s>), or None when they fit. The one wording of
    this rule, for decode, the Translator's per-line checks and the server."""
    if needed <= most:
        return None
    return f"its prefix and constraints need {needed} tokens, more than the {most} the model can write"
