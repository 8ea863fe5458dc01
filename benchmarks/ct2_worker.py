"""CTranslate2 in a process of its own, frozen between its turns, so that it can take turns with the torch
systems of the decoding and BERT sections.

Why a process. This project's VM drifts by 20-30% within minutes, so the suite's systems take turns
(:func:`benchmarks.common.interleaved_best_times`) and a slow minute lands on all of them. CTranslate2 used
to run after the torch systems instead: once one of its translators had run on two threads, torch work in
the same process ran slower for as long as the process lived (2.6x on an Intel Xeon, 2026-11-23),
because its OpenMP threads stay behind and keep a core busy. On an AMD EPYC (2026-12-02), a torch matmul loop
timed right after each in-process translation (batch 32, 2 threads) ran 1.13-1.16x slower than alone, and
right after each call of this worker 0.99-1.08x (two runs, best of 10). It held CTranslate2 back as well: a
single sentence greedy on 2 threads, 441 tok/s in the suite's process against 877 in this worker (491 on 1
thread either way; taking turns in one run). The worker is stopped (``SIGSTOP``) as soon as a call returns,
and the call returns only once the kernel reports it stopped; it is continued (``SIGCONT``) just before the
next call, so its threads cannot run while a torch system is timed.

:class:`Worker` is the torch side: ``worker.call("method", *args)`` runs a method of the job the worker was
started with and returns its result (JSON). The jobs, :class:`TranslatorJob` and :class:`EncoderJob`, run in
the worker and import only CTranslate2 and NumPy. Where there is no ``SIGSTOP`` (Windows) the worker runs
unfrozen. ``python -m benchmarks.ct2_worker JOB KWARGS_JSON`` is the worker's entry point.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import traceback
import weakref
from pathlib import Path
from typing import Any

_PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the folder that holds ``benchmarks/``


class WorkerError(RuntimeError):
    """The worker failed: its traceback is the message."""


class Worker:
    """A job (``TranslatorJob`` or ``EncoderJob``, built from ``kwargs``) in its own process, stopped
    whenever it is not running one of this object's calls."""

    def __init__(self, job: str, **kwargs: Any) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.ct2_worker", job, json.dumps(kwargs)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=_PACKAGE_ROOT,
            text=True,
        )
        self._stopped = False
        # A worker left stopped would outlive the suite: end it when this object goes, at the latest at exit.
        self._finalizer = weakref.finalize(self, _end, self._proc)
        self._reply()  # the job is built (or its error raised) before the first call

    def call(self, method: str, *args: Any) -> Any:
        """Run ``job.method(*args)`` in the worker and return its result; the worker is frozen again
        before this returns."""
        stdin = self._proc.stdin
        assert stdin is not None
        self._continue()
        stdin.write(json.dumps({"method": method, "args": list(args)}) + "\n")
        stdin.flush()
        return self._reply()

    def close(self) -> None:
        """End the worker (idempotent)."""
        self._finalizer()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _reply(self) -> Any:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        self._stop()
        if not line:
            self._proc.wait()
            raise WorkerError(f"the CTranslate2 worker exited with status {self._proc.returncode}")
        message = json.loads(line)
        if "error" in message:
            raise WorkerError(message["error"])
        return message["result"]

    def _stop(self) -> None:
        """Freeze the worker and return once it is frozen.

        ``kill`` only makes ``SIGSTOP`` pending: the worker stops when the kernel next runs it, which on a
        busy machine can be after the caller has started timing a torch system. The worker is this
        process's child, so ``waitid`` with ``WSTOPPED`` blocks until the kernel reports it stopped (every
        thread of it), or exited. ``WNOWAIT`` leaves that report in place: an exited worker is still reaped
        by ``Popen``, and a stopped one's report is cleared by the ``SIGCONT`` of the next call.
        """
        if not hasattr(signal, "SIGSTOP") or self._proc.poll() is not None:
            return
        os.kill(self._proc.pid, signal.SIGSTOP)
        if hasattr(os, "waitid"):
            found = os.waitid(os.P_PID, self._proc.pid, os.WSTOPPED | os.WEXITED | os.WNOWAIT)
            self._stopped = found is not None and found.si_code == os.CLD_STOPPED
        else:  # a Python without os.waitid: the stop takes effect a moment later
            self._stopped = True

    def _continue(self) -> None:
        if self._stopped:
            os.kill(self._proc.pid, signal.SIGCONT)
            self._stopped = False


