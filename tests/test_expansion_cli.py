"""``imrs expand`` / ``imrs dynamic list`` / ``imrs prune`` / ``imrs search --expand`` end to end,
in-process (one model load for the file), against the loopback web server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imrs.cli import main
from imrs.collection import Collection
from tests.test_expansion import (
    BACKBONE,
    BASE_CLASSES,
    PER_CLASS,
    SUNFLOWER_QUERY,
    build_web_dir,
    counts,
    make_base,
    need,
    sun_urls,
)
from tests.webserver import LoopbackServer

N_BASE = len(BASE_CLASSES) * PER_CLASS


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackServer]:
    server = LoopbackServer(build_web_dir(tmp_path_factory.mktemp("web")), max_lifetime=600).start()
    try:
        yield server
    finally:
        server.stop()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def best_score(capsys: pytest.CaptureFixture[str], *query: str) -> tuple[float, list[dict[str, Any]]]:
    rc, out, err = run(capsys, "search", *query, "--json", "-k", "10")
    assert rc == 0, err
    rows = json.loads(out)["hits"]
    return rows[0]["score"], rows


@pytest.fixture
def indexed(tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    root = make_base(tmp_path / "collection")
    rc, out, err = run(capsys, "index", root, "--backbone", BACKBONE, "--indexer", "hnsw", "-q")
    assert rc == 0, err
    return root


def fresh(root: Path, home: Path) -> Collection:
    return Collection(root, BACKBONE, "hnsw", home=home)


def test_expand_cli_end_to_end(indexed: Path, home: Path, web: LoopbackServer, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    need(SUNFLOWER_QUERY)
    best0, _ = best_score(capsys, "--image", SUNFLOWER_QUERY)
    urls = tmp_path / "urls.txt"
    urls.write_text("\n".join([*sun_urls(web, 6), web.url("/photos/dup_small.jpg"), web.url("/status/404")]) + "\n")
    rc, out, err = run(capsys, "expand", "sunflower", "--urls-file", urls, "--allow-loopback", "-n", "5", "-q")
    assert rc == 0, err
    assert "'sunflower' -> dynamic_sunflower: 5 added" in out
    assert f"index holds {N_BASE + 5} vectors (5 dynamic)" in out
    best1, rows = best_score(capsys, "--image", SUNFLOWER_QUERY)
    assert best1 > best0 + 0.2 and rows[0]["source"] == "dynamic"

    rc, out, _ = run(capsys, "dynamic", "list")
    assert rc == 0 and "sunflower" in out and "5 image(s)" in out
    rc, out, _ = run(capsys, "dynamic", "list", "--term", "Sunflower", "--json")
    listed = json.loads(out)
    assert len(listed) == 5 and all(r["source_url"].startswith(web.base_url) for r in listed)

    base_id = next(iter(fresh(indexed, home).catalog.ids_set("base")))
    rc, out, err = run(capsys, "prune", "--ids", base_id, listed[0]["id"])
    assert rc == 2 and err.startswith("imrs: error: refusing to prune base image(s)") and err.count("\n") == 1
    for hostile in ("../..", "airplanes", "dynamic_../../etc"):
        rc, _, err = run(capsys, "prune", "--term", hostile)
        assert rc == 2 and "no dynamic images" in err
    rc, _, err = run(capsys, "prune", "--ids", "not-a-number")
    assert rc == 2 and "not an image id" in err
    assert counts(fresh(indexed, home)) == (N_BASE + 5,) * 3

    rc, out, _ = run(capsys, "prune", "--term", "sunflower", "--dry-run")
    assert rc == 0 and out.count("would remove") == 5
    rc, out, err = run(capsys, "prune", "--term", "sunflower")
    assert rc == 0, err
    assert "removed 5 dynamic image(s) (5 file(s) deleted)" in out
    assert counts(fresh(indexed, home)) == (N_BASE,) * 3
    assert all(p.is_file() for p in indexed.rglob("*.jpg"))
    best2, _ = best_score(capsys, "--image", SUNFLOWER_QUERY)
    assert best2 == pytest.approx(best0, abs=1e-4)


def test_expand_cli_wikimedia_and_batch(indexed: Path, home: Path, web: LoopbackServer, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "expand", "sunflower", "-n", "2", "--provider", "wikimedia",
                       "--wikimedia-api", web.api_url, "--allow-loopback", "--json")
    assert rc == 0, err
    report = json.loads(out)["terms"][0]
    assert report["added"] == 2 and report["report"]["providers"][0]["provider"] == "wikimedia"

    terms = tmp_path / "terms.csv"
    terms.write_text("term,notes\nstrawberry,red\nsunflower,again\nnothing here,\n")
    urls = tmp_path / "by-term.tsv"
    lines = [f"strawberry\t{web.url(f'/photos/strawberry_0{i}.jpg')}" for i in range(3)]
    lines += [f"sunflower\t{u}" for u in sun_urls(web)[4:6]]
    urls.write_text("\n".join(lines) + "\n")
    rc, out, err = run(capsys, "expand", "--csv", terms, "--urls-file", urls, "--allow-loopback", "-n", "3",
                       "--max-side", "128", "--quality", "70")
    assert rc == 0, err
    assert "terms" in err and "download" in err and "expanding 'strawberry'" in err  # progress bars, on stderr
    assert "'strawberry' -> dynamic_strawberry: 3 added" in out
    assert "'sunflower' -> dynamic_sunflower: 2 added" in out
    assert "3 term(s): 5 image(s) added" in out
    coll = fresh(indexed, home)
    assert counts(coll) == (N_BASE + 7,) * 3
    rec = next(r for r in coll.catalog.iter_records(source="dynamic", slug="strawberry"))
    assert rec.width is not None and rec.height is not None and max(rec.width, rec.height) <= 128

    # Without --allow-loopback the same URLs are refused, per URL, not fatally.
    plain = tmp_path / "plain.txt"
    plain.write_text(f"{web.url('/photos/strawberry_03.jpg')}\n{web.url('/photos/strawberry_04.jpg')}\n")
    rc, out, err = run(capsys, "expand", "berries", "--urls-file", plain, "-n", "2", "-q")
    assert rc == 0, err
    assert "0 added, 0 duplicate(s), 2 failed" in out and "failures: " in out and "127.0.0.1" in out


def test_search_expand(indexed: Path, home: Path, web: LoopbackServer, tmp_path: Path,
                       capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    urls = tmp_path / "urls.tsv"
    urls.write_text("\n".join(f"strawberry\t{web.url(f'/photos/strawberry_0{i}.jpg')}" for i in range(5)) + "\n")
    monkeypatch.setenv("IMRS_EXPAND_URLS_FILE", str(urls))
    monkeypatch.setenv("IMRS_EXPAND_ALLOW_LOOPBACK", "1")
    # Text on an image-only backbone: judged on textmap's class-space scores.
    rc, out, err = run(capsys, "search", "--text", "strawberry", "--expand", "-k", "5")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("before: coverage weak: best class-space score") and "[textmap scores" in lines[0]
    assert lines[1].startswith("grew: 'strawberry' -> dynamic_strawberry: 5 added")
    assert lines[2].startswith("coverage ok")
    table = out.split("coverage ok", 1)[1]
    assert table.count("strawberry") >= 4 and "dynamic" in table
    rc, out, _ = run(capsys, "search", "--text", "strawberry", "--expand", "-k", "5")
    assert rc == 0 and out.startswith("coverage ok") and "grew" not in out  # strong now: nothing to do
    # the verdict is printed (and in --json) without --expand too
    rc, out, _ = run(capsys, "search", "--text", "a grand piano", "--json", "-k", "3")
    data = json.loads(out)
    assert rc == 0 and data["verdict"]["weak"] and data["growth"] is None and len(data["hits"]) == 3


def test_expand_cli_errors(indexed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "expand")
    assert rc == 2 and "give at least one TERM" in err
    rc, _, err = run(capsys, "expand", "x", "--provider", "wikimedia", "--wikimedia-api",
                     "http://127.0.0.1:9/w/api.php", "-q", "--allow-loopback")
    assert rc == 2
    assert err.startswith("imrs: error: no image provider answered for 'x': wikimedia: Wikimedia API at "
                          "127.0.0.1:9 unreachable") and err.count("\n") == 1
    # The API call goes through the same SSRF guard as downloads: loopback only when allowed.
    rc, _, err = run(capsys, "expand", "x", "--provider", "wikimedia", "--wikimedia-api",
                     "http://127.0.0.1:9/w/api.php", "-q")
    assert rc == 2 and "refused: blocked: loopback address 127.0.0.1" in err and err.count("\n") == 1
    rc, _, err = run(capsys, "expand", "x", "--urls-file", "/nonexistent/urls.txt")
    assert rc == 2 and "URL list /nonexistent/urls.txt not found" in err
    for bad in (["-n", "0"], ["--quality", "101"], ["--phash", "-1"]):
        with pytest.raises(SystemExit) as exc:
            main(["expand", "x", *bad])
        assert exc.value.code == 2
    with pytest.raises(SystemExit):
        main(["prune"])
    rc, out, _ = run(capsys, "dynamic", "list")
    assert rc == 0 and "no dynamic images" in out
