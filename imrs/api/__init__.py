"""``imrs serve``: the search-judge-grow loop over HTTP (FastAPI on uvicorn), for teams that build
on IMRS. Versioned endpoints under ``/v1``, the OpenAPI document at ``/openapi.json``, docs at
``/docs``, Prometheus metrics at ``/metrics``.

- ``app``: the factory, per-process state, auth and rate limit, body caps, timeouts, access logs;
- ``routes``: the endpoints, each a thin call into ``imrs.query`` or the collection;
- ``jobs``: writer jobs (growth, indexing, pruning, snapshots), one at a time, queued in SQLite;
- ``keys``: hashed API keys with read/write scopes; ``problems``: RFC 9457 error answers;
- ``metrics``: the Prometheus text format.
"""

from __future__ import annotations

from .app import ServeConfig, create_app

__all__ = ["ServeConfig", "create_app"]
