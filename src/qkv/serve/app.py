"""The ASGI app of ``qkv serve``: FastAPI routes over one :class:`~qkv.serve.batcher.Batcher`.

:func:`create_app` takes loaded models and :class:`Settings`; the app's lifespan starts the inference
worker and, at shutdown (after uvicorn has finished every accepted request), drains and stops it. The
routes: LibreTranslate's (:mod:`qkv.serve.libretranslate`), qkv's ``/v1`` (:mod:`qkv.serve.v1`),
``/healthz``, ``/readyz``, ``/metrics``, and the web page (``/`` and ``/static/...``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qkv.serve import libretranslate, v1
from qkv.serve import metrics as metrics_text
from qkv.serve.batcher import Batcher
from qkv.serve.errors import ApiError, error_response, install_handlers
from qkv.serve.inference import Runner
from qkv.serve.models import ServedModel
from qkv.serve.state import Settings, State


class RequestLimits:
    """ASGI middleware: the request body's size limit (413 naming it) and each request's route, status
    and time in the metrics. A declared Content-Length over the limit is refused without passing the body on (it is read
    and dropped, up to :data:`LINGER_BYTES`, so that the client reads its 413); a chunked body is counted
    as it arrives."""

    def __init__(self, app: ASGIApp, state: State) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500
        limit = self.state.settings.max_body_bytes
        too_large = f"the request body is more than this server's limit of {limit} bytes"

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        received = 0

        async def receive_counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise ApiError(413, too_large)
            return message

        try:
            declared = dict(scope.get("headers", [])).get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                # Read and drop the body first: uvicorn closes the socket once a "close" answer is sent,
                # and unread bytes in it make the kernel reset the connection before the client reads it.
                ended = await _discard_body(receive, most=LINGER_BYTES)
                headers = {} if ended else {"Connection": "close"}
                await error_response(413, too_large, headers)(scope, receive, send_counted)
            else:
                await self.app(scope, receive_counted, send_counted)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "other"
            self.state.metrics.request(path, status, time.monotonic() - started)


# How much of a refused body is read and thrown away before the 413: closing a socket with unread bytes in
# it makes the kernel reset the connection, and the client can lose the 413 it was sent. A larger body is
# answered after this much, with the connection closed.
LINGER_BYTES = 64 << 20


async def _discard_body(receive: Receive, *, most: int) -> bool:
    """Read the request body and drop it, up to ``most`` bytes; whether it was read to its end."""
    read = 0
    while read <= most:
        message = await receive()
        if message["type"] != "http.request":
            return False
        read += len(message.get("body", b""))
        if not message.get("more_body", False):
            return True
    return False


def create_app(
    models: list[ServedModel],
    settings: Settings,
    *,
    shutting_down: Callable[[], bool] = lambda: False,
    int8_available: bool = False,
) -> FastAPI:
    """The app serving ``models`` (the first is the default) with ``settings``. ``shutting_down`` tells
    /readyz and new translations that the server is stopping (uvicorn's should_exit)."""
    by_name = {model.name: model for model in models}
    runner = Runner(by_name)
    depth: list[Callable[[], int]] = []
    counters = metrics_text.Metrics(lambda: depth[0]() if depth else 0)
    batcher = Batcher(
        runner,
        max_batch=settings.max_batch,
        max_tokens=settings.max_tokens,
        max_wait_s=settings.max_wait_ms / 1000,
        queue_size=settings.queue_size,
        on_batch=counters.batch,
    )
    depth.append(lambda: batcher.depth)
    state = State(by_name, settings, batcher, counters, shutting_down, int8_available)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        # uvicorn calls this after its connections are done: what is left in the queue is run first.
        await asyncio.to_thread(batcher.stop, settings.request_timeout_s)

    app = FastAPI(
        title="qkv serve",
        summary="Translation with qkv models: a LibreTranslate-compatible API and qkv's /v1 API.",
        lifespan=lifespan,
    )
    app.state.qkv = state
    install_handlers(app)
    app.add_middleware(RequestLimits, state=state)
    app.include_router(libretranslate.router)
    app.include_router(v1.router)

    @app.get("/healthz", summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Models loaded, worker running, not shutting down", response_model=None)
    async def readyz() -> JSONResponse | dict[str, Any]:
        if shutting_down():
            return error_response(503, "shutting down", {"Retry-After": str(settings.retry_after_s)})
        if not batcher.is_alive:
            return error_response(503, "the inference worker is not running")
        return {"status": "ready", "models": list(by_name), "queue_depth": batcher.depth}

    @app.get("/metrics", summary="Prometheus text format", response_class=PlainTextResponse)
    async def metrics() -> Response:
        return PlainTextResponse(counters.render(), media_type=metrics_text.CONTENT_TYPE)

    _add_page(app, settings.static_dir)
    return app


def _add_page(app: FastAPI, static_dir: Path) -> None:
    """``/`` is static_dir/index.html and ``/static/...`` the directory's files; without them, 404 JSON."""
    index = static_dir / "index.html"

    @app.get("/", include_in_schema=False, response_model=None)
    async def page() -> FileResponse | JSONResponse:
        if not index.is_file():
            return error_response(404, f"no web page: {index} is missing; the API is at /docs")
        return FileResponse(index, media_type="text/html; charset=utf-8")

    if static_dir.is_dir():
        app.mount("/static", StaticFiles(directory=static_dir), name="static")