def _end(proc: subprocess.Popen[str]) -> None:
    """Let the worker go on, close its input (it then returns) and wait for it; kill it if it hangs."""
    if proc.poll() is not None:
        return
    if hasattr(signal, "SIGCONT"):
        os.kill(proc.pid, signal.SIGCONT)
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- the jobs (run in the worker) -------------------------------------------------------------------------
class TranslatorJob:
    """``ctranslate2.Translator`` on one model, one instance per thread count (its threads are fixed when
    it is built), translating named batches of source tokens with exactly ``steps`` decoder steps."""

    def __init__(
        self, model_dir: str, options: dict[str, str], threads: list[int], batches: dict[str, list[list[str]]]
    ) -> None:
        import ctranslate2

        self.translators = {
            n: ctranslate2.Translator(model_dir, **options, intra_threads=n, inter_threads=1) for n in threads
        }
        self.batches = batches

    def translate(self, batch: str, threads: int, beam: int, steps: int) -> list[list[str]]:
        """The best hypothesis of each sentence of ``batch``, as every timed system returns its tokens."""
        results = self.translators[threads].translate_batch(
            self.batches[batch],
            beam_size=beam,
            min_decoding_length=steps,
            max_decoding_length=steps,
            suppress_sequences=[["<pad>"], ["<s>"]],
            max_batch_size=0,
        )
        found = [r.hypotheses[0] for r in results]
        if any(len(tokens) != steps for tokens in found):
            raise RuntimeError(f"CTranslate2: expected {steps} tokens, got {sorted({len(t) for t in found})}")
        return found


class EncoderJob:
    """``ctranslate2.Encoder`` on one converted BERT, one instance per thread count, on one batch of ids."""

    def __init__(
        self, model_dir: str, options: dict[str, str], threads: list[int], ids: list[list[int]]
    ) -> None:
        import ctranslate2

        self.ctranslate2 = ctranslate2
        self.encoders = {n: ctranslate2.Encoder(model_dir, **options, intra_threads=n) for n in threads}
        self.ids = ids
        self.device_is_cuda = options.get("device") == "cuda"

    def forward(self, threads: int) -> None:
        self.encoders[threads].forward_batch(self.ids)

    def save_hidden(self, threads: int, path: str) -> None:
        """The last hidden states, float32, written to ``path`` with ``numpy.save`` (6 MB for MiniLM's
        32 x 128 batch: a file, not the pipe)."""
        import numpy as np

        states = self.encoders[threads].forward_batch(self.ids).last_hidden_state
        if self.device_is_cuda:
            states = states.to_device(self.ctranslate2.Device.cpu)
        np.save(path, np.asarray(states, dtype=np.float32))


JOBS = {"translator": TranslatorJob, "encoder": EncoderJob}


def main(argv: list[str]) -> int:
    """The worker: build the job, say so, then answer one JSON request a line until stdin closes."""
    job_name, kwargs = argv[0], json.loads(argv[1])
    try:
        job = JOBS[job_name](**kwargs)
        reply: dict[str, Any] = {"result": None}
    except Exception:  # noqa: BLE001 - reported to the torch side, which raises it
        print(json.dumps({"error": traceback.format_exc()}), flush=True)
        return 1
    print(json.dumps(reply), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = {"result": getattr(job, request["method"])(*request["args"])}
        except Exception:  # noqa: BLE001
            reply = {"error": traceback.format_exc()}
        print(json.dumps(reply), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
