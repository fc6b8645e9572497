"""SQLite catalog: the one record of which images exist, where they came from, and what they look like.

Why SQLite (as rclip does): a single file, transactional, WAL lets the UI read while an expansion
writes, and it needs no pickle. Rows are keyed by the stable 64-bit id from ``imrs.ids`` so the
catalog, the NPZ caches and the vector index agree without a translation table.

One idea (the catalog table, its record type and the damage checks that guard every query), so one
module, although it sits at about 500 lines.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import inspect
import logging
import sqlite3
import threading
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import IMRSError
from .ids import display_path, from_storage_text, normalise_relpath, stable_id, storage_text

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SOURCES = ("base", "dynamic")
#: kv key of a random token replaced in the same transaction as every change to the set of images:
#: ``imrs.reconcile`` compares it with the token its commit record saw, one query instead of O(n).
GENERATION_KEY = "generation"
METADATA_KEY = "metadata_generation"  # bumped by metadata (CSV) imports: the texts changed

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id          INTEGER PRIMARY KEY,
    relpath     TEXT    NOT NULL UNIQUE,
    label       TEXT    NOT NULL DEFAULT '',
    source      TEXT    NOT NULL DEFAULT 'base' CHECK (source IN ('base', 'dynamic')),
    term        TEXT,
    slug        TEXT,
    source_url  TEXT,
    provider    TEXT,
    title       TEXT,
    license     TEXT,
    author      TEXT,
    page_url    TEXT,
    phash       INTEGER,
    width       INTEGER,
    height      INTEGER,
    mtime       REAL,
    size        INTEGER,
    added_at    TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS images_source ON images(source);
CREATE INDEX IF NOT EXISTS images_slug ON images(slug);
CREATE INDEX IF NOT EXISTS images_label ON images(label);
CREATE TABLE IF NOT EXISTS extra (
    id    INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    key   TEXT    NOT NULL,
    value TEXT,
    PRIMARY KEY (id, key)
);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT);
"""


class CatalogDamagedError(IMRSError):
    """The catalog file is not a whole SQLite database (a garbage page, a truncated or foreign file).

    ``imrs index`` rebuilds it from the folder, the web images' provenance sidecars and the caches;
    snapshots hold copies to restore from."""


def is_damage(exc: BaseException) -> bool:
    """Whether an sqlite3 error means a damaged file (not a busy one or a constraint)."""
    if isinstance(exc, (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError)):
        return False
    text = str(exc).lower()
    return isinstance(exc, sqlite3.DatabaseError) and (
        type(exc) is sqlite3.DatabaseError or "malformed" in text or "not a database" in text
        or "corrupt" in text)


def _damaged(path: Path, exc: BaseException) -> CatalogDamagedError:
    return CatalogDamagedError(f"catalog {path} is damaged ({exc}): `imrs index` rebuilds it from the folder, "
                               "the web images' sidecars and the caches, or `imrs snapshot load NAME` restores one")


