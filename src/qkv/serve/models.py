"""The models a server translates with: each a loaded model directory with a name and a language pair.

A model is named on the command line as ``DIR`` or ``NAME=DIR``; its languages come from ``--languages
SRC:TGT``, or from a name of the form ``SRC-TGT`` (``zh-en=runs/demo/best``), or from a directory
named as OPUS-MT names its releases (``.../opus-mt-zh-en``). Nothing in a model directory records its
languages, so one of the three is required. Requests name models only by these names, never by a path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from qkv.models import saved
from qkv.models.nat import NATransformer
from qkv.models.seq2seq import Transformer
from qkv.translator import Translator

_CODE = r"[a-z]{2,3}(?:_[A-Za-z]{2,4})?"
_PAIR_NAME = re.compile(rf"(?:.*-)?({_CODE})-({_CODE})")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

# ISO 639-1 names of common languages, for LibreTranslate's /languages; other codes are their own name.
LANGUAGE_NAMES = {
    "ar": "Arabic",
    "cs": "Czech",
    "da": "Danish",
    "de": "German",
    "el": "Greek",
    "en": "English",
    "es": "Spanish",
    "fi": "Finnish",
    "fr": "French",
    "he": "Hebrew",
    "hi": "Hindi",
    "hu": "Hungarian",
    "id": "Indonesian",
    "it": "Italian",
    "ja": "Japanese",
    "ko": "Korean",
    "nl": "Dutch",
    "pl": "Polish",
    "pt": "Portuguese",
    "ro": "Romanian",
    "ru": "Russian",
    "sv": "Swedish",
    "th": "Thai",
    "tr": "Turkish",
    "uk": "Ukrainian",
    "vi": "Vietnamese",
    "zh": "Chinese",
}


@dataclass(frozen=True)
class ModelSpec:
    """A model as the command line gives it: a name, a directory and its source and target language."""

    name: str
    path: Path
    source: str
    target: str


@dataclass
class ServedModel:
    """A loaded model: its spec, its :class:`~qkv.translator.Translator` (the server's default search;
    each batch replaces the search with the request's) and whether it can show attention (an
    autoregressive Transformer; a non-autoregressive model cannot)."""

    spec: ModelSpec
    translator: Translator

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def has_attention(self) -> bool:
        return isinstance(self.translator.model, Transformer)

    @property
    def is_nat(self) -> bool:
        return isinstance(self.translator.model, NATransformer)


def parse_specs(models: list[str], languages: list[str]) -> list[ModelSpec]:
    """The specs of ``--model [NAME=]DIR`` values and ``--languages SRC:TGT`` values (the i-th
    --languages belongs to the i-th --model). ValueError naming the flag when something is missing."""
    if not models:
        raise ValueError("--model: give at least one model directory")
    if len(languages) > len(models):
        raise ValueError(
            f"--languages is given {len(languages)} times for {len(models)} --model; give one per model, in order"
        )
    specs: list[ModelSpec] = []
    for index, value in enumerate(models):
        name, sep, path_text = value.partition("=")
        if not sep:
            name, path_text = "", value
        elif not _NAME.fullmatch(name):
            raise ValueError(
                f"--model {value}: a name is letters, digits, '.', '_' and '-' (at most 64), like zh-en=DIR"
            )
        path = Path(path_text)
        if index < len(languages):
            source, target = _parse_languages(languages[index])
        else:
            found = _PAIR_NAME.fullmatch(name) or _PAIR_NAME.fullmatch(path.resolve().name)
            if found is None:
                raise ValueError(
                    f"--model {value}: which languages does it translate? add --languages SRC:TGT "
                    f"(e.g. --languages zh:en) or name it SRC-TGT=DIR (e.g. zh-en={path_text})"
                )
            source, target = found.group(1), found.group(2)
        specs.append(ModelSpec(name or f"{source}-{target}", path, source, target))
    names = [spec.name for spec in specs]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"--model: two models are named {name}; name them NAME=DIR")
    return specs


def _parse_languages(value: str) -> tuple[str, str]:
    source, sep, target = value.partition(":")
    if not (sep and re.fullmatch(_CODE, source) and re.fullmatch(_CODE, target)):
        raise ValueError(f"--languages {value}: expected SRC:TGT language codes, like zh:en")
    return source, target


def load_model(spec: ModelSpec, *, beam: int, int8: bool) -> ServedModel:
    """Load ``spec``'s directory (a qkv model or run directory, or a Marian/OPUS-MT directory) on the CPU.
    ``beam`` is the default search's beam (1: greedy). Errors are the loaders' (ValueError naming the file)."""
    from qkv.decode import SearchConfig

    if not spec.path.is_dir():
        raise FileNotFoundError(f"--model {spec.path}: no such directory")
    model = saved.load(spec.path)
    search = SearchConfig(method="greedy" if beam == 1 else "beam", beam=beam)
    translator = Translator(
        model.model, model.src_tokenizer, model.tgt_tokenizer, search=search, batch_size=1 << 16, int8=int8
    )
    return ServedModel(spec, translator)


def language_name(code: str) -> str:
    return LANGUAGE_NAMES.get(code.split("_")[0], code)


# Unicode script ranges of the languages whose script alone names them (one script, one language
# among those served); Latin-script languages share the Latin range.
_SCRIPTS: dict[str, tuple[tuple[int, int], ...]] = {
    "zh": ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0xF900, 0xFAFF)),
    "ja": ((0x3040, 0x30FF),),
    "ko": ((0xAC00, 0xD7AF), (0x1100, 0x11FF)),
    "ru": ((0x0400, 0x04FF),),
    "uk": ((0x0400, 0x04FF),),
    "ar": ((0x0600, 0x06FF),),
    "he": ((0x0590, 0x05FF),),
    "el": ((0x0370, 0x03FF),),
    "th": ((0x0E00, 0x0E7F),),
    "hi": ((0x0900, 0x097F),),
}
_LATIN = ((0x0041, 0x005A), (0x0061, 0x007A), (0x00C0, 0x024F))


def detect(text: str, candidates: list[str]) -> list[tuple[str, float]]:
    """The ``candidates`` (language codes) ranked by the share of ``text``'s letters written in their
    script, as percentages; Latin-script languages share the Latin letters' share equally. A cheap guess
    by script, enough to pick among served source languages written differently (zh, ja, ru, en...)."""
    letters = [ord(c) for c in text if c.isalpha()]
    if not letters:
        return [(code, 0.0) for code in candidates]

    def share(ranges: tuple[tuple[int, int], ...]) -> float:
        return sum(any(lo <= c <= hi for lo, hi in ranges) for c in letters) / len(letters)

    latin = [code for code in candidates if code.split("_")[0] not in _SCRIPTS]
    found = []
    for code in candidates:
        base = code.split("_")[0]
        if base in _SCRIPTS:
            same_script = [c for c in candidates if _SCRIPTS.get(c.split("_")[0]) == _SCRIPTS[base]]
            found.append((code, 100.0 * share(_SCRIPTS[base]) / len(same_script)))
        else:
            found.append((code, 100.0 * share(_LATIN) / len(latin)))
    return sorted(found, key=lambda pair: -pair[1])
