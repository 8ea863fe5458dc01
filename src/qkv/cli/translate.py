"""`qkv translate` and `qkv evaluate`, and the decoding options they share with `qkv attention`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qkv.allocator import keep_freed_memory
from qkv.cli.common import Subparsers, UsageError, add_pair_file_options, resolve_device
from qkv.cli.flag_types import (
    device_name,
    input_directory,
    non_negative_float,
    non_negative_int,
    output_file,
    positive_int,
)
from qkv.cli.line_input import input_batches
from qkv.cli.translate_io import BadLine, Request, output_lines, requests_of, skipped_line
from qkv.cli.translate_options import TRANSLATE_EXAMPLES, add_translate_controls, check_translate_flags

if TYPE_CHECKING:
    from qkv.decode import SearchConfig


def add_decoding_options(p: argparse.ArgumentParser) -> None:
    """The options of a loaded translator, shared by translate, evaluate and attention."""
    g = p.add_argument_group("decoding")
    g.add_argument(
        "--model",
        type=input_directory,
        metavar="DIR",
        required=True,
        help="a model directory, a run directory (its best/ model, else the latest checkpoint), or a Hugging "
        "Face Marian directory (OPUS-MT: config.json, model.safetensors, source.spm, target.spm, vocab.json)",
    )
    g.add_argument("--beam", type=positive_int, default=4, help="beam size; 1 = greedy (default 4)")
    g.add_argument(
        "--alpha", type=non_negative_float, default=0.6, help="length penalty ((5+len)/6)^alpha (default 0.6)"
    )
    g.add_argument(
        "--max-len-a",
        type=non_negative_float,
        default=1.2,
        help="output length limit: a * source length + b tokens (default a=1.2)",
    )
    g.add_argument("--max-len-b", type=non_negative_int, default=10, help="see --max-len-a (default b=10)")
    g.add_argument("--batch-size", type=positive_int, default=64, help="sentences per batch (default 64)")
    g.add_argument("--device", type=device_name, default="auto", help="cpu, cuda, cuda:N or auto (default)")
    g.add_argument(
        "--int8",
        action="store_true",
        help="CPU: decode with int8 weights and dynamically quantised activations (faster, "
        "approximate: check BLEU with qkv evaluate --int8)",
    )
    g.add_argument(
        "--target-lang",
        metavar="LANG",
        help="multilingual Marian/OPUS-MT models: the output language, written as its token (fra -> >>fra<<) "
        "in front of every line that does not start with one",
    )
    g = p.add_argument_group("non-autoregressive decoding (models trained with --model-type nat)")
    g.add_argument(
        "--decoder",
        choices=["auto", "at", "nat"],
        default="auto",
        help="at: autoregressive (greedy/beam), nat: mask-predict; auto (default): the model's kind",
    )
    g.add_argument(
        "--iterations",
        type=positive_int,
        default=1,
        help="nat: mask-predict passes; 1 = single pass, argmax everywhere (default 1)",
    )
    g.add_argument(
        "--adaptive",
        action="store_true",
        help="nat: stop refining a candidate at the first pass that changes none of its tokens, so "
        "--iterations is a maximum (faster: 3x at --iterations 10; it cost 0.1-0.6 BLEU on the demo "
        "corpus but 1-3 on cmn-eng, so check with qkv evaluate)",
    )
    g.add_argument(
        "--length-beam",
        type=positive_int,
        default=1,
        help="nat: decode the L most probable lengths, keep the best by average log-prob (default 1)",
    )
    g.add_argument(
        "--rescore-model",
        type=input_directory,
        metavar="DIR",
        help="nat: rescore the length beam's candidates with this autoregressive model (the teacher)",
    )


def search_config(
    beam: int,
    *,
    alpha: float | None = None,
    max_len_a: float | None = None,
    max_len_b: int | None = None,
    n_best: int = 1,
    sample: bool = False,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
) -> SearchConfig:
    """The search that the decoding flags ask for, for every command that decodes: ``--beam 1`` is
    greedy decoding (the outputs of a beam of one, without beam search's bookkeeping), a wider beam is
    beam search. A flag the command does not have (None) keeps :class:`~qkv.decode.SearchConfig`'s
    default (`qkv distill` has only --beam). ``sample`` (qkv translate --sample) samples instead, with
    the sampling options given (None: the default)."""
    from qkv.decode import Lengths, SearchConfig

    default = SearchConfig()
    lengths = Lengths(
        max_len_a=default.lengths.max_len_a if max_len_a is None else max_len_a,
        max_len_b=default.lengths.max_len_b if max_len_b is None else max_len_b,
    )
    return SearchConfig(
        method="sample" if sample else "greedy" if beam == 1 else "beam",
        beam=beam,
        n_best=n_best,
        alpha=default.alpha if alpha is None else alpha,
        lengths=lengths,
        temperature=default.temperature if temperature is None else temperature,
        top_k=default.top_k if top_k is None else top_k,
        top_p=default.top_p if top_p is None else top_p,
        seed=default.seed if seed is None else seed,
    )


def load_translator(args: argparse.Namespace) -> Any:
    from qkv.models import saved
    from qkv.models.nat import NATransformer
    from qkv.translator import Translator

    device = resolve_device(args.device)
    model = saved.load(args.model, device=device)
    is_nat = isinstance(model.model, NATransformer)
    if args.decoder == "nat" and not is_nat:
        raise UsageError(
            f"--decoder nat: {model.path} is an autoregressive model (train one with --model-type nat), "
            "or leave out --decoder"
        )
    if args.decoder == "at" and is_nat:
        raise UsageError(f"--decoder at: {model.path} is a non-autoregressive model; use --decoder nat")
    if args.int8:
        from qkv.infer.products import int8_available

        if next(model.model.parameters()).device.type != "cpu":
            raise UsageError("--int8 runs on a CPU; add --device cpu")
        if not int8_available():
            raise UsageError("--int8: this torch build has no fbgemm/x86 int8 kernels")
    target_lang = getattr(args, "target_lang", None)
    if target_lang is not None:
        _check_target_language(model.src_tokenizer, target_lang)
    teacher = None
    if args.rescore_model is not None:
        if not is_nat:
            raise UsageError("--rescore-model rescores a NAT model's length beam; --model is autoregressive")
        loaded = saved.load(args.rescore_model, device=device)
        if isinstance(loaded.model, NATransformer):
            raise UsageError(f"--rescore-model: {loaded.path} is not an autoregressive model")
        teacher = (loaded.model, loaded.src_tokenizer, loaded.tgt_tokenizer)
    return Translator(
        model.model,
        model.src_tokenizer,
        model.tgt_tokenizer,
        search=search_config(
            beam=args.beam,
            alpha=args.alpha,
            max_len_a=args.max_len_a,
            max_len_b=args.max_len_b,
            n_best=getattr(args, "n_best", 1),
            sample=getattr(args, "sample", False),
            temperature=getattr(args, "temperature", None),
            top_k=getattr(args, "top_k", None),
            top_p=getattr(args, "top_p", None),
            seed=getattr(args, "seed", None),
        ),
        batch_size=args.batch_size,
        warn=lambda message: print(f"qkv translate: warning: {message}", file=sys.stderr),
        iterations=args.iterations,
        length_beam=args.length_beam,
        teacher=teacher,
        int8=args.int8,
        adaptive=args.adaptive,
        target_lang=target_lang,
    )


def _check_target_language(tokenizer: Any, lang: str) -> None:
    """A language the model's source vocabulary has a token for, or a usage error listing those it has."""
    if tokenizer.token_to_id(f">>{lang}<<") is not None:
        return
    known = [
        token
        for token in (tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size))
        if token is not None and token.startswith(">>") and token.endswith("<<")
    ]
    has = (
        f"its languages: {' '.join(known[:20])}{' ...' if len(known) > 20 else ''}"
        if known
        else ("it has no language tokens: it translates into one language, leave out --target-lang")
    )
    raise UsageError(f"--target-lang {lang}: the model's vocabulary has no >>{lang}<< token; {has}")


