"""Every limit of ``qkv serve`` through the real server: its status code and a JSON error that names what
was wrong, never a traceback (in a response or on the server's stderr).

The server here holds every batch for 10 s (``--max-wait-ms``) and gives each request 3 s
(``--timeout``): a translation is still waiting when its deadline passes (504) and the queue stays full
while a request's texts wait in it (503). No translation succeeds on it, so a right API key is shown by
the check that comes after the key's (a beam over the limit: 422 instead of 401/403).
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from libretranslatepy import LibreTranslateAPI

from tests.serve.conftest import Server

KEY = "limits-key"  # from --api-keys FILE
OTHER_KEY = "other-key"  # from --api-key
AUTH = {"Authorization": f"Bearer {KEY}"}
QUEUE_POLL_S = 30  # how long the queue may take to show a request's texts (a busy machine is slow)


@pytest.fixture(scope="module")
def server(tiny_model_dir: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"# the clients' keys\n{KEY}\n\n", encoding="utf-8")
    running = Server(
        [
            "--model",
            f"zh-en={tiny_model_dir}",
            "--api-keys",
            str(keys),
            "--api-key",
            OTHER_KEY,
            "--max-texts",
            "4",
            "--max-chars",
            "50",
            "--max-body-bytes",
            "4000",
            "--max-beam",
            "6",
            "--queue-size",
            "5",
            "--max-wait-ms",
            "10000",
            "--timeout",
            "3",
        ]
    )
    yield running
    assert running.stop() == 0, running.stderr  # texts abandoned in the queue do not hold up the drain
    assert "Traceback" not in running.stderr, running.stderr


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def error(response: httpx.Response, status: int) -> str:
    """The response's error message, after checking its status and shape."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"] and "Traceback" not in body["error"]
    message: str = body["error"]
    return message


def test_a_body_over_the_limit_is_413(client: httpx.Client) -> None:
    big = {"texts": ["我爱你"], "padding": "x" * 5000}
    assert "4000 bytes" in error(client.post("/v1/translate", json=big, headers=AUTH), 413)

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"texts": ["'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"]}'

    response = client.post(
        "/v1/translate", content=chunks(), headers={**AUTH, "Content-Type": "application/json"}
    )
    assert "4000 bytes" in error(response, 413)
    lt = client.post("/translate", data={"q": "x" * 5000, "source": "zh", "target": "en", "api_key": KEY})
    assert "4000 bytes" in error(lt, 413)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"texts": ["a"] * 5}, r"^texts: 5 texts, more than this server's limit of 4 per request"),
        ({"texts": ["a", "我" * 51]}, r"^texts\[1\]: 51 characters, more than this server's limit of 50"),
        ({"texts": ["a"], "beam": 7}, r"^beam: 7 is more than this server's limit of 6"),
        ({"texts": ["a"], "model": "../etc"}, r"^model: no model named '../etc'; this server has zh-en"),
        ({"texts": ["a"], "beam": 0}, r"^beam: Input should be greater than or equal to 1"),
        ({"texts": ["a"], "method": "fast"}, r"^method: Input should be 'beam', 'greedy' or 'sample'"),
        ({"texts": ["a"], "n_best": 3, "beam": 2}, r"^n_best: 3 is more than beam=2"),
        ({"texts": ["a"], "n_best": 2, "method": "greedy"}, r"^n_best: 2 needs method beam"),
        ({"texts": ["a"], "attention": "all"}, r"^attention: Input should be 'none', 'mean' or 'heads'"),
        ({"texts": ["a"], "prefixes": ["x", "y"]}, r"^prefixes: 2 entries for 1 texts"),
        ({"texts": ["a"], "constraints": [[" "]]}, r"^constraints\[0\]: the phrase ' ' is empty"),
        ({"texts": ["a"], "method": "sample", "constraints": [["x"]]}, r"^constraints: need method beam"),
        (
            {"texts": ["a", "b"], "constraints": [[], ["xж"]]},
            r"^constraints\[1\]: the model's vocabulary cannot write 'ж' \(in 'xж'\)",
        ),
        ({"texts": ["a"], "prefixes": ["ж"]}, r"^prefixes\[0\]: the model's vocabulary cannot write 'ж'"),
        (  # the model's 64 positions leave 63 output tokens
            {"texts": ["a", "b"], "constraints": [[], [" ".join(["love"] * 70)]]},
            r"^texts\[1\]: its prefix and constraints need \d+ tokens, more than the 63 the model can write",
        ),
        ({"texts": []}, r"^texts: List should have at least 1 item"),
        ({"texts": "a"}, r"^texts: Input should be a valid list"),
        ({"texts": ["a"], "path": "/etc/passwd"}, r"^path: unknown field"),
        ({"texts": ["a"], "max_length": 0}, r"^max_length: Input should be greater than or equal to 1"),
    ],
)
def test_a_bad_field_is_422_naming_it(client: httpx.Client, body: dict[str, Any], message: str) -> None:
    assert re.search(message, error(client.post("/v1/translate", json=body, headers=AUTH), 422))


