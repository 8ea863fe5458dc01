"""``qkv prepare``'s work: a corpus read in byte ranges by worker processes, sampled, tokenized into shards.

The file is cut into chunks of about ``chunk_bytes`` (1 to 16 MiB) at line ends (two aligned files at the same line
numbers); chunk i becomes shard i, whatever the number of workers, so one worker and many write the same
bytes. Each chunk is parsed with the corpus readers' own parser (:func:`qkv.data.corpus.line_pairs`), so
its bad lines are the same ``FILE:LINE`` errors or counts as :func:`~qkv.data.corpus.read_corpus`'s, and
encoded with the training pipeline's rule (:func:`qkv.data.encode.encode_examples`). Workers run with the
tokenizers library's own threads off: the processes are the parallelism.

A tokenizer is trained on a sample of at most ``sample_size`` pairs (:func:`sample_pairs`): each pair gets
a random key from ``(seed, chunk)`` and the pairs of the ``sample_size`` smallest keys are kept, in file
order. That is a uniform sample of the whole file (a file's first lines are often one sub-corpus, such as
news before subtitles), chunks can be sampled in parallel and merged in any order, and a corpus of no more
than ``sample_size`` pairs is sampled whole, so its tokenizer is the one ``qkv train`` would train in memory.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from qkv.data.corpus import (
    ByteRange,
    CorpusError,
    CorpusSource,
    LineProblem,
    _count_lines,
    corpus_report,
    line_count_mismatch,
    line_pairs,
)
from qkv.data.encode import encode_examples
from qkv.data.prepared import (
    FORMAT,
    MANIFEST,
    VALID_FILE,
    VERSION,
    length_dtype,
    owns,
    shard_file,
    shard_name,
    token_dtype,
)
from qkv.storage import LEFTOVER, remove, replace_directory, writer_alive
from qkv.tokenize import Tokenizer

MAX_AUTO_CHUNK_BYTES = 16 * 2**20
MIN_AUTO_CHUNK_BYTES = 2**20
AUTO_CHUNKS = 32
DEFAULT_SAMPLE_SIZE = 500_000
ENCODE_BATCH = 2048  # pairs handed to the tokenizer at a time
_NEWLINE_SEARCH = 2**16


@dataclass(frozen=True)
class Chunk:
    """Chunk ``index`` of a corpus: the byte range of its lines (and of the same lines in the target file)."""

    index: int
    src: ByteRange
    tgt: ByteRange = (0, 0)

    @property
    def size(self) -> int:
        return int(self.src[1] or 0) - self.src[0] + int(self.tgt[1] or 0) - self.tgt[0]


# -- cutting a file into chunks ---------------------------------------------------------------------------


def _line_end_after(file: Any, position: int, size: int) -> int:
    """The position just after the first b"\\n" at or after ``position`` (or the end of the file)."""
    file.seek(position)
    while position < size:
        block = file.read(_NEWLINE_SEARCH)
        found = block.find(b"\n")
        if found >= 0:
            return position + found + 1
        position += len(block)
    return size


def _cut(path: str, chunk_bytes: int) -> list[tuple[int, int]]:
    size = os.path.getsize(path)
    ranges: list[tuple[int, int]] = []
    with open(path, "rb") as file:
        start = 0
        while start < size:
            end = (
                size if start + chunk_bytes >= size else _line_end_after(file, start + chunk_bytes - 1, size)
            )
            ranges.append((start, end))
            start = end
    return ranges or [(0, 0)]


def _skip_lines(file: Any, count: int, position: int, size: int) -> int:
    """The position just after ``count`` more b"\\n"s from ``position`` (the end of the file if fewer)."""
    if count == 0:
        return position
    file.seek(position)
    while position < size:
        block = file.read(2**20)
        newlines = block.count(b"\n")
        if newlines < count:
            count -= newlines
            position += len(block)
            continue
        at = -1
        for _ in range(count):
            at = block.find(b"\n", at + 1)
        return position + at + 1
    return size


def auto_chunk_bytes(size: int) -> int:
    """A chunk size for a file of ``size`` bytes: about :data:`AUTO_CHUNKS` chunks, so that workers share
    the work evenly, of 1 to 16 MiB (a large corpus makes chunks of 16 MiB; each shard costs an open file
    while training)."""
    return min(max(size // AUTO_CHUNKS, MIN_AUTO_CHUNK_BYTES), MAX_AUTO_CHUNK_BYTES)


def plan_chunks(source: CorpusSource, *, skip_bad: bool, chunk_bytes: int | None = None) -> list[Chunk]:
    """Chunks of about ``chunk_bytes`` of ``source`` (default :func:`auto_chunk_bytes`), cut at line ends;
    for two aligned files the target ranges hold the same lines as the source ranges (the last one runs to
    the end of the target file). The chunks depend on the file alone, never on the number of workers.

    Two aligned files of different line counts are refused here, as :func:`read_corpus` refuses them,
    unless ``skip_bad``.
    """
    if chunk_bytes is None:
        chunk_bytes = auto_chunk_bytes(os.path.getsize(source.path))
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be at least 1, got {chunk_bytes}")
    ranges = _cut(source.path, chunk_bytes)
    if source.tgt_path is None:
        return [Chunk(i, r) for i, r in enumerate(ranges)]
    if not skip_bad:
        src_count, tgt_count = _count_lines(source.path), _count_lines(source.tgt_path)
        if src_count != tgt_count:
            raise line_count_mismatch(source.path, source.tgt_path, src_count, tgt_count)
    tgt_size = os.path.getsize(source.tgt_path)
    chunks: list[Chunk] = []
    with open(source.path, "rb") as src, open(source.tgt_path, "rb") as tgt:
        position = 0
        for i, (start, end) in enumerate(ranges):
            last = i == len(ranges) - 1
            src.seek(start)
            lines = src.read(end - start).count(b"\n")
            tgt_end = tgt_size if last else _skip_lines(tgt, lines, position, tgt_size)
            chunks.append(Chunk(i, (start, end), (position, tgt_end)))
            position = tgt_end
    return chunks


# -- what a worker reports about its chunk ----------------------------------------------------------------

Where = tuple[int, str, str]  # (line counted from the chunk's first, file, reason)


@dataclass
class ChunkReport:
    """What reading one chunk found: lines, pairs, bad lines (by kind, the first of each), the first error."""

    index: int
    lines: int = 0
    pairs: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    first_skipped: dict[str, Where] = field(default_factory=dict)
    error: tuple[int, str, str, str] | None = None  # (line, file, reason, kind)
    left_out: int = 0
    first_left_out: int | None = None
    tokens: int = 0


def _good_pairs(
    source: CorpusSource, chunk: Chunk, skip_bad: bool, report: ChunkReport
) -> Iterator[tuple[int, tuple[str, str]]]:
    """The chunk's good pairs with their line numbers; bad lines counted in ``report``, or the first one
    kept as its error (and the reading stopped) without ``skip_bad``."""
    tgt = chunk.tgt if source.tgt_path is not None else (0, 0)
    for number, item in line_pairs(source, chunk.src, tgt):
        report.lines = number
        if isinstance(item, LineProblem):
            where = item.path or source.path
            if not skip_bad:
                report.error = (number, where, item.reason, item.kind)
                return
            report.skipped[item.kind] = report.skipped.get(item.kind, 0) + 1
            report.first_skipped.setdefault(item.kind, (number, where, item.reason))
            continue
        report.pairs += 1
        yield number, item


# -- the sample the tokenizer is trained on -------------------------------------------------------------------


@dataclass(frozen=True)
class _SampleJob:
    source: CorpusSource
    chunk: Chunk
    skip_bad: bool
    size: int
    seed: int


# (the random keys, the positions in the file (chunk << 40 | pair in the chunk), the pairs)
Sampled = tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64], list[tuple[str, str]]]


def _sample_chunk(job: _SampleJob) -> tuple[ChunkReport, Sampled]:
    report = ChunkReport(job.chunk.index)
    pairs = [pair for _, pair in _good_pairs(job.source, job.chunk, job.skip_bad, report)]
    rng = np.random.default_rng([job.seed, job.chunk.index])
    keys = rng.integers(0, 2**64, size=len(pairs), dtype=np.uint64)
    keep = np.sort(np.argsort(keys, kind="stable")[: job.size])
    positions = (job.chunk.index << 40) + keep.astype(np.int64)  # file order: chunk, then pair within it
    return report, (keys[keep], positions, [pairs[i] for i in keep])


def _smallest(a: Sampled, b: Sampled, size: int) -> Sampled:
    keys = np.concatenate([a[0], b[0]])
    positions = np.concatenate([a[1], b[1]])
    pairs = a[2] + b[2]
    keep = np.lexsort((positions, keys))[:size]  # smallest keys; equal keys (rare) by position
    return keys[keep], positions[keep], [pairs[i] for i in keep]


def sample_pairs(
    source: CorpusSource,
    chunks: Sequence[Chunk],
    *,
    skip_bad: bool,
    size: int = DEFAULT_SAMPLE_SIZE,
    seed: int = 0,
    workers: int = 1,
    progress: bool = False,
) -> tuple[list[tuple[str, str]], int]:
    """A uniform sample of at most ``size`` good pairs, in file order, and the number of good pairs.

    Bad lines stop it with a ``FILE:LINE`` :class:`CorpusError` unless ``skip_bad``. The sample depends on
    ``seed`` and the chunks, never on ``workers``.
    """
    if size < 1:
        raise ValueError(f"the tokenizer sample must hold at least 1 pair, got {size}")
    jobs = [_SampleJob(source, chunk, skip_bad, size, seed) for chunk in chunks]
    sample: Sampled = (np.zeros(0, np.uint64), np.zeros(0, np.int64), [])
    reports: list[ChunkReport] = []
    for report, sampled in _run(_sample_chunk, jobs, workers, progress, "sampling for the tokenizer"):
        reports.append(report)
        sample = _smallest(sample, sampled, size)
    summary = summarise(source, chunks, reports)
    in_file_order = np.argsort(sample[1], kind="stable")
    return [sample[2][i] for i in in_file_order], summary.pairs


# -- the shards ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _EncodeJob:
    source: CorpusSource
    chunk: Chunk
    skip_bad: bool
    src_tokenizer: str  # tokenizer.json text
    tgt_tokenizer: str | None  # None: the same tokenizer
    max_positions: int
    eos_id: int
    token_dtype: str
    length_dtype: str
    out: str


def _encode_chunk(job: _EncodeJob) -> ChunkReport:
    report = ChunkReport(job.chunk.index)
    src_tok = Tokenizer.from_json(job.src_tokenizer)
    tgt_tok = src_tok if job.tgt_tokenizer is None else Tokenizer.from_json(job.tgt_tokenizer)
    tokens: list[npt.NDArray[Any]] = []
    lengths: list[npt.NDArray[Any]] = []
    lines: list[int] = []
    good = _good_pairs(job.source, job.chunk, job.skip_bad, report)
    while batch := list(itertools.islice(good, ENCODE_BATCH)):
        numbers = [number for number, _ in batch]
        examples = encode_examples(
            [pair for _, pair in batch], src_tok, tgt_tok, max_len=job.max_positions, eos_id=job.eos_id
        )
        kept = []
        for number, example in zip(numbers, examples, strict=True):
            if example is None:
                report.left_out += 1
                if report.first_left_out is None:
                    report.first_left_out = number
                continue
            kept.append(example)
            lines.append(number)
        if kept:
            flat = itertools.chain.from_iterable(itertools.chain(s, t) for s, t in kept)
            tokens.append(np.fromiter(flat, dtype=job.token_dtype))
            lengths.append(np.array([(len(s), len(t)) for s, t in kept], dtype=job.length_dtype))
    if report.error is not None:
        return report  # the whole preparation fails: nothing to write
    name = shard_name(job.chunk.index)
    token_array = np.concatenate(tokens) if tokens else np.zeros(0, job.token_dtype)
    report.tokens = len(token_array)
    out = Path(job.out)
    np.save(out / shard_file(name, "tokens"), token_array)
    np.save(
        out / shard_file(name, "lengths"),
        np.concatenate(lengths) if lengths else np.zeros((0, 2), job.length_dtype),
    )
    np.save(out / shard_file(name, "lines"), np.array(lines, dtype=np.uint32))
    return report


# -- running chunks in worker processes ----------------------------------------------------------------------

Job = TypeVar("Job", _SampleJob, _EncodeJob)
Result = TypeVar("Result")


@contextmanager
def _tokenizers_single_threaded() -> Iterator[None]:
    """TOKENIZERS_PARALLELISM=false for the worker processes started inside (set before they fork, so the
    library neither starts threads there nor warns about a fork after its threads ran here)."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def _report_of(result: Any) -> ChunkReport:
    return result[0] if isinstance(result, tuple) else result  # type: ignore[no-any-return]


