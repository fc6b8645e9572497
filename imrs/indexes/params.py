"""Index parameters: which ones each kind takes, their defaults from collection size, and checks.

Parameters fall in three groups, because they can be changed at different costs:

* **build** (``M``, ``efConstruction``, ``nlist``, ``m``, ``nbits``, ``n_trees``) shape the
  structure itself; changing one means building again, so ``set_params`` refuses them and
  ``rebuild(**params)`` takes them.
* **search** (``efSearch``, ``nprobe``, ``k_factor``, ``search_k``) trade speed for recall on the
  next query and can change at any time.
* **policy** (``exact_below``, ``delta_fraction``, ``compact_fraction``) decide when the index
  trains, merges its exact delta, or compacts tombstones; also changeable at any time.

A build parameter the caller did not give is *auto*: it is derived again from the number of
vectors whenever the structure is (re)built, so an IVF index trained on 5k vectors and rebuilt at
500k gets a list count that fits 500k. An explicitly given value is kept for the index's life.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import UnknownIndexError

INDEX_KINDS: tuple[str, ...] = ("flat_ip", "hnsw", "ivf_flat", "ivf_pq", "annoy", "milvus")

BUILD_PARAMS = frozenset({"M", "efConstruction", "nlist", "m", "nbits", "n_trees", "index_type", "compressed"})


@dataclass(frozen=True)
class Tunable:
    """One search-time knob (higher: better recall, slower), changeable per call and per session.
    ``lo``/``hi`` bound what a person may pick (``-1`` for ``search_k`` means auto); the default is
    the built index's own value, derived from the collection's size by :func:`auto_params`."""

    name: str
    lo: int = 1
    hi: int = 100_000


#: The one table of search-time tunables per index kind: the page's per-session inputs, the
#: benchmark's tuning sweep and the collection's per-call search parameters all read it.
TUNABLES: dict[str, tuple[Tunable, ...]] = {
    "hnsw": (Tunable("efSearch"),),
    "ivf_flat": (Tunable("nprobe"),),
    "ivf_pq": (Tunable("nprobe"), Tunable("k_factor")),
    "annoy": (Tunable("search_k", lo=-1),),
}
SEARCH_PARAMS = frozenset(t.name for kind in TUNABLES.values() for t in kind)
POLICY_PARAMS = frozenset({"exact_below", "delta_fraction", "compact_fraction"})
#: Where a kind's data lives rather than how it is shaped (Milvus): settable at creation only.
CONNECTION_PARAMS = frozenset({"uri", "collection"})
ALL_PARAMS = BUILD_PARAMS | SEARCH_PARAMS | POLICY_PARAMS | CONNECTION_PARAMS

#: Milvus index types IMRS knows how to configure; AUTO picks one from the size and the server.
MILVUS_INDEX_TYPES: tuple[str, ...] = ("AUTO", "FLAT", "HNSW", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "DISKANN")
_MILVUS_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")

KIND_PARAMS: dict[str, frozenset[str]] = {
    "flat_ip": frozenset({"compact_fraction"}),
    "hnsw": frozenset({"M", "efConstruction", "efSearch", "compact_fraction"}),
    "ivf_flat": frozenset({"nlist", "nprobe", "exact_below", "compact_fraction"}),
    "ivf_pq": frozenset({"nlist", "nprobe", "m", "nbits", "k_factor", "exact_below", "compact_fraction",
                         "compressed"}),
    "annoy": frozenset({"n_trees", "search_k", "exact_below", "delta_fraction", "compact_fraction"}),
    "milvus": frozenset({"index_type", "M", "efConstruction", "efSearch", "nlist", "nprobe", "m", "nbits",
                         "uri", "collection"}),
}

#: k-means (IVF coarse quantizer and each PQ sub-quantizer) wants this many points per centroid;
#: FAISS warns below it and the centroids are noise well before zero.
MIN_POINTS_PER_CENTROID = 39

#: Smallest auto PQ code width: 16 centroids per sub-quantizer, so IVF-PQ trains from 39*16 vectors.
MIN_AUTO_NBITS = 4

#: Tombstones (HNSW, Annoy) or dead slots (flat, IVF) above this fraction trigger a compaction.
DEFAULT_COMPACT_FRACTION = 0.2
#: Below this many vectors the approximate structure is not built: exact search is as fast and exact.
DEFAULT_EXACT_BELOW = 1024
#: Annoy's exact delta is merged into a rebuilt forest once it exceeds this fraction of the forest.
DEFAULT_DELTA_FRACTION = 0.1


def tunables(kind: str) -> tuple[Tunable, ...]:
    """``kind``'s search-time tunables (none for exact search)."""
    return TUNABLES.get(kind, ())


