"""LibreTranslate's API, so that its clients (libretranslatepy, browser extensions, apps) work unchanged.

As LibreTranslate's own ``app.py`` reads them: ``POST /translate`` takes a JSON object or a form (and the
query string) with ``q`` (a string, or in JSON a list of strings), ``source`` (a code or ``auto``),
``target``, ``format`` (``text``; ``html`` is refused with 400, since qkv translates plain text and would
lose the markup), ``alternatives`` (n more candidates from the beam) and ``api_key``; it answers
``{"translatedText": ...}`` (a string or a list, as ``q``), ``"alternatives"`` when asked for and
``"detectedLanguage"`` for ``auto``. ``GET /languages`` lists ``{"code", "name", "targets"}``; ``POST
/detect`` guesses among the served source languages by script; ``GET /frontend/settings`` answers what
LibreTranslate's own web client asks for. Errors are ``{"error": "..."}`` with LibreTranslate's
messages where it has one ("Invalid request: missing q parameter", "xx is not supported", "Invalid API
key").
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request

from qkv.serve.errors import ApiError
from qkv.serve.inference import Job, Options
from qkv.serve.models import ServedModel, detect, language_name
from qkv.serve.state import State

router = APIRouter(tags=["LibreTranslate"])


async def _params(request: Request) -> tuple[dict[str, Any], bool]:
    """The request's parameters and whether they came as JSON; a form's values and the query string
    otherwise (LibreTranslate reads Flask's request.values)."""
    if "json" in request.headers.get("content-type", ""):
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "Invalid JSON format") from None
        if not isinstance(body, dict):
            raise ApiError(400, "Invalid JSON format")
        return body, True
    values: dict[str, Any] = dict(request.query_params)
    if "x-www-form-urlencoded" in request.headers.get("content-type", ""):
        values.update(_urlencoded(await request.body()))
    else:
        form = await request.form()
        values.update({key: value for key, value in form.items() if isinstance(value, str)})
    return values, False


def _urlencoded(body: bytes) -> dict[str, str]:
    """A urlencoded form body read as UTF-8, percent-escaped or not: ``curl -d q=我爱你`` sends the
    characters' raw UTF-8 bytes, which LibreTranslate (werkzeug) reads as text and Starlette's form
    parser as Latin-1 (so 我爱你 reached the model as mojibake). Invalid UTF-8 is a 400."""
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="strict"))
    except UnicodeDecodeError:  # raw bytes, or a %XX escape, that are not UTF-8
        raise ApiError(400, "Invalid request: the form body is not UTF-8") from None


def _state(request: Request) -> State:
    state: State = request.app.state.qkv
    return state


@router.post("/translate", summary="Translate text (LibreTranslate's API)")
async def translate(request: Request) -> dict[str, Any]:
    state = _state(request)
    params, is_json = await _params(request)
    state.check_api_key(_text(params.get("api_key")), missing_status=403)
    q = params.get("q")
    for name, value in (("q", q), ("source", params.get("source")), ("target", params.get("target"))):
        if not value:
            raise ApiError(400, f"Invalid request: missing {name} parameter")
    source, target = _text(params["source"]) or "", _text(params["target"]) or ""
    if isinstance(q, list):
        if not all(isinstance(text, str) for text in q):
            raise ApiError(400, "Invalid request: q must be a string or a list of strings")
        texts: list[str] = q
    elif isinstance(q, str):
        texts = [q if is_json else "\n".join(q.splitlines())]
    else:
        raise ApiError(400, "Invalid request: q must be a string or a list of strings")
    text_format = _text(params.get("format")) or "text"
    if text_format == "html":
        raise ApiError(400, "html format is not supported: qkv translates plain text; send format=text")
    if text_format != "text":
        raise ApiError(400, f"{text_format} format is not supported")
    alternatives = _alternatives(params.get("alternatives"), state.settings.max_beam)
    state.check_texts(texts, "q", status=400)

    chosen, detected = _route(state, texts, source, target)
    beam = max(state.settings.default_beam, alternatives + 1)
    results: list[Any] = [None] * len(texts)
    by_model: dict[str, list[int]] = {}
    for index, model in enumerate(chosen):
        by_model.setdefault(model.name, []).append(index)

    async def run(model: ServedModel, indices: list[int]) -> None:
        options = Options(model.name, "beam" if beam > 1 else "greedy", beam, alternatives + 1, None, False)
        found = await state.translate(model, options, [Job(texts[i]) for i in indices])
        for i, result in zip(indices, found, strict=True):
            results[i] = result

    await asyncio.gather(*(run(state.models[name], indices) for name, indices in by_model.items()))
    translated = [r.translation.text for r in results]
    others = [[c.text for c in r.translation.candidates[1 : alternatives + 1]] for r in results]
    batch = isinstance(q, list)
    answer: dict[str, Any] = {"translatedText": translated if batch else translated[0]}
    if alternatives:
        answer["alternatives"] = others if batch else others[0]
    if detected is not None:
        answer["detectedLanguage"] = detected if batch else detected[0]
    return answer


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ApiError(400, f"Invalid request: expected a string, got {json.dumps(value)[:40]}")