def _run(
    work: Callable[[Job], Result], jobs: Sequence[Job], workers: int, progress: bool, what: str
) -> Iterator[Result]:
    """``work(job)`` for every job in ``workers`` processes, yielded in job order as soon as each and those
    before it are done (only results that came early wait here, so memory does not grow with the file).

    A chunk whose report holds an error raises it, once every chunk before it came without one, as
    ``FILE:LINE`` with the line counted from the start of the file.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    total = sum(job.chunk.size for job in jobs)
    early: dict[int, Result] = {}
    next_index = 0
    lines_before = 0  # lines of the chunks already yielded
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with (
        _tokenizers_single_threaded(),
        multiprocessing.get_context(method).Pool(workers) as pool,
        tqdm(total=total, unit="B", unit_scale=True, desc=what, disable=not progress, leave=False) as bar,
    ):
        for result in pool.imap_unordered(work, jobs):
            index = _report_of(result).index
            early[index] = result
            bar.update(jobs[index].chunk.size)
            while next_index in early:
                result = early.pop(next_index)
                report = _report_of(result)
                if report.error is not None:
                    line, path, reason, kind = report.error
                    raise CorpusError(path, lines_before + line, reason, kind)
                lines_before += report.lines
                next_index += 1
                yield result


@dataclass
class Summary:
    """A whole corpus's counts, with line numbers counted from the start of the file."""

    lines: int
    pairs: int
    skipped: dict[str, int]
    first_skipped: dict[str, str]
    left_out: int
    first_left_out: str | None
    first_lines: list[int]  # the first line of each chunk