def tunable_names(kind: str) -> tuple[str, ...]:
    return tuple(t.name for t in tunables(kind))


def search_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Only the search-time tunables of ``params`` (of any kind): what a per-call search may set."""
    return {k: v for k, v in params.items() if k in SEARCH_PARAMS}


def check_kind(kind: str) -> str:
    if kind not in KIND_PARAMS:
        raise UnknownIndexError(f"unknown index kind {kind!r}; choose one of {', '.join(INDEX_KINDS)}")
    return kind


def auto_nlist(n: int) -> int:
    """~4*sqrt(n) lists (FAISS's guideline), but never fewer than 39 training points per list."""
    by_size = round(4 * math.sqrt(max(n, 1)))
    by_training = max(1, n // MIN_POINTS_PER_CENTROID)
    return int(max(1, min(by_size, by_training, 65536)))


def auto_nprobe(nlist: int) -> int:
    """Probe ~1/16 of the lists, at least 8: recall >= 0.9 on clustered embeddings at modest cost."""
    return int(min(nlist, max(8, math.ceil(nlist / 16))))


def auto_pq_m(dim: int) -> int:
    """Sub-quantizer count = code bytes per vector: the divisor of ``dim`` nearest dim/8 (8 dims each).

    8 dims per 8-bit sub-quantizer keeps PQ distances good enough to shortlist for an exact re-rank
    while cutting memory 32x; the count has to divide ``dim`` for FAISS.
    """
    target = max(1, dim // 8)
    divisors = [d for d in range(1, dim + 1) if dim % d == 0]
    return int(min(divisors, key=lambda d: (abs(d - target), -d)))


def auto_nbits(n: int) -> int:
    """8-bit codes once there are 39*256 training points; fewer bits (min 4) for smaller collections."""
    if n >= MIN_POINTS_PER_CENTROID * 256:
        return 8
    if n < MIN_POINTS_PER_CENTROID * (1 << MIN_AUTO_NBITS):
        return MIN_AUTO_NBITS
    return int(max(MIN_AUTO_NBITS, min(8, math.floor(math.log2(n / MIN_POINTS_PER_CENTROID)))))


def auto_n_trees(n: int) -> int:
    """More trees for bigger forests: ~10 at 1k vectors, ~50 at 1M (build cost is linear in trees)."""
    return int(min(100, max(10, round(10 + 4 * math.log2(max(n, 1000) / 1000)))))


def auto_params(kind: str, n: int, dim: int) -> dict[str, Any]:
    """Sensible defaults for ``kind`` holding ``n`` vectors of ``dim`` dimensions.

    Every parameter the kind takes is in the result, so ``make_index(kind, dim, **auto_params(...))``
    is a valid call and ``get_params`` of a fresh index looks the same.
    """
    check_kind(kind)
    n = max(int(n or 0), 0)
    dim = int(dim)
    if dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim}")
    p: dict[str, Any] = {"compact_fraction": DEFAULT_COMPACT_FRACTION}
    if kind == "hnsw":
        m = 16 if n < 100_000 else 32
        p.update(M=m, efConstruction=max(40, 4 * m), efSearch=64 if n < 100_000 else 128 if n < 1_000_000 else 256)
    elif kind in ("ivf_flat", "ivf_pq"):
        nlist = auto_nlist(n)
        p.update(nlist=nlist, nprobe=auto_nprobe(nlist), exact_below=DEFAULT_EXACT_BELOW)
        if kind == "ivf_pq":
            # compressed=1: raw vectors (for the exact re-rank) in a mapped file, only codes in memory
            p.update(m=auto_pq_m(dim), nbits=auto_nbits(n), k_factor=8, compressed=0)
    elif kind == "annoy":
        p.update(n_trees=auto_n_trees(n), search_k=-1, exact_below=DEFAULT_EXACT_BELOW,
                 delta_fraction=DEFAULT_DELTA_FRACTION)
    elif kind == "milvus":
        # Milvus compacts by itself; the graph / list / code parameters follow the FAISS kinds' rules
        p = {"index_type": "AUTO", **auto_params("hnsw", n, dim), **auto_params("ivf_pq", n, dim)}
        for key in ("compact_fraction", "exact_below", "k_factor", "compressed"):
            p.pop(key, None)
        p["nbits"] = 8  # Milvus trains its PQ on the whole segment: 8-bit codes, as its docs advise
    return p


def _int(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise ValueError(f"index parameter {name} must be an integer, got {value!r}")
    v = int(value)
    if v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"index parameter {name} must be {rng}, got {v}")
    return v


def _fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < float(value) <= 1:
        raise ValueError(f"index parameter {name} must be a number in (0, 1], got {value!r}")
    return float(value)


def validate_params(kind: str, dim: int, params: dict[str, Any]) -> dict[str, Any]:
    """Type- and range-check ``params`` for ``kind``; returns a cleaned copy.

    A parameter that belongs to another kind only (``nprobe`` given to ``hnsw``) is dropped with the
    caller's knowledge (the returned dict lacks it) so one config can carry tunables for several
    kinds; a name no kind knows is a typo and raises.
    """
    allowed = KIND_PARAMS[check_kind(kind)]
    out: dict[str, Any] = {}
    for name, value in params.items():
        if name not in allowed:
            if name in ALL_PARAMS:
                continue
            raise ValueError(f"unknown index parameter {name!r} for {kind}; it takes {', '.join(sorted(allowed))}")
        if name == "index_type":
            if not isinstance(value, str) or value.upper() not in MILVUS_INDEX_TYPES:
                raise ValueError(f"index parameter index_type must be one of {', '.join(MILVUS_INDEX_TYPES)}, "
                                 f"got {value!r}")
            out[name] = value.upper()
        elif name == "uri":
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"index parameter uri must be a Milvus URI or a local .db path, got {value!r}")
            out[name] = value.strip()
        elif name == "collection":
            if not isinstance(value, str) or not _MILVUS_NAME.match(value):
                raise ValueError(f"index parameter collection must be letters, digits and '_' (not starting "
                                 f"with a digit, at most 255), got {value!r}")
            out[name] = value
        elif name in ("compact_fraction", "delta_fraction"):
            out[name] = _fraction(name, value)
        elif name == "search_k":
            v = _int(name, value, -1)
            if v == 0:
                raise ValueError("index parameter search_k must be -1 (auto) or positive, got 0")
            out[name] = v
        elif name == "nbits":
            out[name] = _int(name, value, 1, 16)
        elif name == "m":
            v = _int(name, value, 1)
            if dim % v:
                raise ValueError(f"index parameter m={v} must divide the dimension {dim}")
            out[name] = v
        elif name == "compressed":
            out[name] = _int(name, value, 0, 1)
        elif name == "M":
            out[name] = _int(name, value, 2, 512)
        elif name == "exact_below":
            out[name] = _int(name, value, 0)
        else:
            out[name] = _int(name, value, 1)
    return out
