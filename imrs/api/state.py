"""What every request of one server process shares: its configuration, collection, keys, rate limits,
metrics and job queue (the routes and the application factory both use it; it uses neither)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from fastapi import Request

from ..collection import Collection
from ..config import Settings
from ..errors import IMRSError
from ..imagelimits import configure_images
from ..query import Query, run_query
from .jobs import JOBS_FILE, JobFn, JobStore, Runner
from .keys import ApiKey, KeyStore
from .metrics import Metrics
from .problems import ApiProblem

log = logging.getLogger(__name__)

#: One writer job: its parameters and a progress callback in, a JSON-ready report out.


@dataclass(frozen=True)
class ServeConfig:
    """What ``imrs serve`` was asked for: the collection and the server's limits."""

    root: str
    backbone: str
    indexer: str
    home: str
    device: str | None = None
    weights: str = "pretrained"
    checkpoint: str | None = None
    runtime: str = "auto"
    index_params: dict[str, Any] = field(default_factory=dict)
    max_body_bytes: int = 1 << 20  # JSON requests
    max_upload_bytes: int = 16 << 20  # an uploaded query image
    max_upload_pixels: int = 50_000_000  # decoded size of an upload (the bounded decoder refuses more)
    rate_per_minute: int = 600  # per API key (per client address without keys); 0: no limit
    request_timeout: float = 30.0  # seconds; event streams excepted
    job_poll: float = 0.2
    access_log: bool = True  # one JSON line per request on stderr

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        return cls(**json.loads(text))


class RateLimiter:
    """A token bucket per caller: ``per_minute`` requests a minute, bursts up to a tenth of that."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, who: str, per_minute: int) -> float:
        """0 when allowed, else the seconds until the next request would be."""
        if per_minute <= 0:
            return 0.0
        rate, burst = per_minute / 60.0, max(5.0, per_minute / 10.0)
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(who, (burst, now))
            tokens = min(burst, tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._buckets[who] = (tokens - 1.0, now)
                return 0.0
            self._buckets[who] = (tokens, now)
            return (1.0 - tokens) / rate


class ServerState:
    """Everything a request may use, built once per process."""

    def __init__(self, config: ServeConfig, kinds: Callable[[ServerState], dict[str, JobFn]],
                 collection: Collection | None = None) -> None:
        """``kinds``: what each writer job runs, given this state (the routes module defines them)."""
        self.config = config
        self.settings = Settings.from_env(home=config.home)  # read once per process, passed down from here
        configure_images(self.settings)
        self.coll = collection or Collection(config.root, config.backbone, config.indexer, home=config.home,
                                             device=config.device, weights=config.weights,
                                             checkpoint=config.checkpoint, index_params=config.index_params,
                                             runtime=config.runtime, settings=self.settings)
        self.keys = KeyStore(config.home)
        self.limiter = RateLimiter()
        self.metrics = Metrics()
        self.jobs = JobStore(self.coll.state_dir / JOBS_FILE)
        self.job_counts: dict[tuple[str, str], int] = {}
        self.runner = Runner(self.jobs, kinds(self), poll=config.job_poll, on_finish=self._finished)

    def warm_up(self) -> None:
        """Load the index, the model and the text-search state before the first request, so the
        first person's search costs what every later one does."""
        coll = self.coll
        _ = coll.index  # load (or repair) the index
        try:
            first = next(coll.catalog.iter_records(), None)
            if first is None:
                return
            run_query(coll, Query(text=first.label or "photo", k=1), self.settings)
            run_query(coll, Query(image=str(coll.abspath(first.relpath, first.source)), k=1), self.settings)
        except IMRSError as exc:
            log.warning("warm-up search failed: %s", exc)

    def _finished(self, kind: str, status: str) -> None:
        self.job_counts[(kind, status)] = self.job_counts.get((kind, status), 0) + 1

    def authorize(self, request: Request, scope: str) -> ApiKey | None:
        """The caller's key when it may use ``scope`` (None: no keys are configured)."""
        key: ApiKey | None = None
        if self.keys.configured():
            token = _token(request)
            if not token:
                raise ApiProblem(401, "an API key is required: send it as 'Authorization: Bearer KEY'",
                                 {"WWW-Authenticate": "Bearer"})
            key = self.keys.check(token)
            if key is None:
                raise ApiProblem(401, "unknown or revoked API key", {"WWW-Authenticate": "Bearer"})
            if not key.allows(scope):
                raise ApiProblem(403, f"this API key has no {scope} scope (`imrs serve keys add NAME --scope "
                                      f"{scope}` makes one)")
        who = key.id if key is not None else (request.client.host if request.client else "?")
        rate = key.rate_per_minute if key is not None and key.rate_per_minute is not None else \
            self.config.rate_per_minute
        wait = self.limiter.take(who, rate)
        if wait > 0:
            raise ApiProblem(429, f"rate limit of {rate} requests a minute reached; retry in {wait:.1f}s",
                             {"Retry-After": str(max(1, round(wait)))})
        request.state.key = key.id if key is not None else None
        return key

    def gauges(self) -> dict[str, tuple[str, dict[tuple[tuple[str, str], ...], float]]]:
        counts = self.jobs.counts()
        cat = self.coll.catalog
        return {
            "imrs_jobs": ("writer jobs by status (queue shared by all workers)",
                          {(("status", s),): float(counts.get(s, 0))
                           for s in ("queued", "running", "done", "failed", "cancelled")}),
            "imrs_jobs_finished_here": ("jobs this process ran, by kind and outcome",
                                        {(("kind", k), ("status", s)): float(n)
                                         for (k, s), n in sorted(self.job_counts.items())}),
            "imrs_collection_images": ("images in the collection, by source",
                                       {(("source", "base"),): float(cat.count("base")),
                                        (("source", "dynamic"),): float(cat.count("dynamic"))}),
            "imrs_index_vectors": ("vectors in this process's loaded index", {(): float(len(self.coll.index))}),
        }


def _token(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return request.headers.get("x-api-key") or None
