"""qkv's own API: ``GET /v1/models`` and ``POST /v1/translate`` (texts in; n-best with scores, and on
request the tokens and the cross-attention of the best candidate).

The attention's ``mean`` is averaged over every decoder layer and head (the response says so in
``"averaged"``); ``per_head`` (``attention: "heads"``) has every layer and head. Rows are the positions
predicting each target token and then </s> (``target_tokens``), columns the source tokens ending in </s>
(``source_tokens``), and each row sums to 1 (:func:`qkv.viz.cross_attention`); the tokens come with the
attention, since they label its rows and columns. For an empty text both are empty lists.

``prefixes`` (one target text per text) and ``constraints`` (target phrases per text) are forced into
every candidate as ``qkv translate`` forces them (:meth:`qkv.translator.Translator.translations`, then
:func:`qkv.decode.decode`): a prefix at the start, each phrase somewhere, contiguously.

The API key, where the server has keys, goes in ``Authorization: Bearer KEY``, ``X-API-Key: KEY`` or
the body's ``api_key``.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from qkv.decode.constraints import check_constraints, check_prefixes, room_problem
from qkv.serve.errors import ApiError
from qkv.serve.inference import AVERAGED, Job, Options, Result
from qkv.serve.models import ServedModel
from qkv.serve.state import State

router = APIRouter(prefix="/v1", tags=["qkv"])


class TranslateRequest(BaseModel):
    """A batch of texts and how to translate them; unknown fields are an error (422 naming them)."""

    model_config = ConfigDict(extra="forbid")

    texts: list[str] = Field(min_length=1, description="the texts to translate")
    model: str | None = Field(None, description="a model's name from GET /v1/models; default: the first")
    method: Literal["beam", "greedy", "sample"] = "beam"
    beam: int = Field(4, ge=1, description="beam size (method beam)")
    n_best: int = Field(1, ge=1, description="candidates per text, best first (method beam; at most beam)")
    max_length: int | None = Field(None, ge=1, description="most output tokens per text")
    int8: bool = Field(False, description="int8 weights and activations (CPU; approximate, faster)")
    attention: Literal["none", "mean", "heads"] = "none"
    tokens: bool = Field(False, description="the source and target tokens")
    prefixes: list[str] | None = Field(
        None, description='per text, target text every candidate starts with ("" for none)'
    )
    constraints: list[list[str]] | None = Field(
        None, description="per text, target phrases every candidate contains ([] for none; not with sample)"
    )
    seed: int = Field(0, ge=0, le=2**63 - 1, description="sampling's seed (method sample)")
    api_key: str | None = None


def _state(request: Request) -> State:
    state: State = request.app.state.qkv
    return state


def _api_key(request: Request, body_key: str | None) -> str | None:
    authorization = request.headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return request.headers.get("x-api-key") or body_key


@router.get("/models", summary="The models this server translates with")
async def models(request: Request) -> dict[str, Any]:
    state = _state(request)
    default = state.default_model.name
    return {
        "models": [
            {"name": m.name, "source": m.spec.source, "target": m.spec.target, "default": m.name == default}
            for m in state.models.values()
        ]
    }


@router.post("/translate", summary="Translate texts: n-best with scores, tokens and attention on request")
async def translate(body: TranslateRequest, request: Request) -> dict[str, Any]:
    state = _state(request)
    state.check_api_key(_api_key(request, body.api_key))
    model = state.model(body.model)
    state.check_texts(body.texts, "texts")
    limit = state.settings.max_beam
    if body.beam > limit:
        raise ApiError(422, f"beam: {body.beam} is more than this server's limit of {limit}")
    if body.method == "beam" and body.n_best > body.beam:
        raise ApiError(
            422, f"n_best: {body.n_best} is more than beam={body.beam}; beam search keeps beam candidates"
        )
    if body.method != "beam" and body.n_best > 1:
        raise ApiError(
            422, f"n_best: {body.n_best} needs method beam (greedy and sampling give one candidate)"
        )
    if body.int8 and not state.int8_available:
        raise ApiError(422, "int8: this server's torch has no int8 CPU kernels; leave int8 out")
    if body.attention != "none" and not model.has_attention:
        raise ApiError(422, f"attention: model {model.name} is not an autoregressive Transformer")
    rules = _rules(body, model)
    group = state.new_group() if body.method == "sample" else None
    beam, n_best = (body.beam, body.n_best) if body.method == "beam" else (1, 1)  # one batch key per search
    seed = body.seed if body.method == "sample" else 0
    has_rules = any(prefix or phrases for prefix, phrases in rules)
    options = Options(
        model.name, body.method, beam, n_best, body.max_length, body.int8, group, seed, has_rules
    )
    jobs = [
        Job(text, body.attention, body.tokens, prefix, phrases)
        for text, (prefix, phrases) in zip(body.texts, rules, strict=True)
    ]
    results = await state.translate(model, options, jobs)
    return {"model": model.name, "translations": [_translation(r, body.attention) for r in results]}


Rules = tuple[str, tuple[str, ...]]


def _rules(body: TranslateRequest, model: ServedModel) -> list[Rules]:
    """Each text's prefix and constraints, checked before the text is queued as
    :meth:`qkv.translator.Translator.translations` and :func:`qkv.decode.decode` would check them (a
    phrase is encoded alone, as :meth:`~qkv.translator.Translator.target_ids` does): 422 naming the
    field and the text's index."""
    count = len(body.texts)
    for name, given in (("prefixes", body.prefixes), ("constraints", body.constraints)):
        if given is not None and len(given) != count:
            raise ApiError(422, f"{name}: {len(given)} entries for {count} texts; give one per text")
    if body.prefixes is None and body.constraints is None:
        return [("", ())] * count
    if not model.has_attention:
        raise ApiError(422, f"prefixes, constraints: model {model.name} is not an autoregressive Transformer")
    if body.constraints is not None and body.method == "sample" and any(body.constraints):
        raise ApiError(422, "constraints: need method beam or greedy, not sample")
    translator = model.translator
    config = translator.model.config
    special = {"<pad>": config.pad_id, "<s>": config.bos_id, "</s>": config.eos_id}
    found: list[Rules] = []
    for index in range(count):
        prefix = body.prefixes[index].strip() if body.prefixes is not None else ""
        phrases = body.constraints[index] if body.constraints is not None else []
        named = [(f"constraints[{index}]", phrase) for phrase in phrases]
        if prefix:
            named.insert(0, (f"prefixes[{index}]", prefix))
        for where, phrase in named:
            if not phrase.strip():
                raise ApiError(422, f"{where}: the phrase {phrase!r} is empty")
            missing = translator.unwritable(phrase)
            if missing:
                raise ApiError(
                    422, f"{where}: the model's vocabulary cannot write {''.join(missing)!r} (in {phrase!r})"
                )
        prefix_ids, phrase_ids = translator.controls_ids(prefix, phrases)
        try:
            check_prefixes([prefix_ids], 1, vocab_size=config.tgt_vocab_size, special=special)
            check_constraints([phrase_ids], 1, vocab_size=config.tgt_vocab_size, special=special)
        except ValueError as e:
            raise ApiError(422, f"texts[{index}]: {e}") from None
        problem = room_problem(len(prefix_ids) + sum(map(len, phrase_ids)), config.max_positions - 1)
        if problem:
            raise ApiError(422, f"texts[{index}]: {problem}")
        found.append((prefix, tuple(phrases)))
    return found


def _translation(result: Result, attention: str) -> dict[str, Any]:
    translation = result.translation
    out: dict[str, Any] = {
        "text": translation.text,
        "n_best": [
            {"text": c.text, "score": c.score, "log_prob": c.log_prob} for c in translation.candidates
        ],
    }
    if result.source_tokens is not None:
        out["source_tokens"] = result.source_tokens
        out["target_tokens"] = result.target_tokens
    if attention != "none":
        weights: dict[str, Any] = {
            "layers": result.layers,
            "heads": result.heads,
            "averaged": AVERAGED,
            "mean": result.mean,
        }
        if attention == "heads":
            weights["per_head"] = result.per_head
        out["attention"] = weights
    return out