def summarise(source: CorpusSource, chunks: Sequence[Chunk], reports: Sequence[ChunkReport]) -> Summary:
    """The chunk reports (in chunk order) added up; a corpus without a good pair is an error, as for
    :func:`~qkv.data.corpus.read_corpus`."""
    skipped: dict[str, int] = {}
    first_skipped: dict[str, str] = {}
    first_lines: list[int] = []
    first_left_out: str | None = None
    offset = 0
    for report in reports:
        first_lines.append(offset + 1)
        for kind, count in report.skipped.items():
            skipped[kind] = skipped.get(kind, 0) + count
        for kind, (line, path, reason) in report.first_skipped.items():
            first_skipped.setdefault(kind, f"{path}:{offset + line}: {reason}")
        if first_left_out is None and report.first_left_out is not None:
            first_left_out = f"{source.name}:{offset + report.first_left_out}"
        offset += report.lines
    pairs = sum(report.pairs for report in reports)
    if pairs == 0:
        if skipped:
            message = "no usable sentence pairs; " + corpus_report(source.name, 0, skipped, first_skipped)
            raise CorpusError(source.name, None, message)
        raise CorpusError(source.name, None, "no sentence pairs (the file is empty)")
    left_out = sum(report.left_out for report in reports)
    return Summary(offset, pairs, skipped, first_skipped, left_out, first_left_out, first_lines)