def test_malformed_json_unknown_routes_and_methods(client: httpx.Client) -> None:
    bad = client.post(
        "/v1/translate", content=b"{not json", headers={**AUTH, "Content-Type": "application/json"}
    )
    assert "not valid JSON" in error(bad, 400)
    assert "no route /v2/translate" in error(client.post("/v2/translate", json={}), 404)
    assert "GET is not allowed on /v1/translate" in error(client.get("/v1/translate"), 405)


def test_api_keys_401_403_and_each_place_a_key_goes(client: httpx.Client) -> None:
    over = {"texts": ["a"], "beam": 7}  # passes the key check, then fails the beam's: 422
    missing = client.post("/v1/translate", json=over)
    assert "needs one" in error(missing, 401)
    assert missing.headers["www-authenticate"] == "Bearer"
    assert error(client.post("/v1/translate", json=over, headers={"Authorization": "Bearer no"}), 403) == (
        "Invalid API key"
    )
    for headers, body in (
        (AUTH, over),
        ({"X-API-Key": KEY}, over),
        ({}, {**over, "api_key": KEY}),
        ({"Authorization": f"Bearer {OTHER_KEY}"}, over),
    ):
        error(client.post("/v1/translate", json=body, headers=headers), 422)
    for key in (None, "wrong"):  # LibreTranslate's client, unchanged, sees LibreTranslate's 403
        with pytest.raises(urllib.error.HTTPError) as raised:
            LibreTranslateAPI(str(client.base_url), api_key=key).translate("我爱你", "zh", "en")
        assert raised.value.code == 403
        assert json.loads(raised.value.read())["error"].startswith("Invalid API key")


def queue_depth(client: httpx.Client) -> int:
    found = re.search(r"^qkv_queue_depth (\d+)$", client.get("/metrics").text, re.MULTILINE)
    assert found is not None
    return int(found.group(1))


def test_a_full_queue_is_503_with_retry_after_and_a_late_answer_504(
    server: Server, client: httpx.Client
) -> None:
    answers: dict[str, httpx.Response] = {}

    def ask(name: str, path: str, **request: Any) -> threading.Thread:
        def run() -> None:
            with httpx.Client(base_url=server.url, timeout=60) as own:
                answers[name] = own.post(path, **request)

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    def wait_for_depth(depth: int) -> None:
        deadline = time.monotonic() + QUEUE_POLL_S
        while queue_depth(client) < depth and time.monotonic() < deadline:
            time.sleep(0.01)

    # Four texts and one: the queue's whole room (5), held there by the batch wait.
    threads = [ask("v1", "/v1/translate", json={"texts": ["我爱你"] * 4}, headers=AUTH)]
    wait_for_depth(4)
    lt = {"q": "我爱你", "source": "zh", "target": "en", "api_key": KEY}
    threads.append(ask("libretranslate", "/translate", data=lt))
    wait_for_depth(5)
    full = client.post("/v1/translate", json={"texts": ["你好"]}, headers=AUTH)
    for thread in threads:
        thread.join()
    assert "the queue is full (5 of 5 texts waiting)" in error(full, 503)
    assert full.headers["retry-after"] == "1"
    assert "did not finish within this server's 3 s limit" in error(answers["v1"], 504)
    assert "did not finish within this server's 3 s limit" in error(answers["libretranslate"], 504)
    assert client.get("/readyz").status_code == 200  # a deadline passed; the server is fine
