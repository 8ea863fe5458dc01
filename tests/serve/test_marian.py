"""``qkv serve`` on a Hugging Face Marian (OPUS-MT) directory, as ``qkv translate --model`` reads one: a
tiny ``MarianMTModel`` built and briefly trained here (tests/convert/marian_dirs.py), served in-process
(the app with its lifespan, through Starlette's test client). The reference is Hugging Face's own
``generate()`` on the same model: greedy tokens equal."""

from __future__ import annotations

import pytest
import torch

from qkv.serve.app import create_app
from qkv.serve.models import load_model, parse_specs
from qkv.serve.state import Settings
from tests.convert.marian_dirs import MarianDir, corpus, make_marian_dir

TEXTS = 12
MAX_LENGTH = 22  # output tokens before </s>, for both


@pytest.fixture(scope="module")
def marian(tmp_path_factory: pytest.TempPathFactory) -> MarianDir:
    # Named as OPUS-MT names its releases: the languages come from the name.
    return make_marian_dir(tmp_path_factory.mktemp("marian") / "opus-mt-zh-en", separate=True, train_steps=30)


def hf_greedy(marian: MarianDir, texts: list[str]) -> list[list[str]]:
    """Hugging Face's greedy output tokens of each text, without the start token and </s>."""
    batch = marian.hf_tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        generated = marian.hf_model.generate(**batch, num_beams=1, do_sample=False, max_length=MAX_LENGTH + 2)
    found = []
    for row in generated.tolist():
        ids = row[1:]
        ids = ids[: ids.index(marian.eos_id)] if marian.eos_id in ids else ids
        found.append(marian.hf_tokenizer.convert_ids_to_tokens([i for i in ids if i != marian.pad_id]))
    return found


def test_a_marian_directory_is_served_with_hugging_faces_tokens(marian: MarianDir) -> None:
    from fastapi.testclient import TestClient

    (spec,) = parse_specs([str(marian.path)], [])
    assert (spec.name, spec.source, spec.target) == ("zh-en", "zh", "en")
    served = load_model(spec, beam=4, int8=False)
    zh, _ = corpus(400)
    texts = [line for line in zh[200:260] if line.strip()][:TEXTS]
    expected = hf_greedy(marian, texts)
    with TestClient(create_app([served], Settings())) as client:
        body = {"texts": texts, "method": "greedy", "tokens": True, "max_length": MAX_LENGTH}
        response = client.post("/v1/translate", json=body)
        assert response.status_code == 200, response.text
        answers = response.json()["translations"]
        languages = client.get("/languages").json()
    assert languages[0] == {"code": "zh", "name": "Chinese", "targets": ["en"]}
    # Where Hugging Face's output ended by itself before either side's length limit (qkv's is also
    # 1.2 x the source + 10), the two are the same greedy search on the same model.
    compared = 0
    for answer, tokens in zip(answers, expected, strict=True):
        assert answer["target_tokens"][-1] == "</s>"
        if len(tokens) < 10:
            assert answer["target_tokens"][:-1] == tokens
            compared += 1
    assert compared >= TEXTS // 2
