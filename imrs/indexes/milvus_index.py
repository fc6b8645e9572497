"""Milvus as an index kind: the vectors live in a Milvus collection, IMRS keeps only a pointer.

Why Milvus: past what one process's memory holds (tens of millions of 1,280-d vectors), the index
has to be a service that shards, replicates and builds disk-resident indexes (DISKANN). The same
``pymilvus.MilvusClient`` talks to Milvus Lite (an embedded, file-backed Milvus that needs no
server: the default, a ``milvus.db`` folder in the collection's state folder), a standalone server
or a cluster, so one code path serves a laptop and a data centre.

Contract: the same as every ``VectorIndex`` (upsert, remove, cosine scores, padding, get_vectors,
save/load) so the collection, the CLI and the app need not know which kind they hold. What differs
underneath, and why:

* There is no slot table. Milvus keys rows by our int64 ids natively, deletes natively and
  compacts by itself, so the base class's slot machinery (tombstones, loose delta) is unused; this
  class overrides the public methods instead of the slot hooks.
* The collection is created with ``Strong`` consistency so a search right after ``add`` or
  ``remove`` sees the change, as the contract demands.
* ``source``, ``label`` and ``term`` are stored beside each vector (from an attribute source the
  owning collection wires in: the catalog), so ``where=`` filters run inside Milvus.
* ``save`` flushes and writes ``meta.json`` with the URI and collection name (never the token)
  and a content checksum (ids and vector bits, kept up to date on every add/remove): the vectors
  are not copied, so a snapshot restores by reconnecting, without re-embedding. Loading checks the
  count always and the checksum against what Milvus really holds (every row read back) when asked
  or when the collection is small; a mismatch is a ``ContentMismatch`` (a ``SnapshotError``), and
  the collection facade then repairs from its NPZ caches or refuses. A count alone cannot see
  ten rows pruned and ten others added.

Index types: ``AUTO`` picks HNSW (in-memory graph, best recall/latency up to ~10M vectors per
node) and DISKANN on a server above that; ``FLAT``, ``IVF_FLAT``, ``IVF_SQ8``, ``IVF_PQ`` can be
asked for. Milvus Lite builds only FLAT, HNSW, IVF_FLAT and IVF_SQ8: other requests fall back
(IVF_PQ -> IVF_SQ8, the compressed type it has; DISKANN -> HNSW) with a log line.

Where the vectors live and how to connect is :mod:`.milvus_connect`; the content checksum is
:mod:`.milvus_checksum`. What remains here is one idea, the ``VectorIndex`` contract on Milvus, kept
in one module although it runs a little past 500 lines.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import IMRSError, SnapshotError
from ..fsutil import atomic_write_json
from .base import FILTER_EXACT_FLOATS, FORMAT_VERSION, META_FILE, VectorIndex, as_ids
from .exact import exact_search
from .milvus_checksum import MASK64, ContentMismatch, checksum_as_stored, content_checksum
from .milvus_connect import (
    client,
    connection_params,
    is_lite_uri,
    quiet_library_logs,
    reason,
    remember_location,
    remembered_location,
)
from .params import auto_params, validate_params

if TYPE_CHECKING:
    from ..filters import Where

log = logging.getLogger(__name__)

#: Also reached through this module by the collection (location, checksum): one place to import from.
__all__ = ["ContentMismatch", "MilvusIndex", "checksum_as_stored", "connection_params", "content_checksum",
           "is_lite_uri", "lite_path_of", "quiet_library_logs", "remember_location", "remembered_location"]

#: Scalar fields stored with every vector, filterable inside Milvus (see ``imrs.filters``).
ATTRIBUTE_FIELDS: tuple[str, ...] = ("source", "label", "term")
#: VARCHAR capacity of each attribute field.
ATTRIBUTE_MAX_CHARS = 512
#: Milvus's largest top-k (``limit``) per search.
MAX_TOPK = 16384
#: Bytes of vector data per insert/upsert request, well under gRPC's default 64 MiB message.
REQUEST_BYTES = 16 * 1024 * 1024
#: ids per ``get``/``delete`` request (an expression of 2,000 int64s is ~40 KB).
IDS_PER_REQUEST = 2000
#: What Milvus Lite builds; anything else falls back (logged) to the nearest type it has.
LITE_INDEX_TYPES = frozenset({"FLAT", "HNSW", "IVF_FLAT", "IVF_SQ8"})
_LITE_FALLBACK = {"IVF_PQ": "IVF_SQ8", "DISKANN": "HNSW"}
#: Above this many vectors AUTO prefers DISKANN (on a server that has it): an in-memory HNSW over
#: 1,280-d float32 vectors needs ~5.3 GB per million, DISKANN keeps ~1/8 of that in memory.
AUTO_DISKANN_ABOVE = 10_000_000

#: A filter allowing at most this many floats of vectors is answered exactly: the allowed rows'
#: vectors are read from Milvus and scored here (a graph index with a selective filter misses hits).
FILTER_EXACT_FLOATS_MILVUS = FILTER_EXACT_FLOATS // 4
#: Rows per read when every row is read back (content verification).
VERIFY_BATCH = 4096

AttributeSource = Callable[[np.ndarray], dict[str, list[str]]]


class MilvusIndex(VectorIndex):
    """A Milvus collection holding ``id``, ``vec`` (float32, inner product) and the attribute fields."""

    kind = "milvus"
    keeps_vectors = False
    native_file = ""

    def __init__(self, dim: int, params: dict[str, Any], explicit: frozenset[str] = frozenset(),
                 *, _create: bool = True) -> None:
        super().__init__(dim, params, explicit)
        from ..config import home_dir, milvus_uri

        # without a collection to own it (imrs bench, scripts): one Lite file under the IMRS home
        self.uri: str = str(self._params.pop("uri", None) or milvus_uri() or home_dir() / "milvus" / "milvus.db")
        self.collection: str = str(self._params.pop("collection", None) or "imrs_vectors")
        self._explicit -= {"uri", "collection"}
        self._client = client(self.uri)
        self._lite = is_lite_uri(self.uri) or str(self._client.get_server_version()).startswith("milvus_lite")
        self._attributes: AttributeSource | None = None
        self._count = 0
        self._checksum = 0  # content_checksum of every row, kept up to date by add/remove
        self.native_type = ""
        if _create:
            self._create_collection(len_hint=0)

    # -- collection lifecycle ---------------------------------------------------------------------
    def _choose_type(self, n: int) -> str:
        asked = str(self._params.get("index_type", "AUTO"))
        want = asked
        if asked == "AUTO":
            want = "DISKANN" if n > AUTO_DISKANN_ABOVE and not self._lite else "HNSW"
        if self._lite and want not in LITE_INDEX_TYPES:
            fallback = _LITE_FALLBACK.get(want, "HNSW")
            log.info("milvus: Milvus Lite cannot build %s; using %s (a Milvus server builds %s)", want, fallback, want)
            want = fallback
        return want

    def _index_params(self, index_type: str) -> Any:
        p = self._params
        build: dict[str, Any] = {}
        if index_type == "HNSW":
            build = {"M": int(p["M"]), "efConstruction": int(p["efConstruction"])}
        elif index_type in ("IVF_FLAT", "IVF_SQ8"):
            build = {"nlist": int(p["nlist"])}
        elif index_type == "IVF_PQ":
            build = {"nlist": int(p["nlist"]), "m": int(p["m"]), "nbits": int(p["nbits"])}
        ip = self._client.prepare_index_params()
        # pymilvus sends params as flat key/values, which servers read; Milvus Lite reads only the
        # older single JSON "params" entry and would silently build with its defaults
        ip.add_index(field_name="vec", index_type=index_type, metric_type="IP",
                     params={"params": build} if self._lite else build)
        return ip

    def _create_collection(self, len_hint: int) -> None:
        """Drop any collection of this name and create an empty one: ``make_index`` means a new,
        empty index, and the name is owned by one IMRS collection (see default_collection_name)."""
        from pymilvus import DataType, MilvusClient

        if self._client.has_collection(self.collection):
            log.info("milvus: replacing collection %s at %s", self.collection, self.uri)
            self._client.drop_collection(self.collection)
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vec", DataType.FLOAT_VECTOR, dim=self.dim)
        for name in ATTRIBUTE_FIELDS:
            schema.add_field(name, DataType.VARCHAR, max_length=ATTRIBUTE_MAX_CHARS)
        self.native_type = self._choose_type(len_hint)
        try:
            self._client.create_collection(self.collection, schema=schema, consistency_level="Strong")
        except Exception as exc:  # noqa: BLE001 - permissions, quota, a name taken by another schema
            raise IMRSError(f"Milvus at {self.uri} refused collection {self.collection}: {reason(exc)}") from exc
        try:
            self._create_index()
        except Exception as exc:  # noqa: BLE001 - a server without DISKANN (no local NVMe configured)
            if self.native_type == "HNSW":
                raise IMRSError(f"Milvus at {self.uri} refused an HNSW index: {reason(exc)}") from exc
            log.warning("milvus: server refused %s (%s); using HNSW", self.native_type, reason(exc))
            self.native_type = "HNSW"
            self._create_index()
        self._client.load_collection(self.collection)
        self._count = 0
        self._checksum = 0

    def _create_index(self) -> None:
        # sync=False: Milvus Lite cannot allocate the timestamp pymilvus's wait uses (it logs a server
        # error); load_collection waits for the index instead
        self._client.create_index(self.collection, self._index_params(self.native_type), sync=False)

    def _refresh_count(self) -> int:
        res = self._client.query(self.collection, filter="", output_fields=["count(*)"])
        self._count = int(res[0]["count(*)"]) if res else 0
        return self._count

    def set_attribute_source(self, source: AttributeSource | None) -> None:
        self._attributes = source

    # -- container protocol -------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._count

    def __contains__(self, item: object) -> bool:
        try:
            i = int(item)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            return False
        return bool(self._client.get(self.collection, ids=[i], output_fields=["id"]))

    def __repr__(self) -> str:
        return f"<MilvusIndex {self.collection}@{self.uri} type={self.native_type} dim={self.dim} count={len(self)}>"

    def ids(self) -> np.ndarray:
        """Every id, read back with a query iterator (linear in the collection: snapshots, merges)."""
        out: list[np.ndarray] = []
        pymilvus_log = logging.getLogger("pymilvus")
        level = pymilvus_log.level
        pymilvus_log.setLevel(logging.ERROR)  # Lite has no MVCC timestamp and the iterator warns so
        try:
            it = self._client.query_iterator(self.collection, batch_size=10_000, filter="", output_fields=["id"])
            while True:
                batch = it.next()
                if not batch:
                    it.close()
                    break
                out.append(np.fromiter((r["id"] for r in batch), dtype=np.int64, count=len(batch)))
        finally:
            pymilvus_log.setLevel(level)
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    # -- mutation -----------------------------------------------------------------------------------
    def add(self, ids: Any, vecs: Any) -> None:
        """Upsert (Milvus replaces rows with the same primary key); last occurrence in a batch wins."""
        ids, vecs = self._upsert_batch(ids, vecs)
        if not len(ids):
            return
        attrs = self._attributes(ids) if self._attributes is not None else {}
        old_ids, old_vecs = self._rows_of(ids)  # rows this upsert replaces leave the checksum
        self._checksum = (self._checksum - content_checksum(old_ids, old_vecs)
                          + content_checksum(ids, vecs)) & MASK64
        step = max(1, REQUEST_BYTES // (4 * self.dim))
        for lo in range(0, len(ids), step):
            hi = min(len(ids), lo + step)
            cols = {f: attrs.get(f, [""] * len(ids))[lo:hi] for f in ATTRIBUTE_FIELDS}
            rows = [{"id": i, "vec": v, **{f: (cols[f][j] or "")[:ATTRIBUTE_MAX_CHARS] for f in ATTRIBUTE_FIELDS}}
                    for j, (i, v) in enumerate(zip(ids[lo:hi].tolist(), vecs[lo:hi], strict=True))]
            self._client.upsert(self.collection, rows)
        self._refresh_count()

    def remove(self, ids: Any) -> int:
        ids = np.unique(as_ids(ids))
        if not len(ids) or not self._count:
            return 0
        before = self._count
        old_ids, old_vecs = self._rows_of(ids)
        for lo in range(0, len(ids), IDS_PER_REQUEST):
            self._client.delete(self.collection, ids=ids[lo : lo + IDS_PER_REQUEST].tolist())
        self._checksum = (self._checksum - content_checksum(old_ids, old_vecs)) & MASK64
        return before - self._refresh_count()

    def _rows_of(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of those of ``ids`` that Milvus holds now."""
        found: dict[int, np.ndarray] = {}
        if self._count:
            want = np.unique(ids)
            for lo in range(0, len(want), IDS_PER_REQUEST):
                for row in self._client.get(self.collection, ids=want[lo : lo + IDS_PER_REQUEST].tolist(),
                                            output_fields=["vec"]):
                    found[int(row["id"])] = np.asarray(row["vec"], np.float32)
        if not found:
            return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)
        return np.fromiter(found, np.int64, len(found)), np.stack(list(found.values()))

    def checksum(self) -> int:
        """The content checksum as this index keeps it (see ``content_checksum``)."""
        return self._checksum

    def read_checksum(self) -> tuple[int, int]:
        """(rows, checksum) of what Milvus really holds: every row read back (linear; snapshots)."""
        total, n = 0, 0
        pymilvus_log = logging.getLogger("pymilvus")
        level = pymilvus_log.level
        pymilvus_log.setLevel(logging.ERROR)  # Lite has no MVCC timestamp and the iterator warns so
        try:
            it = self._client.query_iterator(self.collection, batch_size=VERIFY_BATCH, filter="",
                                             output_fields=["id", "vec"])
            while True:
                batch = it.next()
                if not batch:
                    it.close()
                    break
                ids = np.fromiter((r["id"] for r in batch), dtype=np.int64, count=len(batch))
                vecs = np.asarray([r["vec"] for r in batch], np.float32)
                total = (total + content_checksum(ids, vecs)) & MASK64
                n += len(batch)
        finally:
            pymilvus_log.setLevel(level)
        return n, total

    def verify(self, count: int, checksum: int | None, what: str = "the snapshot") -> None:
        """Raise ContentMismatch unless Milvus holds ``count`` rows whose checksum is ``checksum``
        (None: an older snapshot without one: the count is all there is to check)."""
        n, actual = self.read_checksum() if checksum is not None else (self._refresh_count(), None)
        if n != count or (checksum is not None and actual != checksum):
            why = f"{n} vectors, {what} recorded {count}" if n != count else \
                f"{n} vectors as {what} recorded, but other ones (rows replaced since)"
            raise ContentMismatch(f"Milvus collection {self.collection} at {self.uri} holds {why}: it changed since")
        if actual is not None:
            self._checksum = actual

    def rebuild(self, **build_params: Any) -> None:
        """Build the Milvus index again (new type or parameters); the rows stay where they are."""
        params = validate_params(self.kind, self.dim, build_params)
        params.pop("uri", None)
        params.pop("collection", None)
        self._explicit |= set(params)
        self._params.update(params)
        self._reresolve(len(self))
        self._params.pop("uri", None)
        self._params.pop("collection", None)
        self.native_type = self._choose_type(len(self))
        self._client.release_collection(self.collection)
        for name in self._client.list_indexes(self.collection):
            self._client.drop_index(self.collection, name)
        self._create_index()
        self._client.load_collection(self.collection)
        log.info("milvus: rebuilt %s as %s over %d vectors", self.collection, self.native_type, len(self))

    retrain = rebuild

    # -- reads --------------------------------------------------------------------------------------
    def get_vectors(self, ids: Any) -> np.ndarray:
        ids = as_ids(ids)
        out = np.zeros((len(ids), self.dim), np.float32)
        if not len(ids):
            return out
        want = np.unique(ids)
        found: dict[int, np.ndarray] = {}
        for lo in range(0, len(want), IDS_PER_REQUEST):
            for row in self._client.get(self.collection, ids=want[lo : lo + IDS_PER_REQUEST].tolist(),
                                        output_fields=["vec"]):
                found[int(row["id"])] = np.asarray(row["vec"], np.float32)
        for n, i in enumerate(ids.tolist()):
            if i in found:
                out[n] = found[i]
        return out

    def _search_params(self, k: int, effort: int, p: dict[str, Any]) -> dict[str, Any]:
        """Native search params for one effort level (1 = the configured one; retries raise it),
        from this search's parameters ``p`` (``search_params``)."""
        t = self.native_type
        if t == "HNSW":
            return {"ef": int(min(max(int(p["efSearch"]) * effort, k), max(self._count, k)))}
        if t in ("IVF_FLAT", "IVF_SQ8", "IVF_PQ"):
            return {"nprobe": int(min(int(p["nprobe"]) * effort, int(p["nlist"])))}
        if t == "DISKANN":
            return {"search_list": int(min(max(int(p["efSearch"]) * effort, k), 65535))}
        return {}

    def _max_effort(self, p: dict[str, Any]) -> int:
        t = self.native_type
        if t == "HNSW":
            return max(1, math.ceil(max(self._count, 1) / max(int(p["efSearch"]), 1)))
        if t in ("IVF_FLAT", "IVF_SQ8", "IVF_PQ"):
            return max(1, math.ceil(int(p["nlist"]) / max(int(p["nprobe"]), 1)))
        return 1

    def search(self, queries: Any, k: int, where: Where | None = None,
               params: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        q, k = self._query_args(queries, k)
        p = self.search_params(params)
        scores = np.full((len(q), k), -np.inf, np.float32)
        ids = np.full((len(q), k), -1, np.int64)
        if not len(q) or not self._count:
            return scores, ids
        expr = where.milvus_expr if where is not None else ""
        limit = min(k, MAX_TOPK, self._count)
        want: int | None = None if expr else limit  # rows shorter than this are retried harder
        effort, max_effort = 1, self._max_effort(p)
        if expr:
            allowed = self._count_where(expr)
            if not allowed:
                return scores, ids
            if allowed * self.dim <= FILTER_EXACT_FLOATS_MILVUS:
                return self._search_allowed(q, k, expr, scores, ids)
            want = min(limit, allowed)
            # a filter passing a fraction f of the rows needs ~1/f times the candidates for k hits
            effort = min(max_effort, max(1, math.ceil(self._count / allowed)))
        todo = np.arange(len(q))
        while True:
            native = {"metric_type": "IP", "params": self._search_params(k, effort, p)}
            res = self._client.search(self.collection, data=q[todo], limit=limit, filter=expr, anns_field="vec",
                                      search_params=native,
                                      output_fields=["id"])
            lens = np.zeros(len(todo), np.int64)
            for pos, (row, hits) in enumerate(zip(todo.tolist(), res, strict=True)):
                m = min(len(hits), k)
                ids[row, :m] = [int(h["id"]) for h in hits[:m]]
                scores[row, :m] = [float(h["distance"]) for h in hits[:m]]
                ids[row, m:], scores[row, m:] = -1, -np.inf
                lens[pos] = m
            if want is None:
                short = lens < limit
                if not short.any():
                    break
                want = min(limit, self._count_where(expr))
            short = lens < want
            if not short.any() or effort >= max_effort:
                break
            todo = todo[short]
            effort = min(max_effort, effort * 4)
        return scores, ids

    def _search_allowed(self, q: np.ndarray, k: int, expr: str, scores: np.ndarray, ids: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over the few rows ``expr`` allows: their vectors read back and scored here."""
        rows = self._client.query(self.collection, filter=expr, output_fields=["id", "vec"])
        if not rows:
            return scores, ids
        row_ids = np.fromiter((r["id"] for r in rows), dtype=np.int64, count=len(rows))
        vecs = np.asarray([r["vec"] for r in rows], np.float32)
        d, pos = exact_search(q, vecs, k)
        m = d.shape[1]
        scores[:, :m] = np.where(pos >= 0, d, -np.inf)
        ids[:, :m] = np.where(pos >= 0, row_ids[np.where(pos >= 0, pos, 0)], -1)
        return scores, ids

    def _count_where(self, expr: str) -> int:
        res = self._client.query(self.collection, filter=expr, output_fields=["count(*)"])
        return int(res[0]["count(*)"]) if res else 0

    # -- params / stats -----------------------------------------------------------------------------
    def _on_params_changed(self) -> None:
        pass  # search params are read per query

    def memory_bytes(self) -> int:
        """Estimated bytes the Milvus server keeps resident for this collection (IMRS itself holds
        only the pointer): raw or coded vectors + id + index structure. bench_scale measures RSS."""
        n, d, p = self._count, self.dim, self._params
        per = {"HNSW": 4 * d + 8 * int(p["M"]) * 1.1, "IVF_SQ8": d, "IVF_PQ": int(p["m"]) * int(p["nbits"]) / 8,
               "DISKANN": d / 4}.get(self.native_type, 4 * d)
        return int(n * (per + 8 + 3 * 16))

    def stats(self) -> dict[str, Any]:
        return {"kind": self.kind, "dim": self.dim, "count": len(self), "slots": len(self), "indexed": len(self),
                "dead": 0, "loose": 0, "memory_bytes": self.memory_bytes(), "mapped": False,
                "uri": self.uri, "collection": self.collection, "index_type": self.native_type, "lite": self._lite}

    # -- persistence --------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Flush Milvus and write the pointer (URI, collection, index type, count) as meta.json."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._client.flush(self.collection)
        meta = {"format_version": FORMAT_VERSION, "kind": self.kind, "dim": self.dim, "count": len(self),
                "params": self.get_params(), "explicit_params": sorted(self._explicit),
                "state": {"uri": self.uri, "collection": self.collection, "index_type": self.native_type,
                          "checksum": f"{self._checksum:016x}"}}
        atomic_write_json(directory / META_FILE, meta)

    def get_params(self) -> dict[str, Any]:
        return {**self._params, "uri": self.uri, "collection": self.collection}

    @classmethod
    def _load(cls, directory: Path, meta: dict[str, Any], mmap: bool) -> VectorIndex:
        """Reconnect to the recorded collection and check it still holds what was recorded.

        ``meta["state"]`` may carry, from the caller: ``uri`` (the same vectors found elsewhere:
        a copied state folder's own Lite file), and ``verify``: ``"full"`` reads every row back and
        compares the checksum, ``"auto"`` (default) does so up to ``verify_rows`` rows, else the
        count alone is compared."""
        state = meta["state"]
        dim = int(meta["dim"])
        params = validate_params(cls.kind, dim, {**meta["params"], "uri": state["uri"],
                                                 "collection": state["collection"]})
        obj = cls(dim, {**auto_params(cls.kind, 0, dim), **params}, frozenset(meta.get("explicit_params", ())),
                  _create=False)
        if not obj._client.has_collection(obj.collection):
            raise SnapshotError(f"Milvus collection {obj.collection} is gone from {obj.uri}: rebuild the index")
        obj._client.load_collection(obj.collection)
        obj.native_type = str(state.get("index_type") or obj._choose_type(0))
        count = int(meta["count"])
        checksum = int(state["checksum"], 16) if state.get("checksum") else None
        if obj._refresh_count() != count:
            raise ContentMismatch(f"Milvus collection {obj.collection} at {obj.uri} holds {len(obj)} vectors, "
                                  f"the snapshot recorded {count}: it changed since")
        verify = state.get("verify", "auto")
        if verify == "full" or (verify == "auto" and count <= int(state.get("verify_rows", 10_000))):
            obj.verify(count, checksum)
        elif checksum is not None:
            obj._checksum = checksum
        return obj

    def location(self) -> dict[str, Any] | None:
        return {"uri": self.uri, "collection": self.collection, "index_type": self.native_type,
                "checksum": f"{self._checksum:016x}"}

    def close(self) -> None:
        """Release the client (Milvus Lite keeps its file locked while any client of it is open)."""
        self._client.close()

    # -- slot hooks: unused (Milvus keys rows by id itself), present to satisfy the base class ----------
    def _on_append(self, slots: np.ndarray, vecs: np.ndarray) -> None:
        raise AssertionError("milvus keeps no slot table")

    _on_dead = _on_append  # type: ignore[assignment]

    def _search_frozen(self, q: np.ndarray, k: int, mask: np.ndarray | None, params: dict[str, Any]
                       ) -> tuple[np.ndarray, np.ndarray]:
        raise AssertionError("milvus keeps no slot table")

    def _compact(self) -> None:
        raise AssertionError("milvus keeps no slot table")

    def _rebuild(self) -> None:
        raise AssertionError("milvus keeps no slot table")

    def _native_bytes(self) -> int:
        return 0

    def _save_native(self, path: Path) -> bool:
        return False

    def _load_native(self, path: Path, mmap: bool, state: dict[str, Any]) -> None:
        raise AssertionError("milvus keeps no native file")


def lite_path_of(index: VectorIndex) -> str | None:
    """The Milvus Lite folder an index lives in (None for servers and other kinds)."""
    uri = getattr(index, "uri", None)
    return os.path.abspath(uri) if isinstance(uri, str) and is_lite_uri(uri) else None
