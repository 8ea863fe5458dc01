"""On a CUDA GPU, qkv computes what it computes on the CPU (the CPU is the reference), and the benchmark
suite runs there and names the device. Skipped where torch sees no CUDA device (CI's machine); a session
lent a GPU runs ``python -m pytest tests/test_cuda.py`` there.

float32 on the GPU with TF32 off, so the GPU's products are plain float32 too: the same numbers up to
rounding, compared with a tolerance; decoded tokens compared exactly (tiny random models with no near ties
at these seeds on the CPU's side; a flip would show as one differing sentence, worth a look either way).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from qkv.config import BertConfig, NATConfig, preset
from qkv.decode import SearchConfig, decode
from qkv.decode.nat import mask_predict
from qkv.models.bert import BertModel
from qkv.models.nat import NATransformer
from qkv.models.seq2seq import Transformer
from qkv.train.loss import label_smoothed_loss

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device")

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _no_tf32() -> Iterator[None]:
    """Plain float32 products on the GPU while a test runs (TF32 rounds inputs to 10 mantissa bits)."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _sources(vocab: int, generator: torch.Generator) -> list[list[int]]:
    lengths = [7, 3, 11, 5]
    return [torch.randint(4, vocab, (n,), generator=generator).tolist() + [2] for n in lengths]


def test_greedy_and_beam_decoding_on_the_gpu_equal_the_cpus(rng: torch.Generator) -> None:
    model = Transformer(preset("tiny", 64, dropout=0.0)).eval()
    sources = _sources(64, rng)
    for search in (SearchConfig(method="greedy", beam=1), SearchConfig(method="beam", beam=4)):
        method = search.method
        on_cpu = decode(model, sources, search, batch_size=4)
        on_gpu = decode(model.to(CUDA), sources, search, batch_size=4)
        model.to("cpu")
        assert [h[0].tokens for h in on_gpu] == [h[0].tokens for h in on_cpu], method
        for gpu, cpu in zip(on_gpu, on_cpu, strict=True):
            assert gpu[0].score == pytest.approx(cpu[0].score, abs=1e-4)


def test_a_training_step_on_the_gpu_equals_the_cpus(rng: torch.Generator) -> None:
    """Loss and every gradient of one forward/backward pass (dropout 0), float32 on both."""
    model = Transformer(preset("tiny", 64, dropout=0.0)).train()
    src = torch.randint(4, 64, (3, 9), generator=rng)
    tgt = torch.randint(4, 64, (3, 8), generator=rng)
    results = []
    for device in ("cpu", CUDA):
        model.to(device).zero_grad()
        logits = model(src.to(device), tgt[:, :-1].to(device))
        loss, _ = label_smoothed_loss(logits, tgt[:, 1:].to(device), smoothing=0.1, pad_id=0)
        loss.backward()
        results.append((loss.item(), {n: p.grad.detach().cpu() for n, p in model.named_parameters()}))
    (cpu_loss, cpu_grads), (gpu_loss, gpu_grads) = results
    assert gpu_loss == pytest.approx(cpu_loss, rel=1e-5)
    for name, grad in cpu_grads.items():
        torch.testing.assert_close(gpu_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_bert_on_the_gpu_equals_the_cpu_and_runs_under_bf16_autocast(rng: torch.Generator) -> None:
    config = BertConfig(
        vocab_size=99, d_model=32, heads=4, d_ff=37, layers=2, max_positions=40, type_vocab_size=3,
        dropout=0.0, attention_dropout=0.0,
    )  # fmt: skip
    model = BertModel(config).eval()
    ids = torch.randint(1, 99, (2, 12), generator=rng)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    with torch.inference_mode():
        on_cpu = model(ids, mask).hidden
        model.to(CUDA)
        on_gpu = model(ids.to(CUDA), mask.to(CUDA)).hidden
        with torch.autocast("cuda", dtype=torch.bfloat16):
            in_bf16 = model(ids.to(CUDA), mask.to(CUDA)).hidden
    real = mask.bool()
    torch.testing.assert_close(on_gpu.cpu()[real], on_cpu[real], atol=1e-4, rtol=1e-4)
    assert torch.isfinite(in_bf16).all()
    # bf16 keeps ~3 significant digits: near the float32 result, not equal to it.
    assert (in_bf16.float().cpu()[real] - on_cpu[real]).abs().max() < 0.1


def test_mask_predict_on_the_gpu_equals_the_cpus(rng: torch.Generator) -> None:
    base = preset("tiny", 40, dropout=0.0).to_dict()
    model = NATransformer(NATConfig.from_dict(base)).eval()  # type: ignore[arg-type]
    src = torch.randint(4, 40, (3, 6), generator=rng)
    with torch.inference_mode():
        on_cpu = mask_predict(model, src, iterations=3, length_beam=2)
        on_gpu = mask_predict(model.to(CUDA), src.to(CUDA), iterations=3, length_beam=2)
    assert [[h.tokens for h in hyps] for hyps in on_gpu] == [[h.tokens for h in hyps] for hyps in on_cpu]


def test_the_benchmark_suite_runs_on_the_gpu_and_names_it(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--device", "auto", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["machine"]["device"] == "cuda"
    assert result["machine"]["device_name"] == torch.cuda.get_device_name(0)
    assert result["machine"]["precision"] == "bf16 autocast"
    assert "bf16" in result["peak_flops"]
    assert {"train", "decode", "bert"} <= set(result["sections"])
