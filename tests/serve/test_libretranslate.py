"""LibreTranslate's API through the real server, with LibreTranslate's own Python client
(``libretranslatepy``, unchanged) and with the JSON and form requests other clients send. The
reference for the translations is :class:`qkv.translator.Translator` with the server's beam (4).
API keys, LibreTranslate's 403 included, are tested on the keyed server of test_limits.py."""

from __future__ import annotations

import dataclasses

import httpx
import pytest
from libretranslatepy import LibreTranslateAPI

from qkv.decode import SearchConfig
from qkv.translator import Translator
from tests.serve.conftest import Server


def test_the_libretranslate_client_translates(server: Server, tiny_translator: Translator) -> None:
    client = LibreTranslateAPI(server.url)
    for text in ("我爱你", "他很高兴。", "你是学生吗？"):
        assert client.translate(text, "zh", "en") == tiny_translator.translate([text])[0]
    assert client.languages() == [
        {"code": "zh", "name": "Chinese", "targets": ["en"]},
        {"code": "en", "name": "English", "targets": []},
    ]
    assert client.detect("我爱你")[0]["language"] == "zh"


def test_json_lists_forms_alternatives_and_auto(server: Server, tiny_translator: Translator) -> None:
    texts = ["我爱你", "你好吗"]
    expected = tiny_translator.translate(texts)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        answer = client.post("/translate", json={"q": texts, "source": "zh", "target": "en"})
        assert answer.status_code == 200 and answer.json() == {"translatedText": expected}
        form = client.post(
            "/translate", data={"q": texts[0], "source": "zh", "target": "en", "format": "text"}
        )
        assert form.json() == {"translatedText": expected[0]}
        with_alternatives = client.post(
            "/translate",
            json={"q": texts[0], "source": "auto", "target": "en", "alternatives": 2},
        ).json()
        assert with_alternatives["translatedText"] == expected[0]
        beam = dataclasses.replace(tiny_translator, search=SearchConfig(beam=4, n_best=3))
        candidates = [c.text for c in beam.translations([texts[0]])[0].candidates]
        assert with_alternatives["alternatives"] == candidates[1:]
        assert with_alternatives["detectedLanguage"]["language"] == "zh"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"source": "zh", "target": "en"}, "Invalid request: missing q parameter"),
        ({"q": "我爱你", "target": "en"}, "Invalid request: missing source parameter"),
        ({"q": "我爱你", "source": "fr", "target": "en"}, "fr is not supported"),
        ({"q": "我爱你", "source": "zh", "target": "de"}, "de is not supported"),
        ({"q": "我爱你", "source": "zh", "target": "en", "format": "html"}, "html format is not supported"),
        (
            {"q": "我" * 201, "source": "zh", "target": "en"},
            "q: 201 characters, more than this server's limit of 200",
        ),
        ({"q": [1], "source": "zh", "target": "en"}, "Invalid request: q must be a string or a list"),
    ],
)
def test_bad_requests_are_400_with_libretranslates_error_shape(
    server: Server, body: dict[str, object], error: str
) -> None:
    response = httpx.post(server.url + "/translate", json=body, timeout=60)
    assert response.status_code == 400
    assert response.json()["error"].startswith(error)
    assert list(response.json()) == ["error"]


def test_a_form_with_raw_utf8_is_read_as_curl_meant_it(server: Server, tiny_translator: Translator) -> None:
    """``curl -d q=我爱你`` sends the characters' UTF-8 bytes unescaped; LibreTranslate reads them as
    text, and so must qkv (percent-escaped or not), while bytes that are not UTF-8 are a 400."""
    expected = tiny_translator.translate(["我爱你"])[0]
    headers = {"content-type": "application/x-www-form-urlencoded"}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for body in (
            "q=我爱你&source=zh&target=en".encode(),
            b"q=%E6%88%91%E7%88%B1%E4%BD%A0&source=zh&target=en",
        ):
            answer = client.post("/translate", content=body, headers=headers)
            assert answer.status_code == 200 and answer.json() == {"translatedText": expected}
        for bad in (b"q=\xff\xfe&source=zh&target=en", b"q=%FF&source=zh&target=en"):
            answer = client.post("/translate", content=bad, headers=headers)
            assert answer.status_code == 400
            assert answer.json() == {"error": "Invalid request: the form body is not UTF-8"}
