"""The server's counters in the Prometheus text format (version 0.0.4), written by hand: no dependency.

Series: ``qkv_requests_total{route,status}``, ``qkv_request_duration_seconds{route}`` (histogram),
``qkv_batch_size`` (texts per decoding batch, histogram), ``qkv_batch_tokens`` (padded source tokens per
batch, histogram), ``qkv_queue_depth`` (texts waiting, gauge), ``qkv_texts_total`` (texts translated).
Routes are the app's route templates, so labels stay few whatever paths clients ask for.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Sequence

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    return "{" + ",".join(f'{k}="{_label(v)}"' for k, v in pairs) + "}" if pairs else ""


class Histogram:
    """Cumulative buckets, a sum and a count for each label set."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.series: dict[tuple[tuple[str, str], ...], list[float]] = {}

    def observe(self, value: float, labels: tuple[tuple[str, str], ...] = ()) -> None:
        counts = self.series.setdefault(labels, [0.0] * (len(self.buckets) + 2))
        counts[bisect.bisect_left(self.buckets, value)] += 1  # the first bucket with le >= value
        counts[-1] += value  # sum; counts[-2] is the +Inf bucket's own count

    def lines(self, name: str) -> list[str]:
        out: list[str] = []
        for labels, counts in sorted(self.series.items()):
            running = 0.0
            for bound, count in zip(self.buckets, counts, strict=False):
                running += count
                out.append(f"{name}_bucket{_labels([*labels, ('le', f'{bound:g}')])} {running:g}")
            total = running + counts[len(self.buckets)]
            out.append(f"{name}_bucket{_labels([*labels, ('le', '+Inf')])} {total:g}")
            out.append(f"{name}_sum{_labels(labels)} {counts[-1]:.6g}")
            out.append(f"{name}_count{_labels(labels)} {total:g}")
        return out


class Metrics:
    """What /metrics reports; safe to update from the event loop and the inference thread."""

    def __init__(self, queue_depth: Callable[[], int]) -> None:
        self._lock = threading.Lock()
        self._queue_depth = queue_depth
        self.requests: dict[tuple[str, int], int] = {}
        self.latency = Histogram(LATENCY_BUCKETS)
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.batch_tokens = Histogram(TOKEN_BUCKETS)
        self.texts = 0

    def request(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[route, status] = self.requests.get((route, status), 0) + 1
            self.latency.observe(seconds, (("route", route),))

    def batch(self, size: int, tokens: int) -> None:
        with self._lock:
            self.batch_size.observe(size)
            self.batch_tokens.observe(tokens)
            self.texts += size

    def render(self) -> str:
        with self._lock:
            lines = [
                "# HELP qkv_requests_total HTTP requests answered, by route template and status code.",
                "# TYPE qkv_requests_total counter",
            ]
            for (route, status), count in sorted(self.requests.items()):
                lines.append(
                    f"qkv_requests_total{_labels([('route', route), ('status', str(status))])} {count}"
                )
            lines += [
                "# HELP qkv_request_duration_seconds Time from a request's arrival to its response.",
                "# TYPE qkv_request_duration_seconds histogram",
                *self.latency.lines("qkv_request_duration_seconds"),
                "# HELP qkv_batch_size Texts per decoding batch.",
                "# TYPE qkv_batch_size histogram",
                *self.batch_size.lines("qkv_batch_size"),
                "# HELP qkv_batch_tokens Padded source tokens per decoding batch (texts x longest).",
                "# TYPE qkv_batch_tokens histogram",
                *self.batch_tokens.lines("qkv_batch_tokens"),
                "# HELP qkv_texts_total Texts translated.",
                "# TYPE qkv_texts_total counter",
                f"qkv_texts_total {self.texts}",
                "# HELP qkv_queue_depth Texts waiting for the inference worker.",
                "# TYPE qkv_queue_depth gauge",
                f"qkv_queue_depth {self._queue_depth()}",
            ]
        return "\n".join(lines) + "\n"
