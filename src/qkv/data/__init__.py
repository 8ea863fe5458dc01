"""Corpora and batches: line-numbered corpus readers, token-budget batching, the built-in demo corpus.

``qkv.data.corpus`` reads TSV, JSONL and pairs of aligned text files, reporting bad lines as ``FILE:LINE``;
``qkv.data.batching`` groups examples by length into token-budget batches in a seeded, resumable order;
``qkv.data.demo`` generates the synthetic zh->en corpus of ``qkv demo``. Nothing here imports model code.
"""

from qkv.data.batching import (
    ArrayLengths,
    BatchPosition,
    EpochBatches,
    LengthIndex,
    MappedLengths,
    collate,
    iter_batches,
    make_batches,
)
from qkv.data.corpus import (
    Corpus,
    CorpusError,
    read_corpus,
    read_jsonl,
    read_parallel,
    read_tsv,
)

__all__ = [
    "ArrayLengths",
    "BatchPosition",
    "Corpus",
    "CorpusError",
    "EpochBatches",
    "LengthIndex",
    "MappedLengths",
    "collate",
    "iter_batches",
    "make_batches",
    "read_corpus",
    "read_jsonl",
    "read_parallel",
    "read_tsv",
]