# -- the directory ------------------------------------------------------------------------------------------


def write_prepared(
    out: str | os.PathLike[str],
    source: CorpusSource,
    chunks: Sequence[Chunk],
    *,
    skip_bad: bool,
    src_tokenizer: Tokenizer,
    tgt_tokenizer: Tokenizer,
    tokenizer_files: Mapping[str, str],
    tokenizer_info: Mapping[str, Any],
    max_positions: int,
    eos_id: int,
    valid_pairs: Sequence[tuple[str, str]] = (),
    valid_report: str | None = None,
    workers: int = 1,
    progress: bool = False,
    overwrite: bool = False,
) -> list[str]:
    """Tokenize every chunk into its shard and write the prepared directory ``out`` atomically (built
    beside it and renamed: a reader sees no directory or a complete one). Returns the report lines.

    ``tokenizer_files`` (name -> text) are written beside the shards; ``valid_pairs`` as ``valid.jsonl``.
    An existing ``out`` that holds anything ``qkv prepare`` does not write is refused unless
    ``overwrite``; the corpus files themselves never may be ``out`` or inside it.
    """
    if max_positions < 2:
        raise ValueError(f"max_positions must be at least 2 (a token and </s>), got {max_positions}")
    joint = src_tokenizer is tgt_tokenizer
    vocab = max(src_tokenizer.vocab_size, tgt_tokenizer.vocab_size)
    ids, lens = token_dtype(vocab), length_dtype(max_positions)
    summary: Summary | None = None
    reports: list[ChunkReport] = []

    def fill(temp: Path) -> None:
        nonlocal summary
        jobs = [
            _EncodeJob(
                source,
                chunk,
                skip_bad,
                src_tokenizer.to_json(),
                None if joint else tgt_tokenizer.to_json(),
                max_positions,
                eos_id,
                ids,
                lens,
                str(temp),
            )
            for chunk in chunks
        ]
        reports.extend(_run(_encode_chunk, jobs, workers, progress, "tokenizing"))
        summary = summarise(source, chunks, reports)
        for name, text in tokenizer_files.items():
            (temp / name).write_text(text, encoding="utf-8")
        if valid_pairs:
            lines = (json.dumps({"src": s, "tgt": t}, ensure_ascii=False) + "\n" for s, t in valid_pairs)
            (temp / VALID_FILE).write_text("".join(lines), encoding="utf-8")
        report = _report_lines(source, summary, max_positions, tokenizer_info, valid_report)
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "corpus": {**asdict(source), "skip_bad": skip_bad},
            "pairs": summary.pairs - summary.left_out,
            "lines": summary.lines,
            "tokens": sum(r.tokens for r in reports),
            "token_dtype": ids,
            "length_dtype": lens,
            "eos_id": eos_id,
            "max_positions": max_positions,
            "skipped": summary.skipped,
            "first_skipped": summary.first_skipped,
            "left_out": {f"longer than {max_positions} tokens on a side": summary.left_out},
            "first_left_out": summary.first_left_out,
            "tokenizer": {"files": sorted(tokenizer_files), **tokenizer_info},
            "valid": {"file": VALID_FILE, "pairs": len(valid_pairs)} if valid_pairs else None,
            "shards": [
                {
                    "name": shard_name(r.index),
                    "pairs": r.pairs - r.left_out,
                    "tokens": r.tokens,
                    "first_line": summary.first_lines[r.index],
                    "lines": r.lines,
                }
                for r in reports
            ],
            "report": report,
        }
        (temp / MANIFEST).write_text(
            json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )

    inputs = [source.path, *([source.tgt_path] if source.tgt_path else [])]
    _remove_leftovers(Path(out))
    replace_directory(out, fill, owned=_Owned(), overwrite=overwrite, inputs=inputs)
    assert summary is not None
    return _report_lines(source, summary, max_positions, tokenizer_info, valid_report)


