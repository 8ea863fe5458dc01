"""qkv's /v1 API through the real server (``python -m qkv serve`` on a free port, httpx over HTTP).

References, computed in this process on the same model directory: :class:`qkv.translator.Translator`
(the translations), the model's teacher-forced float64 log-probabilities (the scores),
:func:`qkv.viz.cross_attention` (the attention) and :func:`qkv.decode.decode` (prefixes, constraints,
sampling).
"""

from __future__ import annotations

import dataclasses
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import torch

from qkv.decode import SearchConfig, decode, length_penalty
from qkv.models.seq2seq import Transformer
from qkv.translator import Translator
from qkv.viz import cross_attention

TEXTS = ["我爱你", "他很高兴。", "你是学生吗？", "我们不喜欢这本书", "", "她有三只猫", "我爱你。"]
# Scores travel as JSON numbers printed from float32 and a sentence's batch changes its padding: the
# same float32 sums in another order. Far below any difference between two candidates' scores.
SCORE_TOLERANCE = 1e-4
# The attention is sent rounded to 6 decimals.
WEIGHT_TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def client(running_server: str) -> httpx.Client:
    return httpx.Client(base_url=running_server, timeout=60)


def translate(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/translate", json=body)
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def teacher_forced_log_prob(model: Transformer, source_ids: list[int], output_ids: list[int]) -> float:
    """log P(output_ids, </s> | source_ids), the model run once over the whole output, in float64."""
    c = model.config
    with torch.inference_mode():
        logits = model(torch.tensor([source_ids]), torch.tensor([[c.bos_id, *output_ids]]))
    log_probs = torch.log_softmax(logits[0].double(), dim=-1)  # (len(output_ids) + 1, vocab)
    wanted = torch.tensor([*output_ids, c.eos_id])
    return float(log_probs[torch.arange(len(wanted)), wanted].sum())


def test_health_ready_and_models(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["models"] == ["zh-en"]
    assert client.get("/v1/models").json() == {
        "models": [{"name": "zh-en", "source": "zh", "target": "en", "default": True}]
    }


@pytest.mark.parametrize("method", ["beam", "greedy"])
def test_translations_equal_the_translator_alone_and_batched(
    client: httpx.Client, tiny_translator: Translator, method: str
) -> None:
    search = SearchConfig(method="beam", beam=4) if method == "beam" else SearchConfig(method="greedy")
    reference = dataclasses.replace(tiny_translator, search=search)
    expected = [reference.translations([text])[0] for text in TEXTS]  # one by one

    together = translate(client, texts=TEXTS, method=method)["translations"]
    with ThreadPoolExecutor(len(TEXTS)) as pool:  # concurrent requests, merged by the batcher
        apart = list(pool.map(lambda text: translate(client, texts=[text], method=method), TEXTS))
    for answers in (together, [found["translations"][0] for found in apart]):
        assert [a["text"] for a in answers] == [e.text for e in expected]
        for answer, translation in zip(answers, expected, strict=True):
            (best,) = answer["n_best"]
            assert best["text"] == translation.text
            assert best["score"] == pytest.approx(translation.candidates[0].score, abs=SCORE_TOLERANCE)
            assert best["log_prob"] == pytest.approx(translation.candidates[0].log_prob, abs=SCORE_TOLERANCE)


def test_n_best_is_sorted_and_scored_by_teacher_forcing(
    client: httpx.Client, tiny_translator: Translator
) -> None:
    model = tiny_translator.model
    assert isinstance(model, Transformer)
    texts = ["我爱你", "他们很高兴吗"]
    answers = translate(client, texts=texts, beam=5, n_best=4)["translations"]
    sources = tiny_translator.source_ids(texts)
    found = decode(model, sources, SearchConfig(beam=5, n_best=4))
    alpha = SearchConfig().alpha
    for answer, source, hyps in zip(answers, sources, found, strict=True):
        n_best = answer["n_best"]
        assert len(n_best) == 4
        assert answer["text"] == n_best[0]["text"]
        scores = [c["score"] for c in n_best]
        assert scores == sorted(scores, reverse=True)
        assert [c["text"] for c in n_best] == [tiny_translator.text_of(h.tokens) for h in hyps]
        for candidate, hyp in zip(n_best, hyps, strict=True):
            reference = teacher_forced_log_prob(model, source, hyp.tokens)
            assert candidate["log_prob"] == pytest.approx(reference, abs=SCORE_TOLERANCE)
            penalty = length_penalty(len(hyp.tokens) + 1, alpha)
            assert candidate["score"] == pytest.approx(reference / penalty, abs=SCORE_TOLERANCE)


def test_attention_is_the_cross_attention_of_the_best_candidate(
    client: httpx.Client, tiny_translator: Translator
) -> None:
    model = tiny_translator.model
    assert isinstance(model, Transformer)
    texts = ["我爱你", "他很高兴。"]
    answers = translate(client, texts=texts, attention="heads", tokens=True)["translations"]
    for text, answer, source in zip(texts, answers, tiny_translator.source_ids(texts), strict=True):
        src_tok, tgt_tok = tiny_translator.src_tokenizer, tiny_translator.tgt_tokenizer
        assert answer["source_tokens"] == [src_tok.id_to_token(i) for i in source]
        output = tiny_translator.translations([text])[0].candidates[0].ids
        assert answer["target_tokens"] == [tgt_tok.id_to_token(i) for i in [*output, model.config.eos_id]]
        expected = cross_attention(model, source, output).double()  # (layers, heads, tgt, src)
        weights = answer["attention"]
        assert (weights["layers"], weights["heads"]) == tuple(expected.shape[:2])
        assert weights["averaged"] == "layers and heads"
        per_head = torch.tensor(weights["per_head"], dtype=torch.float64)
        torch.testing.assert_close(per_head, expected, atol=WEIGHT_TOLERANCE, rtol=0)
        mean = torch.tensor(weights["mean"], dtype=torch.float64)
        torch.testing.assert_close(mean, expected.mean(dim=(0, 1)), atol=WEIGHT_TOLERANCE, rtol=0)
        torch.testing.assert_close(
            mean.sum(-1), torch.ones(len(output) + 1, dtype=torch.float64), atol=1e-5, rtol=0
        )


def test_attention_mean_alone_and_of_an_empty_text(client: httpx.Client) -> None:
    mean_only, empty = translate(client, texts=["我爱你", ""], attention="mean")["translations"]
    assert "per_head" not in mean_only["attention"]
    # The tokens label the matrix's rows and columns: they come with it.
    assert len(mean_only["attention"]["mean"]) == len(mean_only["target_tokens"])
    assert {len(row) for row in mean_only["attention"]["mean"]} == {len(mean_only["source_tokens"])}
    assert empty["text"] == "" and empty["attention"]["mean"] == []


def test_prefixes_and_constraints_equal_decode(client: httpx.Client, tiny_translator: Translator) -> None:
    model = tiny_translator.model
    assert isinstance(model, Transformer)
    texts = ["我爱你", "他很高兴。", "你是学生吗？"]
    prefixes = ["I love", "", "Are you"]
    constraints = [[], ["happy"], ["student", "you"]]
    answers = translate(client, texts=texts, n_best=2, prefixes=prefixes, constraints=constraints)
    encode = tiny_translator.tgt_tokenizer.encode
    prefix_ids = [encode(p) if p else [] for p in prefixes]
    phrase_ids = [[encode(p) for p in phrases] for phrases in constraints]
    found = decode(
        model,
        tiny_translator.source_ids(texts),
        SearchConfig(beam=4, n_best=2),
        prefixes=prefix_ids,
        constraints=phrase_ids,
    )
    for answer, hyps, prefix, phrases in zip(
        answers["translations"], found, prefix_ids, phrase_ids, strict=True
    ):
        assert [c["text"] for c in answer["n_best"]] == [tiny_translator.text_of(h.tokens) for h in hyps]
        for candidate, hyp in zip(answer["n_best"], hyps, strict=True):
            assert candidate["log_prob"] == pytest.approx(hyp.log_prob, abs=SCORE_TOLERANCE)
            assert hyp.tokens[: len(prefix)] == prefix
            for phrase in phrases:
                n = len(phrase)
                assert any(hyp.tokens[i : i + n] == phrase for i in range(len(hyp.tokens) - n + 1))


def test_sampling_is_seeded_per_request(client: httpx.Client, tiny_translator: Translator) -> None:
    model = tiny_translator.model
    assert isinstance(model, Transformer)
    texts = ["我爱你", "他很高兴。", "你是学生吗？"]
    first = translate(client, texts=texts, method="sample", seed=7)["translations"]
    again = translate(client, texts=texts, method="sample", seed=7)["translations"]
    expected = decode(model, tiny_translator.source_ids(texts), SearchConfig(method="sample", seed=7))
    assert [a["text"] for a in first] == [a["text"] for a in again]
    assert [a["text"] for a in first] == [tiny_translator.text_of(h[0].tokens) for h in expected]


def test_int8_equals_the_int8_translator(client: httpx.Client, tiny_translator: Translator) -> None:
    from qkv.infer.products import int8_available

    if not int8_available():
        response = client.post("/v1/translate", json={"texts": ["我爱你"], "int8": True})
        assert response.status_code == 422 and response.json()["error"].startswith("int8:")
        return
    texts = ["我爱你", "他很高兴。"]
    expected = dataclasses.replace(tiny_translator, int8=True).translate(texts)
    assert [t["text"] for t in translate(client, texts=texts, int8=True)["translations"]] == expected


def metric(text: str, name: str) -> float:
    """One sample's value from the Prometheus text, 0 where the series has none yet."""
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_metrics_count_requests_texts_and_batches(client: httpx.Client) -> None:
    ok = 'qkv_requests_total{route="/v1/translate",status="200"}'
    bad = 'qkv_requests_total{route="/v1/translate",status="422"}'
    before = client.get("/metrics").text
    translate(client, texts=["我爱你", "他很高兴。", "你好"], method="greedy")
    assert client.post("/v1/translate", json={"texts": ["x"], "beam": 0}).status_code == 422
    response = client.get("/metrics")
    after = response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert metric(after, ok) == metric(before, ok) + 1
    assert metric(after, bad) == metric(before, bad) + 1
    assert metric(after, "qkv_texts_total") == metric(before, "qkv_texts_total") + 3
    assert metric(after, "qkv_batch_size_sum") >= metric(before, "qkv_batch_size_sum") + 3
    assert metric(after, "qkv_batch_size_count") > metric(before, "qkv_batch_size_count")
    assert metric(after, 'qkv_request_duration_seconds_count{route="/v1/translate"}') >= 2
    assert "qkv_queue_depth 0" in after
