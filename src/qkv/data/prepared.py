"""A prepared corpus: token ids and their length index on disk in shards, read as they are needed.

``qkv prepare`` (:mod:`qkv.data.prepare`) writes a directory::

    prepared.json              what is here: format and version, counts, shards, dtypes, </s> id, max
                               positions, what was skipped or left out and why, how the tokenizer was made
    tokenizer.json             the tokenizer (or src_tokenizer.json + tgt_tokenizer.json), as in a model
    valid.jsonl                the validation pairs as text, if a validation file was given
    shard-00000.tokens.npy     flat token ids, pair after pair: the source (ending in </s>), then the target
    shard-00000.lengths.npy    (pairs, 2): source and target length of each pair, in that shard's order
    shard-00000.lines.npy      (pairs,): the line each pair came from, counted from the shard's first line

Every ``.npy`` loads with ``np.load`` (the token arrays with ``mmap_mode="r"``); token ids are uint16 when
the vocabulary fits, else uint32. :class:`PreparedCorpus` reads lengths (for batching) and a pair's ids
from the shard files when they are asked for (``os.pread``: the pages stay in the system's page cache, not
in the process, as pages of a memory map would until released, and the kernel maps the neighbours of every
page a map faults in); what it keeps in memory is where every :data:`BLOCK`-th pair starts, a fraction of a
byte per pair. So memory stays flat however large the corpus.
"""

from __future__ import annotations

import operator
import os
import resource
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, overload

import numpy as np
import numpy.typing as npt

from qkv.data.batching import ArrayLengths, IntArray, LengthIndex
from qkv.data.encode import Example
from qkv.storage import CheckpointError, read_json_object

FORMAT = "qkv-prepared"
VERSION = 1
MANIFEST = "prepared.json"
VALID_FILE = "valid.jsonl"
TOKENIZER_FILES = ("tokenizer.json", "src_tokenizer.json", "tgt_tokenizer.json")
SHARD_FILES = ("tokens", "lengths", "lines")  # shard-NNNNN.<kind>.npy
TOKEN_DTYPES = ("uint16", "uint32")
BLOCK = 256  # pairs between the starts kept in memory: a pair's start is read from at most 255 lengths


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def shard_file(name: str, kind: str) -> str:
    return f"{name}.{kind}.npy"


def token_dtype(vocab_size: int) -> str:
    """uint16 when every id fits, else uint32."""
    return "uint16" if vocab_size <= 2**16 else "uint32"


def length_dtype(max_positions: int) -> str:
    return "uint16" if max_positions < 2**16 else "uint32"


