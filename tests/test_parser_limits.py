"""Parsers at their edges: ``--where`` filters bound their depth and size and build flat expressions
that SQLite and Milvus accept whatever the chain's length; snapshot names refuse control characters
and the live index's reserved name."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from imrs import snapshot as snap
from imrs.errors import SnapshotError
from imrs.filters import MAX_DEPTH, MAX_TERMS, Compare, FilterError, evaluate, parse, to_milvus, to_sql

ROWS = [{"source": s, "label": f"l{i}", "term": t} for i in range(120) for s, t in (("base", ""), ("dynamic", "x"))]


def _sqlite_matches(expr: str) -> list[int]:
    con = sqlite3.connect(":memory:")
    con.execute("CREATE TABLE images (id INTEGER, source TEXT, label TEXT, term TEXT)")
    con.executemany("INSERT INTO images VALUES (?,?,?,?)",
                    [(i, r["source"], r["label"], r["term"] or None) for i, r in enumerate(ROWS)])
    sql, args = to_sql(parse(expr))
    return [r[0] for r in con.execute(f"SELECT id FROM images WHERE {sql} ORDER BY id", args)]


def test_deep_nesting_is_one_line_not_a_recursion_error() -> None:
    deep = "(" * 200 + "label == 'a'" + ")" * 200  # 416 characters, under the length cap
    with pytest.raises(FilterError, match=f"deeper than {MAX_DEPTH}"):
        parse(deep)
    with pytest.raises(FilterError, match="deeper"):
        parse("not " * 100 + "label == 'a'")
    ok = "(" * MAX_DEPTH + "label == 'l3'" + ")" * MAX_DEPTH
    assert _sqlite_matches(ok) == [6, 7]


@pytest.mark.parametrize("n", [100, 245])
def test_long_or_chains_run_on_sqlite_and_stay_shallow(n: int) -> None:
    """100 alternatives used to overflow SQLite's parser stack (a left-deep tree of parentheses)."""
    expr = "or ".join(f"label=='l{i}'" for i in range(n))
    want = [i for i, r in enumerate(ROWS) if evaluate(parse(expr), r)]
    assert _sqlite_matches(expr) == want == list(range(min(n, 120) * 2))
    assert to_milvus(parse(expr)).count("(") <= 2  # one IN list, not 245 nested expressions
    mixed = " or ".join(f"(label=='l{i}' and source=='dynamic')" for i in range(100))
    assert _sqlite_matches(mixed) == [2 * i + 1 for i in range(100)]
    assert max(_depths(to_milvus(parse(mixed)))) <= 10  # balanced: depth ~log2(100), not 100
    assert max(_depths(to_sql(parse(mixed))[0])) <= 10


def _depths(text: str) -> list[int]:
    d, out = 0, [0]
    for ch in text:
        d += ch == "("
        d -= ch == ")"
        out.append(d)
    return out


def test_too_many_conditions_is_one_line() -> None:
    expr = " or ".join(f"label=='{i}'" for i in range(MAX_TERMS + 1))
    with pytest.raises(FilterError, match=f"more than {MAX_TERMS} conditions"):
        parse(expr)


def test_grouping_keeps_meaning() -> None:
    for expr in ["label == 'l1' or label == 'l2' or source == 'base'",
                 "label != 'l1' and label not in ['l2', 'l3'] and source != 'base'",
                 "not (label in ['l1'] or label == 'l1') and term != 'x'",
                 "label in [] or label == 'l5'", "label not in [] and label != 'l5' and label != 'l6'"]:
        node = parse(expr)
        want = [i for i, r in enumerate(ROWS) if evaluate(node, r)]
        assert _sqlite_matches(expr) == want, expr


def test_milvus_escapes_every_value_it_must(tmp_path: Path) -> None:
    """Against Milvus Lite: a raw CR in a value used to end the parse ("unterminated string literal")."""
    pytest.importorskip("milvus_lite")
    from pymilvus import DataType, MilvusClient

    client = MilvusClient(str(tmp_path / "m.db"))
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=2)
    schema.add_field("label", DataType.VARCHAR, max_length=64)
    params = client.prepare_index_params()
    params.add_index("v", index_type="FLAT", metric_type="IP")
    client.create_collection("t", schema=schema, index_params=params)
    values = ["a\rb", "x\x01y", 'q"\\z', "n\nl", "t\tb", "plain", "é\u2028", "it's"]
    client.insert("t", [{"id": i, "v": [1.0, 0.0], "label": v} for i, v in enumerate(values)])
    for i, v in enumerate(values):
        got = client.query("t", filter=to_milvus(Compare("label", "==", v)), output_fields=["id"])
        assert [r["id"] for r in got] == [i], repr(v)
    got = client.query("t", filter=to_milvus(parse("label in ['a\\rb', 'plain']")), output_fields=["id"])
    assert sorted(r["id"] for r in got) == [0, 5]
    client.close()


class _TinyIndex:
    kind, dim = "flat_ip", 2

    def save(self, path: Path) -> None:
        Path(path).mkdir()

    def location(self) -> None:
        return None

    def ids(self) -> np.ndarray:
        return np.zeros(0, np.int64)

    def get_params(self) -> dict[str, int]:
        return {}

    def __len__(self) -> int:
        return 0


@pytest.mark.parametrize("name", ["s1\n", "a\rb", "x\x00", "", "../up", "live-efficientnet_lite0-hnsw", "LIVE-x"])
def test_snapshot_names_refuse_control_characters_and_reserved_names(name: str, tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="invalid snapshot name|reserved"):
        snap.check_user_name(name)
    assert not list(tmp_path.iterdir())


def test_snapshot_name_with_trailing_newline_is_refused_on_save(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="invalid snapshot name"):
        snap.save_snapshot(tmp_path, "s1\n", _TinyIndex(), "bb")  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())
    snap.save_snapshot(tmp_path, "s1", _TinyIndex(), "bb")  # type: ignore[arg-type]
    assert snap.snapshot_exists(tmp_path, "s1")
