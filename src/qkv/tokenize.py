"""Tokenizers: a thin layer over Hugging Face `tokenizers`.

Two vocabularies can be trained here, both suited to mixed Chinese/English text:

- **BPE** (:func:`train_bpe`): NFKC, then a Metaspace pre-tokenizer (spaces become ``▁`` and start a new
  piece), punctuation split off words, and every Han character its own piece. BPE merges therefore build
  English subwords but never glue Chinese characters together or punctuation onto words (``▁you.``).
- **Characters** (:func:`train_chars`): every character one token; spaces become ``▁``.

Both reserve the same special tokens at fixed ids (:data:`SPECIAL_TOKENS`) and decode with a Metaspace
decoder, so ``decode(encode(s)) == unicodedata.normalize("NFKC", s)`` for text whose characters are all in the
vocabulary (the BPE tokenizer also drops leading whitespace, as SentencePiece does). Characters outside the
vocabulary become ``<unk>``: measure how often with :meth:`Tokenizer.unk_rate`.

A joint vocabulary is one tokenizer trained on both languages; separate vocabularies are one per side.
:meth:`Tokenizer.load` reads any ``tokenizer.json``; :meth:`Tokenizer.from_vocab_txt` builds a BERT WordPiece
tokenizer from a ``vocab.txt``. Their special ids are whatever the file says (``None`` where absent).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import tokenizers
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers

from qkv.storage import CheckpointError, write_file

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "PAD_ID",
    "SPECIAL_TOKENS",
    "UNK_ID",
    "Tokenizer",
    "train_bpe",
    "train_chars",
    "train_tokenizer",
]

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
UNK_ID = 3
# Position in this list is the id: trainers add special tokens first, in this order.
SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<s>", "</s>", "<unk>")

METASPACE = "▁"  # U+2581, SentencePiece's visible space
# Han characters are split one per piece so that BPE never merges across Chinese words.
HAN_CHARACTER = r"\p{Han}"
TOKENIZER_FILE = "tokenizer.json"

# Special tokens looked up by name, ours first, then BERT's. bos/eos fall back to [CLS]/[SEP]: an encoder's
# sequence starts with [CLS] and ends with [SEP] where a seq2seq sequence has <s> and </s>.
_PAD_NAMES = ("<pad>", "[PAD]")
_BOS_NAMES = ("<s>", "[CLS]")
_EOS_NAMES = ("</s>", "[SEP]")
_UNK_NAMES = ("<unk>", "[UNK]")
_BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class Tokenizer:
    """Text <-> ids, wrapping a `tokenizers.Tokenizer`.

    ``encode`` never adds special tokens (the caller adds ``bos_id``/``eos_id`` where the model needs them),
    and ``decode`` skips every special token without stopping at any.

    With ``specials_in_text=False`` (the default) a special token's spelling inside the text, such as a
    literal ``"</s>"`` in a sentence to translate, is ordinary text and never becomes the special id.
    BERT tokenizers from :meth:`from_vocab_txt` recognise ``[MASK]`` etc. in the text, as Hugging Face does.
    """

    def __init__(self, inner: tokenizers.Tokenizer, *, specials_in_text: bool = False) -> None:
        self.inner = inner
        self.specials_in_text = specials_in_text
        # Not stored in tokenizer.json, so it is set again on every load.
        inner.encode_special_tokens = not specials_in_text

    # ---- encoding and decoding -------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``, without special tokens. Empty text gives an empty list."""
        return list(self.inner.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids of each text (in parallel threads), without special tokens."""
        encodings = self.inner.encode_batch(list(texts), add_special_tokens=False)
        return [list(encoding.ids) for encoding in encodings]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``, skipping special tokens (``<pad>``, ``<s>``, ``</s>``, ``<unk>``) wherever they are.

        Raises ValueError for an id outside ``[0, vocab_size)``, which means model and tokenizer disagree.
        """
        ids = [int(i) for i in ids]  # accepts numpy/torch integers too
        size = self.vocab_size
        bad = [i for i in ids if not 0 <= i < size]
        if bad:
            raise ValueError(
                f"cannot decode id {bad[0]}: this tokenizer has ids 0..{size - 1}; "
                "does the model's vocab_size match the tokenizer it was trained with?"
            )
        return str(self.inner.decode(ids, skip_special_tokens=True))

    def tokens(self, text: str) -> list[str]:
        """The token strings of ``text`` (e.g. ``['▁I', '▁love', '▁you', '.']``), for attention plot axes."""
        return list(self.inner.encode(text, add_special_tokens=False).tokens)

    def unk_rate(self, texts: Iterable[str]) -> float:
        """Fraction of tokens in ``texts`` that are ``<unk>`` (0.0 when there is no unknown token or no text).

        Report it; lines are never dropped because of unknown characters.
        """
        unk = self.unk_id
        total = 0
        unknown = 0
        batch: list[str] = []

        def count(chunk: list[str]) -> None:
            nonlocal total, unknown
            for ids in self.encode_batch(chunk):
                total += len(ids)
                unknown += sum(1 for i in ids if i == unk)

        for text in texts:
            batch.append(text)
            if len(batch) == 1024:
                count(batch)
                batch = []
        count(batch)
        return unknown / total if total and unk is not None else 0.0

    # ---- vocabulary --------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included: the model's vocab_size must equal it."""
        return int(self.inner.get_vocab_size(with_added_tokens=True))

    def id_to_token(self, token_id: int) -> str:
        """The token string of ``token_id``; IndexError outside ``[0, vocab_size)``."""
        token = self.inner.id_to_token(int(token_id)) if token_id >= 0 else None
        if token is None:
            raise IndexError(f"token id {token_id} is outside this tokenizer's ids 0..{self.vocab_size - 1}")
        return str(token)

    def token_to_id(self, token: str) -> int | None:
        """The id of ``token``, or None if it is not in the vocabulary."""
        token_id = self.inner.token_to_id(token)
        return None if token_id is None else int(token_id)

    def _first_id(self, names: Sequence[str]) -> int | None:
        for name in names:
            token_id = self.token_to_id(name)
            if token_id is not None:
                return token_id
        return None

    @property
    def pad_id(self) -> int | None:
        """Id of ``<pad>`` (``[PAD]`` in a BERT vocabulary); None if the vocabulary has neither."""
        return self._first_id(_PAD_NAMES)

    @property
    def bos_id(self) -> int | None:
        """Id of ``<s>``, else of BERT's ``[CLS]``; None if neither exists."""
        return self._first_id(_BOS_NAMES)

    @property
    def eos_id(self) -> int | None:
        """Id of ``</s>``, else of BERT's ``[SEP]``; None if neither exists."""
        return self._first_id(_EOS_NAMES)

    @property
    def unk_id(self) -> int | None:
        """Id of the model's unknown token (``<unk>``, ``[UNK]``, ...); None if it has none."""
        unk_token = getattr(self.inner.model, "unk_token", None)
        if isinstance(unk_token, str):
            token_id = self.token_to_id(unk_token)
            if token_id is not None:
                return token_id
        return self._first_id(_UNK_NAMES)

    @property
    def cls_id(self) -> int | None:
        """Id of BERT's ``[CLS]``; None if absent."""
        return self.token_to_id("[CLS]")

    @property
    def sep_id(self) -> int | None:
        """Id of BERT's ``[SEP]``; None if absent."""
        return self.token_to_id("[SEP]")

    @property
    def mask_id(self) -> int | None:
        """Id of BERT's ``[MASK]``; None if absent."""
        return self.token_to_id("[MASK]")

    # ---- files ---------------------------------------------------------------------------------------

    def to_json(self) -> str:
        """The ``tokenizer.json`` text (for :func:`qkv.checkpoint.save_directory`'s ``text`` files)."""
        return str(self.inner.to_str(pretty=True))

    @classmethod
    def from_json(cls, text: str, *, source: str = "<string>", specials_in_text: bool = False) -> Tokenizer:
        """A tokenizer from ``tokenizer.json`` text; :class:`~qkv.storage.CheckpointError` (a ValueError)
        naming ``source`` if it is not one."""
        try:
            inner = tokenizers.Tokenizer.from_str(text)
        except Exception as error:  # tokenizers raises a bare Exception
            raise CheckpointError(
                f"{source}: not a valid tokenizer.json ({_one_line(error)}); "
                "write one with Tokenizer.save() or Hugging Face tokenizers"
            ) from error
        except BaseException as error:  # a panic inside the Rust library (pyo3's PanicException)
            if isinstance(error, (KeyboardInterrupt, SystemExit)):
                raise
            raise CheckpointError(f"{source}: not a valid tokenizer.json ({_one_line(error)})") from error
        return cls(inner, specials_in_text=specials_in_text)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``tokenizer.json`` atomically (mode 0644) and return its path.

        ``path`` is the file to write, or an existing directory to write ``tokenizer.json`` into.
        """
        target = Path(path)
        if target.is_dir():
            target = target / TOKENIZER_FILE
        return write_file(target, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, specials_in_text: bool = False) -> Tokenizer:
        """Read a ``tokenizer.json`` file, or ``tokenizer.json`` inside a directory.

        Raises FileNotFoundError naming the path when it does not exist, and
        :class:`~qkv.storage.CheckpointError` (a ValueError) naming it when it is not UTF-8 or not a
        tokenizer file.
        """
        target = Path(path)
        if target.is_dir():
            target = target / TOKENIZER_FILE
        if not target.is_file():
            raise FileNotFoundError(
                f"{target}: no such tokenizer file; train one with qkv.tokenize.train_tokenizer() and save() "
                "it, or point at the tokenizer.json of a model directory"
            )
        try:
            text = target.read_bytes().decode("utf-8")
        except UnicodeDecodeError as error:
            raise CheckpointError(
                f"{target}: not UTF-8 text (byte {error.start}); expected a tokenizer.json"
            ) from error
        return cls.from_json(text, source=str(target), specials_in_text=specials_in_text)

    @classmethod
    def from_vocab_txt(cls, path: str | os.PathLike[str], *, lowercase: bool = True) -> Tokenizer:
        """A BERT WordPiece tokenizer from ``vocab.txt`` (one token a line; its line number is its id).

        As BERT: clean text, pad CJK characters with spaces, lowercase and strip accents (when
        ``lowercase``), split on whitespace and punctuation, then greedy longest-match WordPiece with ``##``
        continuations. ``[PAD]``, ``[UNK]``, ``[CLS]``, ``[SEP]`` and ``[MASK]`` keep the ids the file gives them.
        """
        target = Path(path)
        if target.is_dir():
            target = target / "vocab.txt"
        if not target.is_file():
            raise FileNotFoundError(
                f"{target}: no such vocabulary file; pass the vocab.txt of a BERT checkpoint "
                "(or its directory)"
            )
        try:
            vocab: dict[str, int] = models.WordPiece.read_file(str(target))
        except Exception as error:  # tokenizers raises a bare Exception (e.g. for bytes that are not UTF-8)
            raise CheckpointError(f"{target}: cannot be read as a vocab.txt ({_one_line(error)})") from error
        if "[UNK]" not in vocab:
            raise CheckpointError(
                f"{target}: has no [UNK] line; a BERT vocab.txt lists one token per line, including [UNK]"
            )
        inner = tokenizers.Tokenizer(
            models.WordPiece(
                vocab, unk_token="[UNK]", continuing_subword_prefix="##", max_input_chars_per_word=100
            )
        )
        inner.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
        )
        inner.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        inner.decoder = decoders.WordPiece(prefix="##")
        # Registering them as special keeps their ids and lets decode() skip them.
        inner.add_special_tokens([token for token in _BERT_SPECIALS if token in vocab])
        return cls(inner, specials_in_text=True)

    def __repr__(self) -> str:
        model = type(self.inner.model).__name__
        return f"Tokenizer({model}, vocab_size={self.vocab_size})"


# ---- training ----------------------------------------------------------------------------------------------


def train_bpe(texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2) -> Tokenizer:
    """Learn a BPE vocabulary of ``vocab_size`` ids (specials included) from ``texts``.

    Every character seen in ``texts`` gets a token even when that makes the vocabulary larger than
    ``vocab_size`` (a Chinese corpus can hold thousands of characters); read the actual size from
    :attr:`Tokenizer.vocab_size`. ``min_frequency`` is the least count a merge needs.
    """
    _check_vocab_size(vocab_size, "vocab_size")
    inner = tokenizers.Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS[UNK_ID]))
    inner.normalizer = normalizers.NFKC()
    inner.pre_tokenizer = pre_tokenizers.Sequence(
        [
            # "always" prepends ▁ to the text, so a sentence's first word is the same token as elsewhere.
            pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="always", split=True),
            pre_tokenizers.Punctuation(behavior="isolated"),  # "▁you." -> "▁you", "."
            pre_tokenizers.Split(Regex(HAN_CHARACTER), behavior="isolated"),  # "▁我爱" -> "▁", "我", "爱"
        ]
    )
    # Tokens are concatenated and ▁ turned back into a space, so "▁you" "." decodes to " you." (never "you .").
    inner.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    inner.train_from_iterator(texts, trainer)
    return _checked_specials(Tokenizer(inner))


def train_chars(texts: Iterable[str], *, min_frequency: int = 1, max_size: int | None = None) -> Tokenizer:
    """A character vocabulary: every character (after NFKC) seen ``min_frequency`` times is one token.

    Spaces become ``▁`` and decode back to spaces, so leading, repeated and trailing spaces round-trip.
    ``max_size`` caps the vocabulary (specials included), keeping the most frequent characters.
    """
    if max_size is not None:
        _check_vocab_size(max_size, "max_size")
    inner = tokenizers.Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS[UNK_ID]))
    inner.normalizer = normalizers.NFKC()
    inner.pre_tokenizer = pre_tokenizers.Sequence(
        [
            # "never": no ▁ is prepended, so a space is a token only where the text has one.
            pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="never", split=False),
            pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated"),  # every character, newlines too
        ]
    )
    inner.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="never", split=False)
    trainer = trainers.WordLevelTrainer(
        vocab_size=max_size if max_size is not None else 2**31 - 1,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    inner.train_from_iterator(texts, trainer)
    return _checked_specials(Tokenizer(inner))


def train_tokenizer(
    texts: Iterable[str],
    kind: Literal["bpe", "char"],
    vocab_size: int,
    *,
    min_frequency: int | None = None,
) -> Tokenizer:
    """Train a ``"bpe"`` or ``"char"`` tokenizer; for ``"char"``, ``vocab_size`` caps the vocabulary.

    Joint or separate vocabularies are the caller's choice: train one tokenizer on both sides, or one per side.
    ``min_frequency`` defaults to 2 for BPE merges and 1 for characters.
    """
    if kind == "bpe":
        return train_bpe(texts, vocab_size, min_frequency=2 if min_frequency is None else min_frequency)
    if kind == "char":
        return train_chars(
            texts, min_frequency=1 if min_frequency is None else min_frequency, max_size=vocab_size
        )
    raise ValueError(f"tokenizer kind must be 'bpe' or 'char', got {kind!r}")


# ---- helpers ------------------------------------------------------------------------------------------------


def _check_vocab_size(size: int, name: str) -> None:
    if size <= len(SPECIAL_TOKENS):
        raise ValueError(f"{name}={size} leaves no room beside the {len(SPECIAL_TOKENS)} special tokens")


def _checked_specials(tokenizer: Tokenizer) -> Tokenizer:
    # Every model relies on these ids (padding masks, start and end of decoding): fail loudly if a
    # tokenizers upgrade ever orders the trainer's special tokens differently.
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        if tokenizer.token_to_id(token) != expected_id:
            raise RuntimeError(
                f"special token {token} got id {tokenizer.token_to_id(token)}, expected {expected_id}"
            )
    return tokenizer


def _one_line(error: BaseException, limit: int = 200) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
