"""Marian's tokenization: SentencePiece pieces looked up in a separate vocabulary, as ``MarianTokenizer``.

An OPUS-MT model ships two SentencePiece models (``source.spm``, ``target.spm``) and a vocabulary
(``vocab.json``: piece -> model id; ``target_vocab.json`` too when the two sides have separate ones). The
SentencePiece ids are not the model's ids; a piece is looked up in the vocabulary, and a piece missing
from it becomes ``<unk>``. Encoding a source::

    ">>fra<< Hello"  ->  [">>fra<<"] + source_spm.encode(" Hello")  ->  vocabulary ids

A target-language token (``>>fra<<``) at the start of the text is kept whole, as one vocabulary token,
for multilingual models. Decoding drops the special ids and detokenizes the pieces with SentencePiece,
with the source model when the vocabulary is shared and the target model when it is separate (exactly
what ``MarianTokenizer.decode`` does). One difference, on purpose: a special token's spelling inside a
sentence (a literal ``</s>``) is ordinary text here, as in every qkv tokenizer, where ``MarianTokenizer``
makes it the special id.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from qkv.storage import CheckpointError, write_file
from qkv.tokenize import Tokenizer

__all__ = ["KIND", "SentencePieceTokenizer", "load_spm", "load_tokenizer"]

KIND = "marian-sentencepiece"  # the "qkv_tokenizer" value of a saved SentencePieceTokenizer

METASPACE = "▁"  # U+2581, SentencePiece's visible space
# Hugging Face's clean_up_tokenization, in its order.
_CLEAN_UP = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


def _sentencepiece() -> Any:
    try:
        import sentencepiece
    except ImportError as error:  # a core dependency; only a broken install lacks it
        raise CheckpointError(
            "reading SentencePiece models needs the sentencepiece package (pip install sentencepiece)"
        ) from error
    return sentencepiece


def _processor(proto: bytes) -> Any:
    """A ``SentencePieceProcessor`` from a serialized model; RuntimeError/OSError if it is not one."""
    processor = _sentencepiece().SentencePieceProcessor()
    processor.LoadFromSerializedProto(proto)
    return processor


def load_spm(path: str | os.PathLike[str]) -> Any:
    """A ``sentencepiece.SentencePieceProcessor`` for a model file; errors name the file."""
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"{file}: no such SentencePiece model")
    try:
        return _processor(file.read_bytes())
    except (RuntimeError, OSError) as error:  # sentencepiece's own text
        raise CheckpointError(f"{file}: not a SentencePiece model ({error})") from error


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """A model directory's tokenizer file: a :class:`SentencePieceTokenizer` that :meth:`~SentencePieceTokenizer.
    to_json` wrote, else a ``tokenizer.json`` (:meth:`qkv.tokenize.Tokenizer.load`)."""
    file = Path(path)
    if file.is_file():
        with open(file, "rb") as handle:
            head = handle.read(64)
        if head.lstrip(b"{ \n").startswith(b'"qkv_tokenizer"'):
            try:
                text = file.read_bytes().decode("utf-8")
            except UnicodeDecodeError as error:
                raise CheckpointError(f"{file}: not UTF-8 text (byte {error.start})") from error
            return SentencePieceTokenizer.from_json(text, source=str(file))
    return Tokenizer.load(file)


class SentencePieceTokenizer(Tokenizer):
    """Text <-> model ids through a SentencePiece model and a vocabulary, as ``MarianTokenizer``.

    One object is one side: ``encoder`` splits text (the source model for a source tokenizer, the target
    model for a target one), ``detokenizer`` joins pieces back (``MarianTokenizer`` uses the source model
    for that when the vocabulary is shared). ``encode`` adds no special token: the caller appends </s>.
    ``specials``: the tokens ``decode`` skips (unk, eos and pad, and any additional special tokens);
    ``clean_up_spaces``: Hugging Face's ``clean_up_tokenization_spaces`` (" ." -> ".", ...) after decoding.

    It has :class:`~qkv.tokenize.Tokenizer`'s interface, so the translator, the heat maps, evaluation and
    training use it unchanged; a model directory stores it as :meth:`to_json`'s text.
    """

    def __init__(
        self,
        encoder: Any,
        detokenizer: Any,
        vocab: Mapping[str, int],
        *,
        unk_token: str = "<unk>",
        eos_token: str = "</s>",
        pad_token: str = "<pad>",
        specials: Sequence[str] = (),
        clean_up_spaces: bool = False,
        source: str = "<memory>",
    ) -> None:
        # No tokenizers.Tokenizer inside: every method of the base class that would read one is replaced.
        self.specials_in_text = False
        self.encoder, self.detokenizer = encoder, detokenizer
        self.vocab = dict(vocab)
        self.source = source
        self.clean_up_spaces = clean_up_spaces
        if not self.vocab:
            raise CheckpointError(f"{source}: the vocabulary is empty")
        self.pieces = {token_id: piece for piece, token_id in self.vocab.items()}
        for name, token in (("unk", unk_token), ("eos", eos_token), ("pad", pad_token)):
            if token not in self.vocab:
                raise CheckpointError(f"{source}: the vocabulary has no {name} token {token!r}")
        self.unk_token, self.eos_token, self.pad_token = unk_token, eos_token, pad_token
        self._unk = self.vocab[unk_token]
        self._specials = tuple(specials)
        self._special_ids = frozenset(
            self.vocab[t] for t in (unk_token, eos_token, pad_token, *specials) if t in self.vocab
        )

    # ---- encoding and decoding -------------------------------------------------------------------------

    def tokens(self, text: str) -> list[str]:
        """The pieces of ``text``: a leading target-language token (``>>fra<<``) whole, then SentencePiece's."""
        code: list[str] = []
        if text.startswith(">>") and (end := text.find("<<")) != -1:
            code, text = [text[: end + 2]], text[end + 2 :]
        return code + [str(piece) for piece in self.encoder.encode(text, out_type=str)]

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``, without special tokens; a piece missing from the vocabulary is ``<unk>``."""
        return [self.vocab.get(piece, self._unk) for piece in self.tokens(text)]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids of each text, without special tokens."""
        return [self.encode(text) for text in texts]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``, special tokens (unk, eos, pad, ...) skipped, detokenized by SentencePiece.

        Raises ValueError for an id outside ``[0, vocab_size)``.
        """
        ids = [int(i) for i in ids]
        size = self.vocab_size
        bad = [i for i in ids if not 0 <= i < size]
        if bad:
            raise ValueError(
                f"cannot decode id {bad[0]}: this tokenizer has ids 0..{size - 1}; "
                "does the model's vocab_size match its vocabulary?"
            )
        pieces = [self._piece(i) for i in ids if i not in self._special_ids]
        text = str(self.detokenizer.decode_pieces(pieces)).replace(METASPACE, " ").strip()
        if self.clean_up_spaces:
            for before, after in _CLEAN_UP:
                text = text.replace(before, after)
        return text

    def _piece(self, token_id: int) -> str:
        piece = self.pieces.get(token_id)
        if piece is None:  # a hole in the vocabulary: MarianTokenizer asks SentencePiece
            piece = (
                str(self.detokenizer.IdToPiece(token_id))
                if token_id < self.detokenizer.GetPieceSize()
                else ""
            )
        return piece or self.unk_token

    # ---- vocabulary --------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids: the largest id in the vocabulary plus one."""
        return max(self.vocab.values()) + 1

    def id_to_token(self, token_id: int) -> str:
        """The piece of ``token_id``; IndexError outside ``[0, vocab_size)``."""
        if not 0 <= int(token_id) < self.vocab_size:
            raise IndexError(f"token id {token_id} is outside this tokenizer's ids 0..{self.vocab_size - 1}")
        return self._piece(int(token_id))

    def token_to_id(self, token: str) -> int | None:
        """The id of ``token``, or None if it is not in the vocabulary."""
        return self.vocab.get(token)

    @property
    def unk_id(self) -> int | None:
        """Id of ``<unk>``."""
        return self._unk

    # ---- files ---------------------------------------------------------------------------------------

    def to_json(self) -> str:
        """The whole tokenizer as JSON text (``qkv_tokenizer: marian-sentencepiece``): both SentencePiece models
        (base64), the vocabulary and the special tokens. A model directory stores it in place of a
        ``tokenizer.json`` (:func:`load_tokenizer` reads either); two tokenizers give the same ids exactly
        when their texts are equal."""
        encoder = self.encoder.serialized_model_proto()
        detokenizer = self.detokenizer.serialized_model_proto()
        return json.dumps(
            {
                "qkv_tokenizer": KIND,
                "encoder": base64.b64encode(encoder).decode("ascii"),
                "detokenizer": None
                if detokenizer == encoder
                else base64.b64encode(detokenizer).decode("ascii"),
                "vocab": self.vocab,
                "unk_token": self.unk_token,
                "eos_token": self.eos_token,
                "pad_token": self.pad_token,
                "specials": sorted(self._specials),
                "clean_up_spaces": self.clean_up_spaces,
            },
            ensure_ascii=False,
            indent=1,
        )

    @classmethod
    def from_json(  # type: ignore[override]
        cls, text: str, *, source: str = "<string>", specials_in_text: bool = False
    ) -> SentencePieceTokenizer:
        """The tokenizer :meth:`to_json` wrote; :class:`~qkv.storage.CheckpointError` naming ``source`` if
        the text is not one."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("qkv_tokenizer") != KIND:
                raise ValueError(f"not a {KIND} tokenizer")
            encoder = _processor(base64.b64decode(data["encoder"], validate=True))
            detokenizer = (
                encoder
                if data.get("detokenizer") is None
                else _processor(base64.b64decode(data["detokenizer"], validate=True))
            )
            vocab = data["vocab"]
            if not isinstance(vocab, dict) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in vocab.values()
            ):
                raise ValueError("vocab must map pieces to non-negative integers")
            return cls(
                encoder,
                detokenizer,
                vocab,
                unk_token=str(data["unk_token"]),
                eos_token=str(data["eos_token"]),
                pad_token=str(data["pad_token"]),
                specials=[str(t) for t in data.get("specials", [])],
                clean_up_spaces=data.get("clean_up_spaces") is True,
                source=source,
            )
        except CheckpointError:
            raise
        except (ValueError, KeyError, TypeError, RuntimeError, binascii.Error) as error:
            raise CheckpointError(f"{source}: not a {KIND} tokenizer ({error})") from error

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_json` atomically (mode 0644) to ``path`` and return it."""
        return write_file(Path(path), self.to_json())

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({self.source}, vocab_size={self.vocab_size})"