def _alternatives(value: Any, max_beam: int) -> int:
    if value in (None, ""):
        return 0
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ApiError(400, f"Invalid request: alternatives={value!r} must be an integer") from None
    if not 0 <= n < max_beam:
        raise ApiError(400, f"Invalid request: alternatives={n} must be between 0 and {max_beam - 1}")
    return n


def _route(
    state: State, texts: list[str], source: str, target: str
) -> tuple[list[ServedModel], list[dict[str, Any]] | None]:
    """The model for each text, and for ``source=auto`` what was detected. 400 in LibreTranslate's words
    when no served model translates the pair."""
    models = list(state.models.values())
    if not any(m.spec.target == target for m in models):
        raise ApiError(400, f"{target} is not supported")
    if source != "auto":
        if not any(m.spec.source == source for m in models):
            raise ApiError(400, f"{source} is not supported")
        for model in models:
            if (model.spec.source, model.spec.target) == (source, target):
                return [model] * len(texts), None
        raise ApiError(
            400,
            f"{language_name(target)} ({target}) is not available as a target language from "
            f"{language_name(source)} ({source})",
        )
    fitting = [m for m in models if m.spec.target == target]
    sources = list(dict.fromkeys(m.spec.source for m in fitting))
    chosen: list[ServedModel] = []
    detected: list[dict[str, Any]] = []
    for text in texts:
        language, confidence = detect(text, sources)[0]
        if len(sources) > 1 and confidence == 0:
            raise ApiError(
                400, f"cannot tell the language of {text[:40]!r} among {', '.join(sources)}; name the source"
            )
        chosen.append(next(m for m in fitting if m.spec.source == language))
        detected.append({"confidence": round(confidence, 1), "language": language})
    return chosen, detected


@router.get("/languages", summary="Languages and their targets (LibreTranslate's API)")
async def languages(request: Request) -> list[dict[str, Any]]:
    models = list(_state(request).models.values())
    codes = list(dict.fromkeys(code for m in models for code in (m.spec.source, m.spec.target)))
    return [
        {
            "code": code,
            "name": language_name(code),
            "targets": sorted({m.spec.target for m in models if m.spec.source == code}),
        }
        for code in codes
    ]


@router.post("/detect", summary="Guess the language among the served sources (LibreTranslate's API)")
async def detect_language(request: Request) -> list[dict[str, Any]]:
    state = _state(request)
    params, _ = await _params(request)
    state.check_api_key(_text(params.get("api_key")), missing_status=403)
    q = params.get("q")
    if not q:
        raise ApiError(400, "Invalid request: missing q parameter")
    text = " ".join(q) if isinstance(q, list) else _text(q) or ""
    state.check_texts([text], "q", status=400)
    sources = list(dict.fromkeys(m.spec.source for m in state.models.values()))
    return [{"confidence": round(c, 1), "language": code} for code, c in detect(text, sources)]


@router.get("/frontend/settings", summary="What LibreTranslate's web client asks for")
async def frontend_settings(request: Request) -> dict[str, Any]:
    state = _state(request)
    model = state.default_model.spec
    return {
        "charLimit": state.settings.max_chars,
        "frontendTimeout": 500,
        "apiKeys": bool(state.settings.api_keys),
        "keyRequired": bool(state.settings.api_keys),
        "suggestions": False,
        "filesTranslation": False,
        "supportedFilesFormat": [],
        "language": {
            "source": {"code": model.source, "name": language_name(model.source)},
            "target": {"code": model.target, "name": language_name(model.target)},
        },
    }