def is_prepared(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory that ``qkv prepare`` wrote (it holds prepared.json)."""
    return Path(path, MANIFEST).is_file()


def owns(name: str) -> bool:
    """Whether ``name`` is a file ``qkv prepare`` writes into its output directory."""
    if name in (MANIFEST, VALID_FILE, *TOKENIZER_FILES):
        return True
    stem, _, rest = name.partition(".")
    kind, _, suffix = rest.partition(".")
    return stem.startswith("shard-") and stem[6:].isdigit() and kind in SHARD_FILES and suffix == "npy"


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype[Any], int]:
    """(shape, dtype, offset of the data) of a ``.npy`` file whose size matches its header."""
    try:
        with open(path, "rb") as file:
            version = np.lib.format.read_magic(file)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(file)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(file)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            offset = file.tell()
    except FileNotFoundError:
        raise CheckpointError(
            f"{path}: missing; the prepared corpus is incomplete, run qkv prepare again"
        ) from None
    except (ValueError, OSError) as error:
        raise CheckpointError(f"{path}: not a readable .npy file ({error}); run qkv prepare again") from None
    if fortran and len(shape) > 1:
        raise CheckpointError(f"{path}: stored in Fortran order; qkv prepare never writes that")
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = path.stat().st_size
    if size != expected:
        raise CheckpointError(
            f"{path}: {size:,} bytes, but its header describes {expected:,} (shape {shape}, {dtype}); the "
            "file is damaged or cut short, run qkv prepare again"
        )
    return shape, dtype, offset


def _load_small(path: Path, dtype: str, shape: tuple[int, ...]) -> npt.NDArray[Any]:
    got_shape, got_dtype, _ = _npy_header(path)
    if got_dtype != np.dtype(dtype) or got_shape != shape:
        raise CheckpointError(
            f"{path}: holds {got_dtype} {got_shape}, but prepared.json says {dtype} {shape}; run qkv "
            "prepare again"
        )
    return np.load(path, allow_pickle=False)


def _expect(manifest: dict[str, Any], key: str, kind: type | tuple[type, ...], source: Path) -> Any:
    value = manifest.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise CheckpointError(f"{source}: key {key!r} is missing or of the wrong type; the file is damaged")
    return value


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked ``prepared.json`` of a prepared directory: its format and version are this qkv's."""
    source = Path(directory) / MANIFEST
    if not source.is_file():
        raise CheckpointError(
            f"{directory}: not a prepared corpus (no {MANIFEST}); make one with qkv prepare"
        )
    manifest = read_json_object(source)
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{source}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    if manifest.get("version") != VERSION:
        raise CheckpointError(
            f"{source}: version {manifest.get('version')!r}, but this qkv reads version {VERSION}; "
            "prepare the corpus again with this qkv"
        )
    _expect(manifest, "max_positions", int, source)
    _expect(manifest, "eos_id", int, source)
    return manifest


class PreparedCorpus(Sequence[Example]):
    """The examples of a prepared directory, ``(source ids ending in </s>, target ids)`` as lists, read on
    demand from the shards.

    :meth:`lengths_of` is the index batching uses (a :class:`~qkv.data.batching.LengthIndex`): it reads
    the shards' length files, never the token ids. Every file is checked against ``prepared.json`` when the
    corpus is opened: a missing, cut or mismatched file is a :class:`~qkv.storage.CheckpointError` naming
    it.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        source = self.directory / MANIFEST
        manifest = self.manifest = read_manifest(self.directory)
        self.eos_id: int = _expect(manifest, "eos_id", int, source)
        self.max_positions: int = _expect(manifest, "max_positions", int, source)
        tokens_dtype = _expect(manifest, "token_dtype", str, source)
        lengths_dtype = _expect(manifest, "length_dtype", str, source)
        if tokens_dtype not in TOKEN_DTYPES or lengths_dtype not in TOKEN_DTYPES:
            raise CheckpointError(f"{source}: dtypes {tokens_dtype}/{lengths_dtype} are not uint16 or uint32")
        self.token_dtype = np.dtype(tokens_dtype)
        shards = _expect(manifest, "shards", list, source)
        total = _expect(manifest, "pairs", int, source)

        self._names: list[str] = []
        self._first_lines: list[int] = []
        self._token_counts: list[int] = []
        counts: list[int] = []
        for position, shard in enumerate(shards):
            if not isinstance(shard, dict):
                raise CheckpointError(f"{source}: shards[{position}] is not an object; the file is damaged")
            name = _expect(shard, "name", str, source)
            if name != shard_name(position):
                raise CheckpointError(
                    f"{source}: shards[{position}] is named {name!r}, expected {shard_name(position)!r}"
                )
            tokens = _expect(shard, "tokens", int, source)
            if not 0 <= tokens < 2**32:
                raise CheckpointError(
                    f"{source}: shards[{position}] has {tokens:,} tokens; the file is damaged"
                )
            counts.append(_expect(shard, "pairs", int, source))
            self._names.append(name)
            self._first_lines.append(_expect(shard, "first_line", int, source))
            self._token_counts.append(tokens)
        if sum(counts) != total:
            raise CheckpointError(f"{source}: the shards hold {sum(counts):,} pairs, 'pairs' says {total:,}")
        if total == 0:
            raise CheckpointError(f"{source}: the prepared corpus holds no pairs")

        # Nothing of the size of the corpus stays in memory: the lengths are read from the files when asked
        # for, and of the pairs' starts in their shard's tokens every BLOCK-th is kept (4 bytes: a shard
        # holds far fewer than 2**32 ids); a pair's start is its block's plus the lengths before it.
        self._starts = np.cumsum([0, *counts])  # the first pair of each shard, and the total
        self._lengths_dtype = np.dtype(lengths_dtype)
        self._pair_counts = counts
        self._block_starts: list[npt.NDArray[np.uint32]] = []
        for position, (name, pairs) in enumerate(zip(self._names, counts, strict=True)):
            tokens = self._token_counts[position]
            lengths = _load_small(self.directory / shard_file(name, "lengths"), lengths_dtype, (pairs, 2))
            per_pair = lengths.sum(axis=1, dtype=np.int64)
            if int(per_pair.sum()) != tokens:
                raise CheckpointError(
                    f"{self.directory / shard_file(name, 'lengths')}: the lengths add up to "
                    f"{int(per_pair.sum()):,} tokens, prepared.json says {tokens:,}; run qkv prepare again"
                )
            shape, dtype, _ = _npy_header(self.directory / shard_file(name, "tokens"))
            if shape != (tokens,) or dtype != self.token_dtype:
                raise CheckpointError(
                    f"{self.directory / shard_file(name, 'tokens')}: holds {dtype} {shape}, but prepared.json "
                    f"says {self.token_dtype} ({tokens},); run qkv prepare again"
                )
            self._block_starts.append((np.cumsum(per_pair) - per_pair)[::BLOCK].astype(np.uint32))
            del lengths, per_pair
        # (shard, kind) -> (its open file, where its data starts, its path for messages)
        self._files: dict[tuple[int, str], tuple[BinaryIO, int, Path]] = {}
        _allow_open_files(2 * len(self._names))

    # -- what batching and training read ------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._starts[-1])

    @overload
    def __getitem__(self, index: int) -> Example: ...
    @overload
    def __getitem__(self, index: slice) -> list[Example]: ...
    def __getitem__(self, index: int | slice) -> Example | list[Example]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i = operator.index(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"pair {index} of a corpus of {len(self)}")
        shard = int(np.searchsorted(self._starts, i, side="right")) - 1
        local = i - int(self._starts[shard])
        block = local // BLOCK
        lengths = self._lengths(shard, block * BLOCK, local + 1)  # the block's pairs up to this one
        start = int(self._block_starts[shard][block]) + int(lengths[:-1].sum())
        src_len, tgt_len = (int(n) for n in lengths[-1])
        ids = self._read(shard, "tokens", self.token_dtype, start, src_len + tgt_len).tolist()
        return ids[:src_len], ids[src_len:]

    def lengths_of(self, indices: IntArray) -> tuple[IntArray, IntArray]:
        """(source lengths, target lengths) of pairs ``indices``, in their order, read from the shards'
        length files (no pair is read): a :class:`~qkv.data.batching.LengthIndex`. Shapes: (n,) -> (n,), (n,)."""
        indices = np.asarray(indices, dtype=np.int64)
        src, tgt = np.empty(len(indices), np.int64), np.empty(len(indices), np.int64)
        if not len(indices):
            return src, tgt
        order = np.argsort(indices, kind="stable")
        ordered = indices[order]
        if ordered[0] < 0 or ordered[-1] >= len(self):
            wrong = ordered[0] if ordered[0] < 0 else ordered[-1]
            raise IndexError(f"pair {wrong} of a corpus of {len(self)}")
        bounds = np.searchsorted(ordered, self._starts)  # where each shard's pairs begin in `ordered`
        for shard in range(len(self._names)):
            a, b = int(bounds[shard]), int(bounds[shard + 1])
            if a < b:
                local = ordered[a:b] - int(self._starts[shard])
                first = int(local[0])
                rows = self._lengths(shard, first, int(local[-1]) + 1)[local - first]  # (b - a, 2)
                src[order[a:b]], tgt[order[a:b]] = rows[:, 0], rows[:, 1]
        return src, tgt

    def __iter__(self) -> Iterator[Example]:
        for i in range(len(self)):
            yield self[i]

    def line_number(self, index: int) -> int:
        """The line of the corpus file that pair ``index`` came from (1-based)."""
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        lines = np.load(self.directory / shard_file(self._names[shard], "lines"), mmap_mode="r")
        return self._first_lines[shard] + int(lines[index - int(self._starts[shard])]) - 1

    def _lengths(self, shard: int, first: int, end: int) -> npt.NDArray[np.unsignedinteger]:
        """Source and target lengths of the shard's pairs ``first`` to ``end`` (excluded). Shape (n, 2)."""
        return self._read(shard, "lengths", self._lengths_dtype, 2 * first, 2 * (end - first)).reshape(-1, 2)

    def _read(
        self, shard: int, kind: str, dtype: np.dtype[Any], first: int, count: int
    ) -> npt.NDArray[np.unsignedinteger]:
        """``count`` values of the shard's ``kind`` array from value ``first`` on, read from its file."""
        opened = self._files.get((shard, kind))
        if opened is None:
            path = self.directory / shard_file(self._names[shard], kind)
            _, _, offset = _npy_header(path)
            opened = self._files[(shard, kind)] = (open(path, "rb", buffering=0), offset, path)
        file, offset, path = opened
        size = count * dtype.itemsize
        data = os.pread(file.fileno(), size, offset + first * dtype.itemsize)
        if len(data) != size:
            raise CheckpointError(f"{path}: cut short while it was being read; run qkv prepare again")
        return np.frombuffer(data, dtype)

    # -- what the trainer reports and what came with the corpus ---------------------------------------------
    @property
    def tokenizer_paths(self) -> dict[str, Path]:
        """The tokenizer files beside the shards, by name."""
        return {name: self.directory / name for name in TOKENIZER_FILES if (self.directory / name).is_file()}

    @property
    def valid_path(self) -> Path | None:
        """The validation pairs (JSONL text) that were prepared with the corpus, if any."""
        path = self.directory / VALID_FILE
        return path if path.is_file() else None

    def report(self) -> list[str]:
        """What ``qkv prepare`` reported, as it wrote it in prepared.json."""
        lines = self.manifest.get("report")
        head = f"{self.directory}: prepared corpus, {len(self):,} pairs in {len(self._names)} shards"
        return [head, *(str(line) for line in lines)] if isinstance(lines, list) else [head]


def _allow_open_files(files: int) -> None:
    """Each shard file read stays open: raise the soft limit toward the hard one if needed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = files + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def length_index(data: Sequence[Example]) -> LengthIndex:
    """The (source, target) lengths of ``data``'s pairs for batching: a prepared corpus reads them from its
    shards when asked; pairs in memory are measured once, into two arrays."""
    if isinstance(data, PreparedCorpus):
        return data
    count = len(data)
    return ArrayLengths(
        np.fromiter((len(src) for src, _ in data), np.int64, count),
        np.fromiter((len(tgt) for _, tgt in data), np.int64, count),
    )