def cmd_translate(args: argparse.Namespace) -> int:
    from qkv.glossary import Glossary

    keep_freed_memory()  # each step's logits reuse pages instead of faulting fresh ones (qkv.allocator)

    check_translate_flags(args)
    glossary = Glossary.load(args.glossary) if args.glossary else None
    translator = load_translator(args)
    if not _is_autoregressive(translator):
        given = {"--align": args.align, "--prefix": args.prefix, "--constraints": args.constraint,
                 "--glossary": args.glossary, "--sample": args.sample, "--n-best": args.n_best > 1}  # fmt: skip
        flag = next((flag for flag, value in given.items() if value), None)
        if flag is not None:
            raise UsageError(
                f"{flag} needs an autoregressive model; {args.model} is non-autoregressive (mask-predict)"
            )
    if args.align_layer is not None and args.align_layer >= translator.model.config.decoder_layers:
        last = translator.model.config.decoder_layers - 1
        raise UsageError(f"--align-layer {args.align_layer}: the model's decoder has layers 0 to {last}")
    _check_phrases(args, translator, glossary)
    for first, lines in input_batches(args):
        requests = requests_of(args, first, lines, glossary, translator.controls_problem)
        bad = next((r for r in requests if isinstance(r, BadLine)), None)
        if bad is not None and not args.skip_bad:  # the lines before it still get their output
            requests = requests[: requests.index(bad)]
        # A skipped line is decoded as an empty one (no work), so every line keeps its number.
        todo = [r if isinstance(r, Request) else Request("") for r in requests]
        controlled = any(r.prefix or r.constraints for r in todo)
        texts = [r.text for r in todo]
        translations = translator.translations(
            texts,
            first_line=first,
            prefixes=[r.prefix for r in todo] if controlled else None,
            constraints=[r.constraints for r in todo] if controlled else None,
        )
        alignments = (
            translator.alignments(texts, translations, layer=args.align_layer)
            if args.align
            else [None] * len(todo)
        )
        out: list[str] = []
        for offset, request in enumerate(requests):
            if isinstance(request, BadLine):
                print(f"qkv translate: warning: {request}; skipped", file=sys.stderr)
                out += skipped_line(args.format, first + offset, str(request))
                continue
            out += output_lines(
                args.format,
                first + offset,
                translations[offset],
                translator.tgt_tokenizer,
                scores=args.scores,
                alignment=alignments[offset],
            )
        sys.stdout.write("".join(line + "\n" for line in out))
        sys.stdout.flush()
        if bad is not None and not args.skip_bad:
            raise bad
    return 0


