"""The application factory: one ``Collection`` per server process, shared by every request.

Many readers, one writer: searches run in the server's thread pool against the shared collection
(its index lock makes each search see a whole index, never one half-way through an add); writes
run as queued jobs (``imrs.api.jobs``) through the same library calls as the CLI. A search first
checks the collection's live-index version on disk (``Collection.refresh_if_stale``), so in a
server with several workers every worker reloads the index after another worker's job commits."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._pycompat import install_ast_parse_guard
from ..collection import Collection
from . import problems
from .problems import problem_response
from .routes import build_router, job_kinds
from .state import ServeConfig, ServerState

__all__ = ["API_VERSION", "ServeConfig", "ServerState", "create_app", "app_from_env", "state_dir"]

log = logging.getLogger(__name__)
access_log = logging.getLogger("imrs.api.access")

API_VERSION = "v1"


class BodyLimit:
    """Refuses a request body over its cap before the route reads it: by Content-Length when given,
    else by counting what arrives (a chunked upload cannot slip past)."""

    def __init__(self, app: ASGIApp, json_cap: int, upload_cap: int) -> None:
        self.app = app
        self.json_cap = json_cap
        self.upload_cap = upload_cap

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        cap = self.upload_cap + 65536 if scope["path"].endswith("/search/image") else self.json_cap
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared < 0 or declared > cap:
                await _send_problem(scope, send, 413, f"request body over {cap // 1024} KiB" if declared >= 0
                                    else "invalid Content-Length")
                return
        seen = 0
        too_big = False
        replaced = False

        async def counted() -> Message:
            nonlocal seen, too_big
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    too_big = True
                    raise _TooBig()
            return message

        async def guarded_send(message: Message) -> None:
            # the framework may turn the failed read into its own error answer: send ours instead
            nonlocal replaced
            if too_big:
                if message["type"] == "http.response.start" and not replaced:
                    replaced = True
                    await _send_problem(scope, send, 413, f"request body over {cap // 1024} KiB")
                return
            await send(message)

        try:
            await self.app(scope, counted, guarded_send)
        except _TooBig:
            if not replaced:
                await _send_problem(scope, send, 413, f"request body over {cap // 1024} KiB")


class Observe:
    """Request timeout, metrics and one JSON access-log line per request (plain ASGI: no extra task
    or stream per request on the search path)."""

    def __init__(self, app: ASGIApp, box: dict[str, ServerState], timeout: float) -> None:
        self.app = app
        self.box = box
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [500]
        started = [False]

        async def observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0], started[0] = int(message["status"]), True
            await send(message)

        try:
            if scope["path"].endswith("/events") or self.timeout <= 0:  # event streams run as long as their job
                await self.app(scope, receive, observed)
            else:
                await asyncio.wait_for(self.app(scope, receive, observed), self.timeout)
        except TimeoutError:
            if started[0]:
                raise
            await problem_response(504, f"the request took longer than {self.timeout:g}s",
                                   scope.get("path"))(scope, receive, observed)
        finally:
            self._record(scope, status[0], time.perf_counter() - t0)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        state = self.box.get("state")
        if state is not None:
            state.metrics.observe(scope["method"], route, status, seconds)
        if access_log.isEnabledFor(logging.INFO):
            client = scope.get("client")
            access_log.info(json.dumps({
                "ts": round(time.time(), 3), "method": scope["method"], "path": scope["path"][:200], "route": route,
                "status": status, "ms": round(seconds * 1000, 2), "key": (scope.get("state") or {}).get("key"),
                "client": client[0] if client else None}))


class _TooBig(Exception):
    pass


async def _send_problem(scope: Scope, send: Send, status: int, detail: str) -> None:
    resp = problem_response(status, detail, scope.get("path"))
    await resp(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def configure_access_log(enabled: bool) -> None:
    """Access lines are JSON objects on stderr, whatever level the rest of the logging is at."""
    lg = logging.getLogger("imrs.api.access")
    lg.propagate = False
    lg.setLevel(logging.INFO if enabled else logging.WARNING)
    if enabled and not lg.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        lg.addHandler(handler)


def create_app(config: ServeConfig, collection: Collection | None = None) -> FastAPI:
    """The ASGI app for ``config``; ``collection`` (already open) is used instead of opening one."""
    state_box: dict[str, ServerState] = {}
    configure_access_log(config.access_log)
    install_ast_parse_guard()  # searches run in threads beside job threads loading caches (imrs._pycompat)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        state = ServerState(config, job_kinds, collection)
        await asyncio.to_thread(state.warm_up)
        state.runner.start()
        state_box["state"] = state
        app.state.imrs = state
        log.info("serving %s (%d images)", state.coll.root, len(state.coll.catalog))
        try:
            yield
        finally:
            state.runner.stop()

    app = FastAPI(title="IMRS", version="1", lifespan=lifespan,
                  description="Search an image collection by text or image, judge the answer, and grow the "
                              "collection from the web: the same pipeline as the `imrs` CLI and the app.")
    problems.install(app)

    app.add_middleware(BodyLimit, json_cap=config.max_body_bytes, upload_cap=config.max_upload_bytes)
    app.add_middleware(Observe, box=state_box, timeout=config.request_timeout)  # outermost: sees every answer

    app.include_router(build_router(state_box))

    @app.get("/metrics", response_class=PlainTextResponse, tags=["service"], responses=problems.PROBLEM_RESPONSES)
    def metrics(request: Request) -> PlainTextResponse:
        """Prometheus text format: requests and latencies per endpoint, jobs, collection size."""
        state = state_box["state"]
        state.authorize(request, "read")
        return PlainTextResponse(state.metrics.render(state.gauges),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` workers: the configuration ``imrs serve`` handed down."""
    from ..config import serve_config_json

    text = serve_config_json()
    if not text:
        from ..errors import IMRSError

        raise IMRSError("no server configuration: start the server with `imrs serve`")
    return create_app(ServeConfig.from_json(text))


def state_dir(config: ServeConfig) -> Path:
    from ..config import state_dir_for

    return state_dir_for(config.root, config.home)
