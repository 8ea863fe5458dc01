"""Several models in one server: LibreTranslate's ``source``/``target`` and ``auto`` pick the model for
each text, /v1 picks it by name. In-process (the app with its lifespan, through Starlette's test client);
two names for the same tiny model directory, so that the reference for both is one Translator."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qkv.serve.app import create_app
from qkv.serve.models import load_model, parse_specs
from qkv.serve.state import Settings
from qkv.translator import Translator


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    specs = parse_specs([f"zh-en={tiny_model_dir}", f"reverse={tiny_model_dir}"], ["zh:en", "en:zh"])
    models = [load_model(spec, beam=4, int8=False) for spec in specs]
    with TestClient(create_app(models, Settings())) as test_client:
        yield test_client


def test_languages_and_models_list_both(client: Any) -> None:
    assert client.get("/languages").json() == [
        {"code": "zh", "name": "Chinese", "targets": ["en"]},
        {"code": "en", "name": "English", "targets": ["zh"]},
    ]
    names = [
        (m["name"], m["source"], m["target"], m["default"]) for m in client.get("/v1/models").json()["models"]
    ]
    assert names == [("zh-en", "zh", "en", True), ("reverse", "en", "zh", False)]


def test_source_and_auto_route_each_text(client: Any, tiny_translator: Translator) -> None:
    expected = tiny_translator.translate(["我爱你", "I love you"])
    answer = client.post("/translate", json={"q": "I love you", "source": "en", "target": "zh"}).json()
    assert answer == {"translatedText": expected[1]}
    answer = client.post("/translate", json={"q": ["我爱你"], "source": "auto", "target": "en"}).json()
    assert answer["translatedText"] == [expected[0]]
    assert answer["detectedLanguage"] == [{"confidence": 100.0, "language": "zh"}]
    refused = client.post("/translate", json={"q": "我爱你", "source": "zh", "target": "zh"})
    assert refused.status_code == 400
    assert refused.json() == {"error": "Chinese (zh) is not available as a target language from Chinese (zh)"}


def test_v1_picks_a_model_by_name(client: Any) -> None:
    answer = client.post("/v1/translate", json={"texts": ["I love you"], "model": "reverse"}).json()
    assert answer["model"] == "reverse"
    assert client.post("/v1/translate", json={"texts": ["x"]}).json()["model"] == "zh-en"