def _guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a damaged-file sqlite3 error inside a Catalog method into one CatalogDamagedError line."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(self: Catalog, *args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from fn(self, *args, **kwargs)
            except sqlite3.DatabaseError as exc:
                if is_damage(exc):
                    raise _damaged(self.path, exc) from exc
                raise
        return gen

    @functools.wraps(fn)
    def call(self: Catalog, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            if is_damage(exc):
                raise _damaged(self.path, exc) from exc
            raise
    return call


def clean_label(folder: str) -> str:
    """Class folder name -> label: ``001.ak47`` -> ``ak47`` (Caltech-256 style numeric prefixes)."""
    name = folder.strip()
    head, sep, tail = name.partition(".")
    if sep and head.isdigit() and tail:
        name = tail
    return name


def label_for(relpath: str) -> str:
    """The first folder's name, printable (a label is shown and compared as text, never opened)."""
    parts = normalise_relpath(relpath).split("/")
    return clean_label(display_path(parts[0])) if len(parts) > 1 else ""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class ImageRecord:
    id: int
    relpath: str
    label: str = ""
    source: str = "base"
    term: str | None = None
    slug: str | None = None
    source_url: str | None = None
    provider: str | None = None
    title: str | None = None
    license: str | None = None
    author: str | None = None
    page_url: str | None = None
    phash: int | None = None
    width: int | None = None
    height: int | None = None
    mtime: float | None = None
    size: int | None = None
    added_at: str = field(default_factory=now_iso)
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def for_path(cls, relpath: str, **kw: Any) -> ImageRecord:
        rel = normalise_relpath(relpath)
        kw.setdefault("label", label_for(rel))
        return cls(id=stable_id(rel), relpath=rel, **kw)


_COLUMNS = [f.name for f in fields(ImageRecord) if f.name != "extra"]


def _to_db(column: str, value: Any) -> Any:
    """SQLite (through sqlite3) only takes valid UTF-8: relpaths get their reversible storage
    spelling, any other text with undecodable bytes its printable one."""
    if column == "relpath":
        return storage_text(value)
    if isinstance(value, str):
        return display_path(value) if any(0xDC80 <= ord(c) <= 0xDCFF for c in value) else value
    return value


def _record(row: sqlite3.Row) -> ImageRecord:
    values = {c: row[c] for c in _COLUMNS}
    values["relpath"] = from_storage_text(values["relpath"])
    return ImageRecord(**values)


def _relpath_candidates(raw: str) -> list[str]:
    """Spellings a metadata CSV may use for one file: as written, then NFC / NFD (a list typed or
    exported on another OS), then with Windows backslashes as separators."""
    out = [raw]
    for form in ("NFC", "NFD"):
        out.append(unicodedata.normalize(form, raw))
    if "\\" in raw:
        out.append(raw.replace("\\", "/"))
    return list(dict.fromkeys(out))


class Catalog:
    """Thread-safe access to one catalog file; each thread gets its own connection (sqlite3 rule)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        try:
            self._con().executescript(_SCHEMA)  # executescript manages its own transaction
            with self._tx() as con:
                con.execute("INSERT OR IGNORE INTO kv(key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        except sqlite3.DatabaseError as exc:
            self.close()
            if is_damage(exc):
                raise _damaged(self.path, exc) from exc
            raise

    def ids_where(self, where_sql: str, args: Sequence[str]) -> Iterator[int]:
        """Ids of the rows matching a WHERE clause that :func:`imrs.filters.to_sql` made (with its
        ``?`` arguments), ascending and streamed; damage becomes one line as everywhere else."""
        try:
            for (image_id,) in self._con().execute(f"SELECT id FROM images WHERE {where_sql} ORDER BY id", list(args)):
                yield image_id
        except sqlite3.DatabaseError as exc:
            if is_damage(exc):
                raise _damaged(self.path, exc) from exc
            raise

    def integrity_problem(self) -> str | None:
        """``PRAGMA quick_check`` (O(pages), run by ``imrs index`` and repairs, never per search):
        None when whole, else SQLite's first complaint."""
        try:
            rows = self._con().execute("PRAGMA quick_check(1)").fetchall()
        except sqlite3.DatabaseError as exc:
            return str(exc)
        first = str(rows[0][0]) if rows else "no answer"
        return None if first == "ok" else " ".join(first.replace("*", "").split())  # one line

    # -- connections ---------------------------------------------------------------------------
    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            try:
                con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("PRAGMA synchronous=NORMAL")
                con.execute("PRAGMA foreign_keys=ON")
            except sqlite3.DatabaseError as exc:
                with contextlib.suppress(Exception):
                    con.close()  # type: ignore[union-attr]
                raise _damaged(self.path, exc) from exc
            con.row_factory = sqlite3.Row
            self._local.con = con
        return con

    class _Tx:
        def __init__(self, con: sqlite3.Connection):
            self.con = con

        def __enter__(self) -> sqlite3.Connection:
            self.con.execute("BEGIN IMMEDIATE")
            return self.con

        def __exit__(self, exc_type: Any, *_: Any) -> None:
            self.con.execute("ROLLBACK" if exc_type else "COMMIT")

    def _tx(self) -> Catalog._Tx:
        return Catalog._Tx(self._con())

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    # -- writes --------------------------------------------------------------------------------
    def upsert(self, records: Iterable[ImageRecord]) -> int:
        """Insert or replace rows (and their extra metadata) in one transaction."""
        recs = list(records)
        if not recs:
            return 0
        for r in recs:
            if r.source not in SOURCES:
                raise ValueError(f"source must be one of {SOURCES}, not {r.source!r}")
        placeholders = ",".join("?" for _ in _COLUMNS)
        update = ",".join(f"{c}=excluded.{c}" for c in _COLUMNS if c != "id")
        sql = (f"INSERT INTO images({','.join(_COLUMNS)}) VALUES ({placeholders}) "
               f"ON CONFLICT(id) DO UPDATE SET {update}")
        with self._tx() as con:
            con.executemany(sql, [tuple(_to_db(c, getattr(r, c)) for c in _COLUMNS) for r in recs])
            _bump_generation(con)
            extra_rows = [(r.id, k, str(v)) for r in recs for k, v in r.extra.items()]
            if extra_rows:
                con.executemany("INSERT OR REPLACE INTO extra(id, key, value) VALUES (?,?,?)", extra_rows)
        return len(recs)

    def delete(self, ids: Iterable[int], allow_base: bool = False) -> int:
        """Delete rows. Base rows are refused unless ``allow_base`` (only the folder rescan may do that,
        after the file itself is gone: the catalog must not outlive the user's files, nor the reverse)."""
        id_list = [int(i) for i in ids]
        if not id_list:
            return 0
        with self._tx() as con:
            if not allow_base:
                base = _chunked_query(con, "SELECT id FROM images WHERE source='base' AND id IN ({})", id_list)
                if base:
                    raise IMRSError(f"refusing to remove {len(base)} base image(s); only dynamic images can be removed")
            n = 0
            for chunk in _chunks(id_list):
                cur = con.execute(f"DELETE FROM images WHERE id IN ({','.join('?' * len(chunk))})", chunk)
                n += cur.rowcount
            if n:
                _bump_generation(con)
        return n

    def set_kv(self, key: str, value: str) -> None:
        with self._tx() as con:
            con.execute("INSERT OR REPLACE INTO kv(key, value) VALUES (?, ?)", (key, value))

    def generation(self) -> str:
        """The token of the current set of images ('' for a catalog never written)."""
        row = self._con().execute("SELECT value FROM kv WHERE key=?", (GENERATION_KEY,)).fetchone()
        return str(row[0]) if row and row[0] is not None else ""

    def new_generation(self) -> None:
        """Mark the image set as changed by other means than upsert/delete (a restored copy)."""
        with self._tx() as con:
            _bump_generation(con)

    def set_phash(self, pairs: Iterable[tuple[int, int]]) -> None:
        with self._tx() as con:
            con.executemany("UPDATE images SET phash=? WHERE id=?", [(int(h), int(i)) for i, h in pairs])

    def import_metadata_csv(self, csv_path: str | Path, root: str | Path | None = None) -> int:
        """Attach extra columns (title, caption, ...) from a CSV with a ``path`` column to known images.

        Paths may be relative to the collection root or absolute; unknown paths are skipped and counted
        in the log, not fatal, because metadata files are often exported from elsewhere.
        """
        rows: list[tuple[int, str, str]] = []
        skipped = 0
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "path" not in reader.fieldnames:
                raise IMRSError(f"{csv_path}: metadata CSV needs a 'path' column (found {reader.fieldnames})")
            known = self.ids_set()
            for row in reader:
                raw = row.pop("path") or ""
                i = None
                for cand in _relpath_candidates(raw):
                    try:
                        rel = (normalise_relpath(cand, root) if (root and Path(cand).is_absolute())
                               else normalise_relpath(cand))
                    except ValueError:
                        continue
                    if stable_id(rel) in known:
                        i = stable_id(rel)
                        break
                if i is None:
                    skipped += 1
                    continue
                rows.extend((i, k, v) for k, v in row.items() if k and v not in (None, ""))
        with self._tx() as con:
            con.executemany("INSERT OR REPLACE INTO extra(id, key, value) VALUES (?,?,?)", rows)
            _bump_metadata(con)
        if skipped:
            log.warning("metadata CSV %s: %d row(s) did not match an indexed image", csv_path, skipped)
        return len({r[0] for r in rows})

    # -- reads ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._con().execute("SELECT COUNT(*) FROM images").fetchone()[0])

    def count(self, source: str | None = None) -> int:
        if source is None:
            return len(self)
        return int(self._con().execute("SELECT COUNT(*) FROM images WHERE source=?", (source,)).fetchone()[0])

    def relpaths_by_id(self) -> dict[int, str]:
        """id -> relpath of every image: what reconciliation compares caches and index against."""
        return {r[0]: r[1] for r in self._con().execute("SELECT id, relpath FROM images")}

    def ids_set(self, source: str | None = None) -> set[int]:
        sql, args = "SELECT id FROM images", ()
        if source:
            sql, args = sql + " WHERE source=?", (source,)
        return {r[0] for r in self._con().execute(sql, args)}

    def get(self, image_id: int) -> ImageRecord | None:
        found = self.get_many([image_id])
        return found.get(int(image_id))

    def get_many(self, ids: Sequence[int]) -> dict[int, ImageRecord]:
        id_list = [int(i) for i in ids]
        if not id_list:
            return {}
        con = self._con()
        out: dict[int, ImageRecord] = {}
        for chunk in _chunks(id_list):
            q = ",".join("?" * len(chunk))
            for row in con.execute(f"SELECT * FROM images WHERE id IN ({q})", chunk):
                out[row["id"]] = _record(row)
            for row in con.execute(f"SELECT id, key, value FROM extra WHERE id IN ({q})", chunk):
                out[row["id"]].extra[row["key"]] = row["value"]
        return out

    def iter_records(self, source: str | None = None, slug: str | None = None) -> Iterator[ImageRecord]:
        sql, args = "SELECT * FROM images WHERE 1=1", []
        if source:
            sql += " AND source=?"
            args.append(source)
        if slug:
            sql += " AND slug=?"
            args.append(slug)
        for row in self._con().execute(sql + " ORDER BY relpath", args).fetchall():
            yield _record(row)

    def file_stats(self) -> dict[str, tuple[int, float | None, int | None]]:
        """relpath -> (id, mtime, size): what an incremental folder scan compares against."""
        rows = self._con().execute("SELECT relpath, id, mtime, size FROM images WHERE source='base'")
        return {from_storage_text(r[0]): (r[1], r[2], r[3]) for r in rows}

    def labels(self) -> list[str]:
        rows = self._con().execute("SELECT DISTINCT label FROM images WHERE label != '' ORDER BY label")
        return [r[0] for r in rows]

    def label_counts(self) -> dict[str, int]:
        """label -> number of images: how big a concept the collection holds (coverage needs it)."""
        rows = self._con().execute("SELECT label, COUNT(*) FROM images WHERE label != '' GROUP BY label")
        return {r[0]: int(r[1]) for r in rows}

    def ids_by_label(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for i, label in self._con().execute("SELECT id, label FROM images WHERE label != ''"):
            out.setdefault(label, []).append(int(i))
        return out

    def phashes(self) -> tuple[list[int], list[int]]:
        rows = self._con().execute("SELECT id, phash FROM images WHERE phash IS NOT NULL").fetchall()
        return [r[0] for r in rows], [r[1] for r in rows]

    def phash_fingerprint(self) -> tuple[int, float, float, float]:
        """A cheap summary of every (id, pHash) pair (one aggregate query, ~20 ms at 100k rows), so
        a cached hash index can tell that nothing changed without reading every row."""
        row = self._con().execute(
            "SELECT COUNT(*), TOTAL(phash), TOTAL(id), TOTAL((id % 1000003) * (phash % 1000033)) "
            "FROM images WHERE phash IS NOT NULL").fetchone()
        return tuple(row)  # type: ignore[return-value]

    def content_fingerprint(self) -> str:
        """Changes whenever rows or their texts change (the generation, bumped by every upsert and
        delete, a token bumped by metadata imports, and row aggregates): cheap enough for a cache of
        the catalog's texts to check on every query."""
        con = self._con()
        row = con.execute("SELECT value FROM kv WHERE key=?", (METADATA_KEY,)).fetchone()
        version = f"{self.generation()}/{row[0] if row else ''}"
        a = con.execute(
            "SELECT COUNT(*), TOTAL(id % 1000003), TOTAL(length(relpath) + length(label) + "
            "length(coalesce(title, '')) + length(coalesce(term, ''))), TOTAL(coalesce(mtime, 0)) "
            "FROM images").fetchone()
        b = con.execute("SELECT COUNT(*), TOTAL(length(key) + length(coalesce(value, ''))), "
                        "TOTAL(id % 1000033) FROM extra").fetchone()
        return "-".join(f"{x:.6g}" if isinstance(x, float) else str(x) for x in (version, *a, *b))

    def dynamic_terms(self) -> list[tuple[str, str, int]]:
        """(slug, term, count) for every dynamic group, largest first."""
        rows = self._con().execute(
            "SELECT slug, MAX(term), COUNT(*) AS n FROM images WHERE source='dynamic' "
            "GROUP BY slug ORDER BY n DESC, slug")
        return [(r[0], r[1], r[2]) for r in rows]

    def backup_to(self, dest: str | Path) -> None:
        """Consistent copy while others may be writing (SQLite online backup, not a file copy)."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        target = sqlite3.connect(dest)
        try:
            self._con().backup(target)
        finally:
            target.close()

    def as_dicts(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        recs = self.get_many(ids)
        return [asdict(recs[i]) for i in ids if i in recs]


_UNGUARDED = ("guard", "integrity_problem", "_con", "_tx", "close")
for _name, _fn in list(vars(Catalog).items()):
    if inspect.isfunction(_fn) and (_name == "__len__" or not _name.startswith("__")) and _name not in _UNGUARDED:
        setattr(Catalog, _name, _guarded(_fn))


def _bump_generation(con: sqlite3.Connection) -> None:
    con.execute("INSERT OR REPLACE INTO kv(key, value) VALUES (?, ?)", (GENERATION_KEY, uuid.uuid4().hex))


def _bump_metadata(con: sqlite3.Connection) -> None:
    """Inside a write transaction: the images' extra texts changed (a metadata import)."""
    con.execute("INSERT OR REPLACE INTO kv(key, value) VALUES (?, ?)", (METADATA_KEY, uuid.uuid4().hex))


def _chunks(seq: list[int], size: int = 900) -> Iterator[list[int]]:
    for i in range(0, len(seq), size):
        yield seq[i:i + size]


def _chunked_query(con: sqlite3.Connection, sql: str, ids: list[int]) -> list[int]:
    out: list[int] = []
    for chunk in _chunks(ids):
        out += [r[0] for r in con.execute(sql.format(",".join("?" * len(chunk))), chunk)]
    return out
