"""Every error the server answers is JSON ``{"error": "..."}`` with a real status code, never a traceback.

The shape is LibreTranslate's, so its clients show the message; /v1 uses the same. The status codes:
400 malformed request (not JSON; on LibreTranslate's routes also a missing parameter, an unsupported
language or format, and its limits, as LibreTranslate answers them), 401 no API key where one is needed
(/v1; LibreTranslate answers 403), 403 a wrong API key, 404 an unknown route, 405 a wrong method, 413
a body over the size limit, 422 an invalid field on /v1 (a bad value, too many texts, a text too long,
a beam over the server's limit, an unknown model: the message names the field, the limit and the
text's index), 503 with Retry-After (queue full), 504 the request's deadline passed, 500 anything else
(logged with its traceback on the server's stderr, never sent).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("qkv.serve")


class ApiError(HTTPException):
    """An error answer: ``status`` and a message that says what was wrong and what to do.

    A FastAPI HTTPException, so that it passes unchanged through FastAPI's body reading (a body over
    the limit is found while reading it)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=status, detail=message, headers=headers)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _location(loc: tuple[int | str, ...]) -> str:
    """('body', 'texts', 3) -> 'texts[3]'."""
    parts = [p for p in loc if p not in ("body", "query")]
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def validation_message(error: RequestValidationError) -> tuple[int, str]:
    """The status and one line for a request FastAPI could not validate: 400 for a body that is not
    JSON, else 422 naming the first bad field (and how many more there are)."""
    errors = list(error.errors())
    if not errors:
        return 422, "invalid request"
    first = errors[0]
    if first.get("type") == "json_invalid":
        return 400, "the body is not valid JSON; send Content-Type: application/json with a JSON object"
    where = _location(tuple(first.get("loc", ())))
    message = f"{where}: {first.get('msg', 'invalid value')}"
    if first.get("type") == "extra_forbidden":
        message = f"{where}: unknown field; see GET /docs for the fields"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    return 422, message


def install_handlers(app: FastAPI) -> None:
    """The handlers that turn every exception into the JSON error shape."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.url.path}; see GET /docs for the API"
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        return error_response(exc.status_code, detail, dict(exc.headers or {}) or None)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, message = validation_message(exc)
        return error_response(status, message)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal error ({type(exc).__name__}); the server's log has the details")
