"""Sequence-level knowledge distillation (Kim and Rush, 2016): replace each training target by a trained
autoregressive model's translation of its source.

Non-autoregressive models learn much better from such outputs than from human references: a teacher's
translations are more consistent (one way to say a thing, where references mix several), which removes
much of the multi-modality that makes independent per-position predictions disagree (Gu et al., 2018;
Zhou et al., 2020). ``qkv distill`` writes the result in the column layout it read, so ``qkv train --data``
takes it with the same ``--src-col``/``--tgt-col``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from tqdm import tqdm

from qkv.data.corpus import read_corpus
from qkv.decode.search import DEFAULT_SEARCH, SearchConfig
from qkv.models.seq2seq import Transformer
from qkv.storage import check_output_file, write_file
from qkv.tokenize import Tokenizer
from qkv.translator import Translator


def tsv_line(source: str, target: str, *, src_col: int, tgt_col: int) -> str:
    """One TSV line with ``source`` in column ``src_col`` and ``target`` in ``tgt_col`` (1-based); other
    columns, if any lie between, are empty. Tabs and line breaks inside the texts become spaces."""
    if src_col == tgt_col or min(src_col, tgt_col) < 1:
        raise ValueError(f"src_col={src_col} and tgt_col={tgt_col} must be distinct and at least 1")
    row = [""] * max(src_col, tgt_col)
    row[src_col - 1] = " ".join(source.split("\t")).replace("\n", " ").replace("\r", " ")
    row[tgt_col - 1] = " ".join(target.split("\t")).replace("\n", " ").replace("\r", " ")
    return "\t".join(row) + "\n"


def translate_all(
    translator: Translator, sources: Sequence[str], *, progress: bool = True, desc: str = "distill"
) -> list[str]:
    """Translate ``sources`` in chunks of a few batches, with a progress bar (sentences)."""
    chunk = max(translator.batch_size * 8, 1)
    out: list[str] = []
    with tqdm(total=len(sources), unit="sent", desc=desc, disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(sources), chunk):
            part = sources[start : start + chunk]
            out += translator.translate(part, first_line=start + 1)
            bar.update(len(part))
    return out


def distill(
    teacher: Transformer,
    src_tokenizer: Tokenizer,
    tgt_tokenizer: Tokenizer,
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    src_col: int = 1,
    tgt_col: int = 2,
    tgt_path: str | os.PathLike[str] | None = None,
    search: SearchConfig = DEFAULT_SEARCH,
    batch_size: int = 64,
    skip_bad: bool = False,
    progress: bool = True,
    warn: Callable[[str], None] | None = None,
    overwrite: bool = False,
) -> int:
    """Translate the sources of corpus ``data`` with ``teacher`` (``search``; default: beam search with 4
    beams) and write ``out`` as TSV, source in ``src_col`` and translation in ``tgt_col``. Returns the
    pairs written: a source the teacher translates to nothing is left out, with a warning (``warn``)
    naming it.

    The file is written under a temporary name and renamed, so an interrupted run leaves no partial file.
    An existing ``out`` is refused unless ``overwrite``, and ``out`` is never the corpus it reads
    (:class:`~qkv.storage.OutputExistsError`, raised before anything is translated).
    """
    inputs = [data] if tgt_path is None else [data, tgt_path]
    check_output_file(out, overwrite=overwrite, inputs=inputs)
    corpus = read_corpus(data, tgt_path=tgt_path, src_col=src_col, tgt_col=tgt_col, skip_bad=skip_bad)
    translator = Translator(
        teacher,
        src_tokenizer,
        tgt_tokenizer,
        search=search,
        batch_size=batch_size,
        warn=warn,
    )
    sources = corpus.sources
    translations = translate_all(translator, sources, progress=progress)
    # A teacher may translate a source to nothing; such a pair would stop `qkv train` (an empty target
    # side), so it is left out and reported. Line numbers are the sources' order in the corpus.
    empty: list[int] = []
    lines: list[str] = []
    for number, (source, translation) in enumerate(zip(sources, translations, strict=True), start=1):
        if not translation.strip():
            empty.append(number)
            continue
        lines.append(tsv_line(source, translation, src_col=src_col, tgt_col=tgt_col))
    write_file(out, "".join(lines), overwrite=overwrite, inputs=inputs)
    if empty and warn is not None:
        shown = ", ".join(str(n) for n in empty[:5]) + (", ..." if len(empty) > 5 else "")
        warn(
            f"left out {len(empty):,} source(s) the teacher translated to nothing "
            f"(source {'number' if len(empty) == 1 else 'numbers'} {shown} of {data})"
        )
    return len(sources) - len(empty)
