"""Prometheus text exposition of this server process: requests and latencies per endpoint, jobs,
collection size. No client library: the format is a few lines of text, and counters live in one
locked dict. With several workers each process answers for itself (``process`` label)."""

from __future__ import annotations

import bisect
import os
import threading
from collections import defaultdict
from collections.abc import Callable

#: Latency histogram buckets in seconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self._latency: dict[tuple[str, str], list[int]] = {}
        self._latency_sum: dict[tuple[str, str], float] = defaultdict(float)
        self._latency_count: dict[tuple[str, str], int] = defaultdict(int)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route)
        with self._lock:
            self._requests[(method, route, str(status))] += 1
            counts = self._latency.setdefault(key, [0] * (len(BUCKETS) + 1))
            counts[bisect.bisect_left(BUCKETS, seconds)] += 1
            self._latency_sum[key] += seconds
            self._latency_count[key] += 1

    def render(self, gauges: Callable[[], dict[str, tuple[str, dict[tuple[tuple[str, str], ...], float]]]]) -> str:
        """The exposition text; ``gauges()`` adds values read at scrape time (jobs, collection)."""
        proc = f'process="{os.getpid()}"'
        out = ["# HELP imrs_http_requests_total HTTP requests answered, by endpoint and status",
               "# TYPE imrs_http_requests_total counter"]
        with self._lock:
            for (method, route, status), n in sorted(self._requests.items()):
                out.append(f'imrs_http_requests_total{{{proc},method="{method}",route="{_label(route)}",'
                           f'status="{status}"}} {n}')
            out += ["# HELP imrs_http_request_seconds request latency, by endpoint",
                    "# TYPE imrs_http_request_seconds histogram"]
            for (method, route), counts in sorted(self._latency.items()):
                labels = f'{proc},method="{method}",route="{_label(route)}"'
                total = 0
                for bound, n in zip((*BUCKETS, float("inf")), counts, strict=True):
                    total += n
                    le = "+Inf" if bound == float("inf") else repr(bound)
                    out.append(f'imrs_http_request_seconds_bucket{{{labels},le="{le}"}} {total}')
                out.append(f"imrs_http_request_seconds_sum{{{labels}}} {self._latency_sum[(method, route)]:.6f}")
                out.append(f"imrs_http_request_seconds_count{{{labels}}} {self._latency_count[(method, route)]}")
        for name, (help_text, series) in gauges().items():
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
            for labels, value in series.items():
                lab = ",".join(f'{k}="{_label(v)}"' for k, v in labels)
                out.append(f"{name}{{{lab}}} {value:g}" if lab else f"{name} {value:g}")
        return "\n".join(out) + "\n"