def _check_phrases(args: argparse.Namespace, translator: Any, glossary: Any) -> None:
    """Refuse a --prefix, --constraints or glossary target term with characters the model's vocabulary
    cannot write (<unk> decodes to nothing, so the output could not hold it) before any line is read."""
    given = [("--prefix", args.prefix or ""), *(("--constraints", c) for c in args.constraint)]
    given += (
        [(f"--glossary {args.glossary}: target term", target) for _, target in glossary.entries]
        if glossary
        else []
    )
    for flag, phrase in given:
        missing = translator.unwritable(phrase) if phrase.strip() else []
        if missing:
            raise UsageError(f"{flag} {phrase!r}: the model's vocabulary cannot write {''.join(missing)!r}")


def _is_autoregressive(translator: Any) -> bool:
    from qkv.models.seq2seq import Transformer

    return isinstance(translator.model, Transformer)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from qkv.data.corpus import read_corpus
    from qkv.evaluate import score

    keep_freed_memory()  # each step's logits reuse pages instead of faulting fresh ones (qkv.allocator)

    corpus = read_corpus(
        args.data,
        tgt_path=args.tgt,
        src_col=args.src_col,
        tgt_col=args.tgt_col,
        max_chars=None,
        skip_bad=args.skip_bad,
    )
    print(corpus.report(), file=sys.stderr)
    translator = load_translator(args)
    hypotheses: list[str] = []
    from tqdm import tqdm

    sources = corpus.sources
    step = max(args.batch_size * 4, 1)
    with tqdm(total=len(sources), unit="sent", desc="translate", disable=args.quiet, file=sys.stderr) as bar:
        for start in range(0, len(sources), step):
            hypotheses += translator.translate(sources[start : start + step], first_line=start + 1)
            bar.update(min(step, len(sources) - start))
    if args.output:
        try:
            Path(args.output).write_text("".join(h + "\n" for h in hypotheses), encoding="utf-8")
        except OSError as e:
            e.filename = e.filename or args.output  # a full disk's error names no file otherwise
            raise
    scores = score(hypotheses, corpus.targets, tokenize=args.tokenize)
    print(scores.report())
    return 0


def add_translate_parser(sub: Subparsers) -> None:
    """`qkv translate` and its options."""
    p = sub.add_parser(
        "translate",
        help="translate sentences (arguments, or stdin lines to stdout)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Translate the sentences given as arguments, or stream stdin to stdout: one line in, one "
        "line out, in order; an empty line gives an empty line. Over-long inputs are truncated with a "
        "warning; invalid UTF-8 is replaced (U+FFFD) with a warning.",
        epilog=TRANSLATE_EXAMPLES,
    )
    p.add_argument("text", nargs="*", help="sentences to translate (default: read stdin)")
    add_decoding_options(p)
    add_translate_controls(p)
    p.set_defaults(func=cmd_translate)


def add_evaluate_parser(sub: Subparsers) -> None:
    """`qkv evaluate` and its options."""
    p = sub.add_parser(
        "evaluate",
        help="translate a test set and score it with sacreBLEU (BLEU, chrF)",
        description="Translate the source side of a corpus and score against its target side with sacreBLEU; "
        "prints BLEU and chrF with their signatures. Tokenization: 13a for English targets, zh for Chinese "
        "(guessed from the references unless --tokenize is given).",
    )
    add_pair_file_options(p, target="reference")
    p.add_argument("--skip-bad", action="store_true", help="skip bad lines (default: stop at the first)")
    p.add_argument(
        "--tokenize",
        choices=["13a", "zh", "intl", "char", "none"],
        help="sacreBLEU tokenization (default: zh for Chinese references, else 13a)",
    )
    p.add_argument(
        "--output", type=output_file, metavar="FILE", help="also write the translations here, one per line"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_decoding_options(p)
    p.set_defaults(func=cmd_evaluate)
