"""What the routes share: the :class:`Settings` (limits and batching) and the :class:`State` (models,
batcher, counters), and the path every translation takes: checked, queued, awaited within its deadline."""

from __future__ import annotations

import asyncio
import hmac
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from qkv.serve.batcher import Batcher, Item, QueueFull, Stopped
from qkv.serve.errors import ApiError, log
from qkv.serve.inference import Job, Options, Result
from qkv.serve.metrics import Metrics
from qkv.serve.models import ServedModel

STATIC_DIR = Path(__file__).parent / "static"


@dataclass(frozen=True)
class Settings:
    """The server's limits and batching (each a ``qkv serve`` flag; docs/serving.md lists them)."""

    max_body_bytes: int = 1 << 20
    max_texts: int = 128
    max_chars: int = 5000
    max_beam: int = 16
    request_timeout_s: float = 60.0
    queue_size: int = 1024
    max_batch: int = 64
    max_tokens: int = 4096
    max_wait_ms: float = 5.0
    retry_after_s: int = 1
    api_keys: frozenset[str] = frozenset()
    default_beam: int = 4
    static_dir: Path = STATIC_DIR


@dataclass
class State:
    """What the routes share: the models (the first is the default), the batcher and the counters."""

    models: dict[str, ServedModel]
    settings: Settings
    batcher: Batcher
    metrics: Metrics
    shutting_down: Callable[[], bool] = lambda: False
    int8_available: bool = False
    _groups: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def default_model(self) -> ServedModel:
        return next(iter(self.models.values()))

    def model(self, name: str | None, field_name: str = "model") -> ServedModel:
        """The model named ``name`` (the default for None); 422 naming the field for an unknown name."""
        if name is None:
            return self.default_model
        found = self.models.get(name)
        if found is None:
            raise ApiError(
                422, f"{field_name}: no model named {name!r}; this server has {', '.join(self.models)}"
            )
        return found

    def check_api_key(self, key: str | None, *, missing_status: int = 401) -> None:
        """Nothing when the server needs no key or ``key`` is one of its keys (compared in constant
        time); else ``missing_status`` for no key (401 on /v1; LibreTranslate answers 403) and 403 for a
        wrong one."""
        keys = self.settings.api_keys
        if not keys:
            return
        if not key:
            raise ApiError(
                missing_status,
                "Invalid API key: this server needs one (api_key, or Authorization: Bearer KEY)",
                {"WWW-Authenticate": "Bearer"} if missing_status == 401 else None,
            )
        if not any(hmac.compare_digest(key.encode(), k.encode()) for k in keys):
            raise ApiError(403, "Invalid API key")

    def check_texts(self, texts: list[str], field_name: str, *, status: int = 422) -> None:
        """``status`` naming the limit (and the text's index) when there are too many texts or one is
        too long (422 on /v1; LibreTranslate answers 400)."""
        limit = self.settings.max_texts
        if len(texts) > limit:
            raise ApiError(
                status,
                f"{field_name}: {len(texts)} texts, more than this server's limit of {limit} per request",
            )
        limit = self.settings.max_chars
        for index, text in enumerate(texts):
            if len(text) > limit:
                where = f"{field_name}[{index}]" if len(texts) > 1 or field_name == "texts" else field_name
                raise ApiError(
                    status,
                    f"{where}: {len(text)} characters, more than this server's limit of {limit} per text",
                )

    def new_group(self) -> int:
        return next(self._groups)

    async def translate(self, model: ServedModel, options: Options, jobs: list[Job]) -> list[Result]:
        """Each job's result, through the batcher, within the request deadline (504 after it; jobs not
        started by then are dropped), or 503 with Retry-After when the queue has no room.

        A request that reached here while the server is stopping is still served: uvicorn stops
        accepting connections at SIGTERM, and what it did accept is finished before the worker stops."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.settings.request_timeout_s
        sources = model.translator.source_ids([job.text for job in jobs])
        items = [
            Item(options, job, max(1, len(ids)), loop.create_future(), loop, deadline)
            for job, ids in zip(jobs, sources, strict=True)
        ]
        try:
            self.batcher.submit(items)
        except (QueueFull, Stopped) as e:
            raise self.unavailable(str(e)) from None
        futures = [item.future for item in items]
        try:
            results = await asyncio.wait_for(asyncio.gather(*futures), self.settings.request_timeout_s)
        except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11
            raise ApiError(
                504,
                f"the translation did not finish within this server's {self.settings.request_timeout_s:g} s limit",
            ) from None
        except ApiError:
            raise
        except Exception as e:  # the batch failed: every request in it gets the error
            log.exception("a decoding batch failed")
            raise ApiError(500, f"translation failed: {type(e).__name__}: {e}") from None
        finally:
            for future in futures:
                future.cancel()  # a request that gave up leaves nothing in the queue
        return list(results)

    def unavailable(self, message: str) -> ApiError:
        return ApiError(503, message, {"Retry-After": str(self.settings.retry_after_s)})
