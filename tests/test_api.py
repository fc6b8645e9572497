"""``imrs serve`` for real: the server runs as its own process on a loopback port (uvicorn, the real
EfficientNet-Lite0, FAISS, SQLite), growth downloads from the suite's loopback web server, and the
tests talk to it with httpx. The OpenAPI contract is fuzzed with schemathesis against the same
running server."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from imrs.api.keys import KeyStore
from tests.conftest import PHOTOS, REPO, caltech_subset
from tests.webserver import LoopbackServer, bomb_png, mid_bomb_png

BACKBONE = "efficientnet_lite0"
CLASSES = ["sunflower", "airplanes", "Leopards", "watch"]
PROBLEM = "application/problem+json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def imrs(*args: str, home: Path, env: dict[str, str] | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imrs.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO), "IMRS_HOME": str(home),
                                                **(env or {})})


@dataclass
class Server:
    base: str
    proc: subprocess.Popen
    log: Path

    def client(self, key: str | None = None, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=60.0, **kw)


@contextlib.contextmanager
def serving(root: Path, home: Path, env: dict[str, str], *args: str) -> Iterator[Server]:
    port = free_port()
    log = home / f"serve-{port}.log"
    home.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "imrs.cli", "serve", "--root", str(root), "--backbone", BACKBONE,
                                 "--indexer", "hnsw", "--port", str(port), *args], cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(REPO), "IMRS_HOME": str(home), **env})
    server = Server(f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited: {log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{server.base}/v1/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"server did not start: {log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Api:
    server: Server
    root: Path
    home: Path
    web: LoopbackServer
    write_key: str
    read_key: str

    def w(self) -> httpx.Client:
        return self.server.client(self.write_key)

    def r(self) -> httpx.Client:
        return self.server.client(self.read_key)


def make_collection(root: Path) -> Path:
    for src in caltech_subset(CLASSES, 6):
        dst = root / src.parent.name / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(src)
    return root


def growth_env(web: LoopbackServer) -> dict[str, str]:
    return {"IMRS_EXPAND_PROVIDER": "wikimedia", "IMRS_WIKIMEDIA_API": web.api_url, "IMRS_EXPAND_ALLOW_LOOPBACK": "1",
            "IMRS_EXPAND_N": "2"}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, web_server: LoopbackServer) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("api")
    root, home = make_collection(tmp / "collection"), tmp / "home"
    done = imrs("index", str(root), "--backbone", BACKBONE, "--indexer", "hnsw", home=home)
    assert done.returncode == 0, done.stderr
    keys = KeyStore(home)
    write_key, read_key = keys.add("tests-writer", ("read", "write")), keys.add("tests-reader", ("read",))
    # two workers: every test also runs against the shared job queue and the reload after a commit
    with serving(root, home, growth_env(web_server), "--rate", "0", "--workers", "2", "--timeout", "6") as server:
        yield Api(server, root, home, web_server, write_key, read_key)


def wait_job(client: httpx.Client, job_id: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not end")


def assert_problem(resp: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    body = resp.json()
    assert body["status"] == status and body["title"] and "\n" not in body["detail"]
    for word in words:
        assert word in body["detail"], body["detail"]
    return body


# -- binding and keys ------------------------------------------------------------------------------------
def test_public_bind_needs_a_key(tmp_path: Path) -> None:
    out = imrs("serve", "--host", "0.0.0.0", "--root", str(tmp_path), home=tmp_path / "home", timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]  # one line, no traceback
    assert "refusing to listen on 0.0.0.0 without an API key" in out.stderr


def test_keys_are_stored_hashed_and_revocable(api: Api) -> None:
    out = imrs("serve", "keys", "add", "ci-bot", "--scope", "read", home=api.home, timeout=120)
    assert out.returncode == 0, out.stderr
    key = out.stdout.splitlines()[0].strip()
    stored = (api.home / "api_keys.json").read_text()
    assert key.startswith("imrs_") and key.split("_", 2)[2] not in stored and "ci-bot" in stored
    assert oct((api.home / "api_keys.json").stat().st_mode)[-3:] == "600"
    listed = imrs("serve", "keys", "list", "--json", home=api.home, timeout=120)
    assert "ci-bot" in [k["name"] for k in json.loads(listed.stdout)]
    with api.server.client(key) as c:
        assert c.get("/v1/info").status_code == 200
        assert imrs("serve", "keys", "revoke", "ci-bot", home=api.home, timeout=120).returncode == 0
        assert_problem(c.get("/v1/info"), 401, "revoked")  # the running server reads the change


# -- search ------------------------------------------------------------------------------------------------
def test_text_search_answers_like_the_cli(api: Api) -> None:
    with api.r() as c:
        resp = c.post("/v1/search", json={"text": "sunflower", "k": 5})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert [h["rank"] for h in body["hits"]] == [1, 2, 3, 4, 5]
    assert body["hits"][0]["label"] == "sunflower" and body["verdict"]["weak"] is False
    assert body["verdict"]["reason"] and body["terms"][0]["term"] == "sunflower"
    assert {"encode", "search", "total"} <= set(body["timings"]) and body["index"]["images"] == 24
    assert all("path" not in h for h in body["hits"])  # server paths stay on the server
    # the CLI's --json answer for the same query: the same hits and verdict
    cli = imrs("search", "--text", "sunflower", "-k", "5", "--json", "--root", str(api.root), "--backbone", BACKBONE,
               home=api.home)
    assert cli.returncode == 0, cli.stderr
    want = json.loads(cli.stdout)
    assert [h["id"] for h in want["hits"]] == [h["id"] for h in body["hits"]]
    assert (want["verdict"]["label"], want["verdict"]["reason"]) == (body["verdict"]["label"],
                                                                    body["verdict"]["reason"])


def test_image_searches_by_id_upload_and_url(api: Api) -> None:
    with api.r() as c:
        first = c.post("/v1/search", json={"text": "watch", "k": 1, "where": "label == 'watch'"}).json()["hits"][0]
        by_id = c.post("/v1/search", json={"image_id": first["id"], "k": 5}).json()
        assert first["id"] not in [h["id"] for h in by_id["hits"]]  # the query image itself is left out
        assert by_id["hits"][0]["label"] == "watch" and by_id["query"]["image_id"] == first["id"]
        original = c.get(first["original"])
        assert original.status_code == 200
        upload = c.post("/v1/search/image", files={"file": ("q.jpg", original.content, "image/jpeg")},
                        data={"k": "5"}).json()
        assert upload["hits"][0]["id"] == first["id"] and upload["hits"][0]["why"] == ["same image"]
        url = c.post("/v1/search", json={"image_url": api.web.photo_urls()[0], "k": 3})
        assert url.status_code == 200 and len(url.json()["hits"]) == 3
        page1 = c.post("/v1/search", json={"text": "airplane", "k": 4}).json()["hits"]
        page2 = c.post("/v1/search", json={"text": "airplane", "k": 4, "page": 2}).json()["hits"]
        assert [h["rank"] for h in page2] == [5, 6, 7, 8]
        assert not {h["id"] for h in page1} & {h["id"] for h in page2}


def test_where_filter_and_deep_nesting(api: Api) -> None:
    with api.r() as c:
        hits = c.post("/v1/search", json={"text": "animal", "k": 10, "where": "label in ['Leopards']"}).json()["hits"]
        assert len(hits) == 6 and {h["label"] for h in hits} == {"Leopards"}
        deep = "(" * 10_000 + "label == 'watch'" + ")" * 10_000
        assert_problem(c.post("/v1/search", json={"text": "x", "where": deep}), 422)
        assert_problem(c.post("/v1/search", json={"text": "x", "where": "(" * 300 + "label == 'a'" + ")" * 300}),
                       422, "nested deeper")
        nested_body = '{"text": "x", "where": ' + "[" * 10_000 + "]" * 10_000 + "}"
        resp = c.post("/v1/search", content=nested_body, headers={"content-type": "application/json"})
        assert resp.status_code in (400, 422) and resp.headers["content-type"].startswith(PROBLEM)
        assert_problem(c.post("/v1/search", json={"text": "x", "where": "colour == 'red'"}), 422, "unknown filter")
        assert_problem(c.post("/v1/search", json={"text": "x", "image_id": 1}), 422, "exactly one")


# -- security ---------------------------------------------------------------------------------------------
WRITES = [("post", "/v1/jobs/grow", {"term": "sunflower"}), ("post", "/v1/jobs/index", None),
          ("post", "/v1/jobs/prune", {"term": "sunflower"}), ("post", "/v1/snapshots", {"name": "s1"}),
          ("post", "/v1/snapshots/s1/load", None)]


def test_write_endpoints_need_a_write_key(api: Api) -> None:
    jobs_before = api.w().get("/v1/jobs").json()["jobs"]
    for key, status, word in ((None, 401, "required"), ("imrs_0000_bad", 401, "unknown"),
                              ("nonsense", 401, "unknown"), (api.read_key, 403, "no write scope")):
        with api.server.client(key) as c:
            for method, path, body in WRITES:
                resp = getattr(c, method)(path, **({"json": body} if body is not None else {}))
                assert_problem(resp, status, word)
                if status == 401:
                    assert resp.headers["www-authenticate"] == "Bearer"
    with api.server.client(None) as c:
        assert_problem(c.post("/v1/search", json={"text": "x"}), 401)  # reading needs a key too, once keys exist
        assert c.get("/v1/health").status_code == 200  # liveness stays open
    assert api.w().get("/v1/jobs").json()["jobs"] == jobs_before  # nothing was queued


def test_path_like_ids_never_reach_the_filesystem(api: Api) -> None:
    with api.r() as c:
        for path in ("/v1/images/..%2F..%2F..%2Fetc%2Fpasswd/original", "/v1/images/%2Fetc%2Fpasswd/thumbnail",
                     "/v1/images/1/original", "/v1/images/-1/thumbnail", "/v1/images/1e3/original",
                     "/v1/jobs/..%2F..%2Fcatalog.sqlite", "/v1/jobs/0-00000000",
                     "/v1/images/99999999999999999999999/original"):
            resp = c.get(path)
            assert resp.status_code in (404, 422), (path, resp.status_code)
            assert resp.headers["content-type"].startswith(PROBLEM) and b"root:" not in resp.content
        resp = api.w().post("/v1/snapshots/..%2F..%2Fx/load")
        assert resp.status_code in (404, 422)


def test_oversized_bodies_are_refused(api: Api) -> None:
    with api.r() as c:
        assert_problem(c.post("/v1/search", json={"text": "x" * (2 << 20)}), 413)
        big = b"\xff\xd8" + os.urandom(17 << 20)
        assert_problem(c.post("/v1/search/image", files={"file": ("big.jpg", big, "image/jpeg")}), 413)

        def chunks() -> Iterator[bytes]:  # no Content-Length: the server has to count
            for _ in range(40):
                yield b"x" * 65536

        resp = c.post("/v1/search", content=chunks(), headers={"content-type": "application/json"})
        assert_problem(resp, 413)


def test_decompression_bombs_are_refused(api: Api) -> None:
    with api.r() as c:
        for data in (bomb_png(), mid_bomb_png()):
            body = assert_problem(c.post("/v1/search/image", files={"file": ("b.png", data, "image/png")}), 422)
            assert "bomb" in body["detail"] or "too large" in body["detail"] or "pixels" in body["detail"]
        assert_problem(c.post("/v1/search/image", files={"file": ("x.jpg", b"not an image", "image/jpeg")}), 422)
        assert c.get("/v1/health").status_code == 200


def test_image_url_redirecting_to_a_private_address(api: Api) -> None:
    with api.r() as c:
        for target in ("http://10.0.0.1/x.jpg", "http://169.254.169.254/latest/meta-data/"):
            url = api.web.url(f"/redirect?hops=1&to={target}")
            body = assert_problem(c.post("/v1/search", json={"image_url": url}), 422)
            assert "private" in body["detail"] or "link-local" in body["detail"] or "not allowed" in body["detail"]


def test_slow_requests_time_out(api: Api) -> None:
    """An image URL that drips one byte every half second: the answer is a 504 at the server's
    request timeout (6 s here), not a connection held for as long as the remote likes."""
    t0 = time.monotonic()
    with api.r() as c:
        resp = c.post("/v1/search", json={"image_url": api.web.url("/drip.jpg?interval=0.5")})
    assert_problem(resp, 504, "longer than 6s")
    assert time.monotonic() - t0 < 20
    with api.r() as c:
        assert c.get("/v1/info").status_code == 200


def test_rate_limit_per_key(api: Api) -> None:
    key = KeyStore(api.home).add("tests-limited", ("read",), rate_per_minute=60)  # bursts of 6
    with api.server.client(key) as c:
        codes = [c.get("/v1/info").status_code for _ in range(20)]
    assert codes[:6] == [200] * 6 and 429 in codes
    with api.server.client(key) as c:
        resp = c.get("/v1/info")
        if resp.status_code == 429:
            assert int(resp.headers["retry-after"]) >= 1
    with api.r() as c:  # other keys are not slowed down
        assert c.get("/v1/info").status_code == 200


# -- images -----------------------------------------------------------------------------------------------
def test_thumbnails_and_originals_with_caching_headers(api: Api) -> None:
    with api.r() as c:
        hit = c.post("/v1/search", json={"text": "leopard", "k": 1}).json()["hits"][0]
        thumb = c.get(hit["thumbnail"])
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert thumb.content[:2] == b"\xff\xd8" and "max-age" in thumb.headers["cache-control"]
        again = c.get(hit["thumbnail"], headers={"If-None-Match": thumb.headers["etag"]})
        assert again.status_code == 304 and not again.content
        original = c.get(hit["original"])
        assert original.content == (api.root / hit["relpath"]).read_bytes() and original.headers["etag"]
        meta = c.get(f"/v1/images/{hit['id']}").json()
        assert meta["relpath"] == hit["relpath"] and meta["source"] == "base"


# -- jobs: growth, readers during growth, queue, cancel, snapshots ----------------------------------------
def test_growth_job_streams_progress_and_readers_keep_working(api: Api) -> None:
    w = api.w()
    before = w.post("/v1/search", json={"text": "sunflower", "k": 1}).json()["index"]
    answers: list[int] = []
    stop = threading.Event()

    def read() -> None:
        with api.r() as c:
            while not stop.is_set():
                answers.append(c.post("/v1/search", json={"text": "watch", "k": 5}).status_code)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        resp = w.post("/v1/jobs/grow", json={"term": "sunflower", "n": 2})
        assert resp.status_code == 202 and resp.headers["location"] == f"/v1/jobs/{resp.json()['id']}"
        job_id = resp.json()["id"]
        events: list[tuple[str, dict[str, Any]]] = []
        with w.stream("GET", f"/v1/jobs/{job_id}/events", timeout=180) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            kind = ""
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    events.append((kind, json.loads(line[6:])))
                    if kind == "end":
                        break
    finally:
        stop.set()
        reader.join()
    assert events[-1][0] == "end" and [k for k, _ in events[:-1]] == ["progress"] * (len(events) - 1)
    job = events[-1][1]
    assert job["status"] == "done", job
    assert job["result"]["kept"] >= 1 and job["result"]["term"] == "sunflower"
    assert any(e["progress"]["stage"] for _, e in events)  # progress was reported on the way
    assert answers and set(answers) == {200}  # searches kept answering during growth
    after = w.post("/v1/search", json={"text": "sunflower", "k": 10, "where": "source == 'dynamic'"}).json()
    added = set(job["result"]["added_ids"])
    assert {h["id"] for h in after["hits"]} == added  # seen right after the commit
    assert after["index"]["images"] == before["images"] + len(added) and after["index"]["generation"] != \
        before["generation"]
    listed = w.get("/v1/dynamic").json()["groups"]
    assert [g["slug"] for g in listed] == ["sunflower"]
    imgs = w.get("/v1/dynamic", params={"term": "sunflower"}).json()["images"]
    assert {i["id"] for i in imgs} == added and all(i["source_url"] for i in imgs)
    pruned = wait_job(w, w.post("/v1/jobs/prune", json={"term": "sunflower"}).json()["id"])
    assert pruned["status"] == "done" and pruned["result"]["removed"] == len(added)
    assert w.post("/v1/search", json={"text": "x", "k": 1}).json()["index"]["images"] == before["images"]


def test_concurrent_growth_requests_run_one_at_a_time(api: Api) -> None:
    w = api.w()
    terms = ["sunflower", "giraffe", "lighthouse"]
    dynamic_before = w.get("/v1/info").json()["dynamic"]
    results: list[httpx.Response] = []

    def submit(term: str) -> None:
        with api.w() as c:
            results.append(c.post("/v1/jobs/grow", json={"term": term, "n": 1}))

    # a slow loopback web makes every job last seconds, so the polling below surely sees one running and
    # others queued however fast the host is
    api.web.latency = 1.0
    try:
        threads = [threading.Thread(target=submit, args=(t,)) for t in terms]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(r.status_code for r in results) == [202, 202, 202]
        ids = {r.json()["id"] for r in results}
        most_running = 0
        saw_queue = False
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            jobs = [j for j in w.get("/v1/jobs").json()["jobs"] if j["id"] in ids]
            most_running = max(most_running, sum(j["status"] == "running" for j in jobs))
            saw_queue |= any(j["status"] == "queued" and j["ahead"] >= 1 for j in jobs)
            if all(j["status"] in ("done", "failed", "cancelled") for j in jobs):
                break
            time.sleep(0.05)
    finally:
        api.web.latency = 0.0
    try:
        assert most_running == 1 and saw_queue
        finished = [w.get(f"/v1/jobs/{i}").json() for i in ids]
        assert all(j["status"] == "done" for j in finished), finished
        starts = sorted((j["started"], j["finished"]) for j in finished)
        assert all(a[1] <= b[0] for a, b in zip(starts, starts[1:], strict=False))  # never overlapping
        info = w.get("/v1/info").json()
        assert info["dynamic"] == dynamic_before + sum(j["result"]["kept"] for j in finished)
        assert info["vectors"] == info["images"]
    finally:  # later tests count dynamic images: leave none of these behind, pass or fail
        for term in terms:
            wait_job(w, w.post("/v1/jobs/prune", json={"term": term}).json()["id"])


def test_cancel_queued_and_running_jobs_and_snapshots(api: Api) -> None:
    w = api.w()
    dynamic_before = w.get("/v1/info").json()["dynamic"]
    # a term no other test grows, and a slow web, so the job is still busy when the next is queued
    api.web.latency = 1.5
    try:
        running = w.post("/v1/jobs/grow", json={"term": "parrot", "n": 2}).json()
        queued = w.post("/v1/snapshots", json={"name": "before"}).json()
        cancelled = w.post(f"/v1/jobs/{queued['id']}/cancel").json()
    finally:
        api.web.latency = 0.0
    try:
        assert cancelled["status"] == "cancelled"
        stopped = w.post(f"/v1/jobs/{running['id']}/cancel").json()
        assert stopped["status"] in ("running", "queued", "cancelled", "done")
        end = wait_job(w, running["id"])
        assert end["status"] in ("cancelled", "done")  # done when it finished before seeing the flag
        if end["status"] == "cancelled":
            assert w.get("/v1/info").json()["dynamic"] == dynamic_before  # nothing of it was kept
        saved = wait_job(w, w.post("/v1/snapshots", json={"name": "snap-1"}).json()["id"])
        assert saved["status"] == "done" and "snap-1" in [s["name"] for s in w.get("/v1/snapshots").json()]
        loaded = wait_job(w, w.post("/v1/snapshots/snap-1/load").json()["id"])
        assert loaded["status"] == "done" and loaded["result"]["count"] == saved["result"]["count"]
        missing = wait_job(w, w.post("/v1/snapshots/no-such/load").json()["id"])
        assert missing["status"] == "failed" and "no-such" in missing["error"]
        indexed = wait_job(w, w.post("/v1/jobs/index").json()["id"])
        assert indexed["status"] == "done" and indexed["result"]["embedded"] == 0
    finally:
        wait_job(w, w.post("/v1/jobs/prune", json={"term": "parrot"}).json()["id"])


def test_metrics_and_access_log(api: Api) -> None:
    with api.r() as c:
        c.post("/v1/search", json={"text": "watch", "k": 2})
        text = c.get("/metrics").text
    assert 'route="/v1/search",status="200"' in text
    assert 'imrs_http_request_seconds_bucket{' in text and 'le="+Inf"' in text
    assert 'imrs_collection_images{source="base"} 24' in text and "imrs_jobs{" in text
    lines = [json.loads(line) for line in api.server.log.read_text().splitlines() if line.startswith('{"ts"')]
    search = [x for x in lines if x["route"] == "/v1/search" and x["status"] == 200]
    assert search and search[-1]["key"] and search[-1]["ms"] > 0 and search[-1]["method"] == "POST"


# -- the contract -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_openapi_contract_fuzzed(api: Api) -> None:
    """schemathesis against the running server: no 5xx, every answer matches the documented schema."""
    schema = httpx.get(f"{api.server.base}/openapi.json").json()
    assert {"/v1/search", "/v1/search/image", "/v1/jobs/grow", "/v1/jobs/{job_id}/events", "/metrics"} <= \
        set(schema["paths"])
    assert httpx.get(f"{api.server.base}/docs").status_code == 200
    st = Path(sys.executable).parent / "schemathesis"
    out = subprocess.run([str(st), "run", f"{api.server.base}/openapi.json", "--max-examples", "10", "--seed", "7",
                          "--checks", "not_a_server_error,response_schema_conformance,status_code_conformance,"
                                      "content_type_conformance",
                          "--max-time", "45", "--request-timeout", "30", "--no-shrink", "--phases",
                          "examples,coverage,fuzzing",
                          "-H", f"Authorization: Bearer {api.read_key}"],
                         capture_output=True, text=True, timeout=180, cwd=api.home)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "passed" in out.stdout


# -- several workers ------------------------------------------------------------------------------------------
def test_workers_reload_after_another_commits(api: Api) -> None:
    """Each worker process reloads its index once another worker's job has committed: no restart."""

    def ask() -> dict[str, Any]:
        with api.r() as c:  # a new connection each time: the kernel spreads them over the workers
            return c.post("/v1/search", json={"text": "sunflower", "k": 3, "where": "source == 'dynamic'"
                                              " or source == 'base'"}).json()["index"]

    seen: dict[int, set[int]] = {}
    for _ in range(40):
        state = ask()
        seen.setdefault(state["process"], set()).add(state["vectors"])
    assert len(seen) == 2 and len(set.union(*seen.values())) == 1
    before = next(iter(seen.values())).pop()
    with api.w() as c:
        # a term no other test grows: the loopback web has one picture of it, new to the collection
        job = wait_job(c, c.post("/v1/jobs/grow", json={"term": "dragonfly", "n": 2}).json()["id"])
    assert job["status"] == "done" and job["result"]["kept"] >= 1, job["result"]
    after: dict[int, set[int]] = {}
    for _ in range(40):
        state = ask()
        after.setdefault(state["process"], set()).add(state["vectors"])
    assert set(after) == set(seen) and all(v == {before + job["result"]["kept"]} for v in after.values())
    with api.w() as c:
        wait_job(c, c.post("/v1/jobs/prune", json={"term": "dragonfly"}).json()["id"])


def test_index_job_embeds_new_files_and_records_progress(api: Api) -> None:
    """The index job reports through the one progress protocol: a new file is embedded, and the job's
    progress row names the stage and counts it."""
    added = api.root / "new-photos" / "kite.jpg"
    added.parent.mkdir()
    added.symlink_to(PHOTOS / "kite.jpg")
    try:
        with api.w() as c:
            job = wait_job(c, c.post("/v1/jobs/index").json()["id"])
        assert job["status"] == "done" and job["result"]["embedded"] == 1 and job["result"]["added"] == 1, job
        assert job["progress"]["stage"].startswith("embed") and job["progress"]["done"] == job["progress"]["total"] == 1
    finally:
        added.unlink()
        added.parent.rmdir()
        with api.w() as c:
            gone = wait_job(c, c.post("/v1/jobs/index").json()["id"])
    assert gone["status"] == "done" and gone["result"]["removed"] == 1
