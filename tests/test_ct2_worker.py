"""The benchmark's CTranslate2 worker process: the same translations as CTranslate2 in this process, frozen
between calls, errors raised here with the worker's traceback, and nothing left behind."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks.ct2_worker import Worker, WorkerError
from qkv.config import preset
from qkv.export.ctranslate2 import save_spec, transformer_spec
from qkv.models.seq2seq import Transformer

ctranslate2 = pytest.importorskip("ctranslate2", reason="pip install 'ctranslate2>=4.0'")

VOCAB = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(4, 64)]
OPTIONS = {"device": "cpu", "compute_type": "float32"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = Transformer(preset("tiny", len(VOCAB), dropout=0.0)).eval()
    out = tmp_path_factory.mktemp("ct2")
    save_spec(transformer_spec(model, VOCAB, VOCAB), out)
    return out


def _state(pid: int) -> str:
    """The process state letter from /proc (R running, S sleeping, T stopped)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def _state_within(pid: int, want: str, seconds: float = 5.0) -> str:
    """The state letter once it is ``want``, or the last one read when ``seconds`` have passed.

    A signal takes effect when the kernel next runs its target: on a busy machine /proc can still say R
    for a while after ``SIGSTOP`` was sent (it read R once under load), so one read is a race."""
    deadline = time.monotonic() + seconds
    state = _state(pid)
    while state != want and time.monotonic() < deadline:
        time.sleep(0.005)
        state = _state(pid)
    return state


def test_worker_translates_as_ctranslate2_does_here_and_is_stopped_between_calls(model_dir: Path) -> None:
    batch = [[f"w{i}" for i in range(5, 5 + n)] for n in (3, 7, 5)]
    with Worker(
        "translator", model_dir=str(model_dir), options=OPTIONS, threads=[1], batches={"b": batch}
    ) as w:
        found = w.call("translate", "b", 1, 2, 6)
        if hasattr(os, "waitid"):  # the call returned only once the kernel had the worker stopped
            report = os.waitid(os.P_PID, w._proc.pid, os.WSTOPPED | os.WNOHANG | os.WNOWAIT)
            assert report is not None and report.si_code == os.CLD_STOPPED
        if sys.platform.startswith("linux"):
            assert _state_within(w._proc.pid, "T") == "T"  # frozen until the next call
        assert w.call("translate", "b", 1, 2, 6) == found  # continued, it answers again
        pid = w._proc.pid
    translator = ctranslate2.Translator(str(model_dir), **OPTIONS, intra_threads=1)
    expected = translator.translate_batch(
        batch,
        beam_size=2,
        min_decoding_length=6,
        max_decoding_length=6,
        suppress_sequences=[["<pad>"], ["<s>"]],
    )
    assert found == [r.hypotheses[0] for r in expected]
    assert all(len(tokens) == 6 for tokens in found)
    assert w._proc.poll() == 0 and not Path(f"/proc/{pid}").exists()  # ended and reaped by close


def test_a_failing_call_raises_here_with_the_workers_traceback_and_the_worker_goes_on(
    model_dir: Path,
) -> None:
    with Worker(
        "translator", model_dir=str(model_dir), options=OPTIONS, threads=[1], batches={"b": [["w5"]]}
    ) as w:
        with pytest.raises(WorkerError, match="KeyError: 'missing'"):
            w.call("translate", "missing", 1, 1, 3)
        assert len(w.call("translate", "b", 1, 1, 3)[0]) == 3


def test_a_job_that_cannot_be_built_raises_at_once(tmp_path: Path) -> None:
    with pytest.raises(WorkerError, match="RuntimeError"):
        Worker("translator", model_dir=str(tmp_path / "none"), options=OPTIONS, threads=[1], batches={})