def _report_lines(
    source: CorpusSource,
    summary: Summary,
    max_positions: int,
    tokenizer_info: Mapping[str, Any],
    valid_report: str | None,
) -> list[str]:
    lines = corpus_report(source.name, summary.pairs, summary.skipped, summary.first_skipped).split("\n")
    if summary.left_out:
        lines.append(
            f"left out as longer than {max_positions} tokens: {summary.left_out:,} pairs "
            f"(the first: {summary.first_left_out})"
        )
    if valid_report:
        lines.append(valid_report)
    sample = tokenizer_info.get("sample")
    if isinstance(sample, dict):
        lines.append(
            f"tokenizer trained on a uniform sample of {sample['pairs']:,} of {summary.pairs:,} pairs "
            f"(at most {sample['size']:,}, seed {sample['seed']})"
        )
    elif tokenizer_info.get("from"):
        lines.append(f"tokenizer from {tokenizer_info['from']}")
    return lines


def _remove_leftovers(out: Path) -> None:
    """What a killed ``qkv prepare`` of ``out`` left beside it (its temporary directory, possibly large),
    and a directory renamed away when ``out`` itself is gone (put back)."""
    if out.parent.is_dir():
        for entry in out.parent.iterdir():
            match = LEFTOVER.match(entry.name)
            if match and match["name"] == out.name and not writer_alive(int(match["pid"])):
                if match["kind"] == "old" and not out.exists():
                    os.rename(entry, out)
                else:
                    remove(entry)


class _Owned:
    """The names ``qkv prepare`` writes into its output (a collection for :func:`check_output_directory`)."""

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and owns(name)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0
