"""SIGTERM while requests are in flight: every accepted request is answered 200 with its translation,
then ``qkv serve`` exits 0 (uvicorn stops accepting, finishes its requests, the app drains its queue)."""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

import httpx

from qkv.translator import Translator
from tests.serve.conftest import Server

TEXTS = ["我爱你", "他很高兴。", "你是学生吗？", "我们不喜欢这本书", "她有三只猫", "你好", "谢谢", "他们来了"]
QUEUE_POLL_S = 30


def test_sigterm_finishes_every_request_in_flight_and_exits_0(
    tiny_model_dir: Path, tiny_translator: Translator
) -> None:
    # Each batch waits up to 1 s for more texts: the requests are still queued when SIGTERM comes.
    server = Server(["--model", f"zh-en={tiny_model_dir}", "--max-wait-ms", "1000"])
    answers: dict[int, httpx.Response] = {}

    def ask(index: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            answers[index] = client.post("/v1/translate", json={"texts": [TEXTS[index]]})

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(TEXTS))]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + QUEUE_POLL_S
    queued = 0
    with httpx.Client(base_url=server.url, timeout=60) as client:
        while queued < len(TEXTS) and time.monotonic() < deadline:
            depth = re.search(r"^qkv_queue_depth (\d+)$", client.get("/metrics").text, re.MULTILINE)
            queued = int(depth.group(1)) if depth is not None else 0
    assert queued == len(TEXTS), "the requests were not all queued: nothing was in flight to drain"
    server.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(120)
    code = server.process.wait(120)
    assert sorted(answers) == list(range(len(TEXTS)))
    assert [answers[i].status_code for i in range(len(TEXTS))] == [200] * len(TEXTS)
    expected = tiny_translator.translate(TEXTS)
    assert [answers[i].json()["translations"][0]["text"] for i in range(len(TEXTS))] == expected
    assert code == 0, server.stderr
    assert "Traceback" not in server.stderr
