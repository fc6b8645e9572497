"""Errors as RFC 9457 problem details: ``application/problem+json`` with one readable ``detail``.

Every error a client can cause ends here: an ``ApiProblem`` raised by a route, an ``IMRSError`` from
the library (its one-line message is the detail), a request that does not match the schema, and,
last, anything unexpected (logged with its traceback, answered with a 500 that says nothing more)."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import EmptyCollectionError, ImageDecodeError, IMRSError, NetworkError, SnapshotError

log = logging.getLogger(__name__)

PROBLEM_TYPE = "application/problem+json"


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str | None = None


class ApiProblem(Exception):
    """An error answer with its status; ``headers`` (Retry-After, WWW-Authenticate) go with it."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = int(status)
        self.detail = detail
        self.headers = headers or {}


def problem_response(status: int, detail: str, instance: str | None = None,
                     headers: dict[str, str] | None = None) -> JSONResponse:
    title = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    body = Problem(title=title, status=status, detail=_one_line(detail), instance=instance)
    return JSONResponse(body.model_dump(), status_code=status, media_type=PROBLEM_TYPE, headers=headers)


def _one_line(text: str, limit: int = 500) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def status_for(exc: IMRSError) -> int:
    """The HTTP status of a library error: what the client asked for is unusable (422), the
    collection cannot answer yet (409), or a remote server failed us (502)."""
    if isinstance(exc, EmptyCollectionError):
        return 409
    if isinstance(exc, SnapshotError) and "not found" in str(exc).lower():
        return 404
    if isinstance(exc, NetworkError | ImageDecodeError):
        return 422
    return 422


#: What every route may answer besides its success (for the OpenAPI document and its clients).
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "description": HTTPStatus(code).phrase, "content": {PROBLEM_TYPE: {}}}
    for code in (400, 401, 403, 404, 409, 413, 422, 429, 504)
}


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "the request does not match the API schema"


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiProblem)
    async def _problem(request: Request, exc: ApiProblem) -> JSONResponse:
        return problem_response(exc.status, exc.detail, request.url.path, exc.headers)

    @app.exception_handler(IMRSError)
    async def _imrs(request: Request, exc: IMRSError) -> JSONResponse:
        return problem_response(status_for(exc), str(exc), request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem_response(422, _validation_detail(exc), request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        return problem_response(exc.status_code, detail, request.url.path, getattr(exc, "headers", None))

    @app.exception_handler(RecursionError)
    async def _deep(request: Request, exc: RecursionError) -> JSONResponse:
        return problem_response(400, "the request is nested too deeply", request.url.path)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return problem_response(500, "internal error (logged on the server)", request.url.path)
