"""The Streamlit app, driven headlessly with ``streamlit.testing.v1.AppTest``.

Each test runs the real ``app_streamlit.py`` against a small writable Caltech-101 collection in a
temporary folder (state in a temporary IMRS_HOME) on the offline backbone, and checks what a person
would see: results with their calibrated confidence, readable errors instead of tracebacks, the
pipeline's verdict and proposed terms, growth from the loopback MediaWiki server, per-session
settings, the URL, snapshots and a benchmark run.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.conftest import PHOTOS, REPO

pytest.importorskip("streamlit.testing.v1")
from streamlit.testing.v1 import AppTest  # noqa: E402

pytestmark = pytest.mark.slow

APP = REPO / "app_streamlit.py"
TIMEOUT = 300  # the first run loads a CPU model and indexes the collection
OFFLINE = "efficientnet_lite0"
TEXT_SUBMIT = "FormSubmitter:text_form-Search"


@pytest.fixture
def app_env(home: Path, small_collection: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("IMRS_ROOT", str(small_collection))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # CLIP weights are not here; never wait on the network
    return small_collection


def start(backbone: str | None = None, query_params: dict[str, str] | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    if backbone:
        at.session_state["backbone"] = backbone
    for k, v in (query_params or {}).items():
        at.query_params[k] = v
    return at.run()


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not errors(at), errors(at)


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def cards(at: AppTest) -> list[str]:
    """The label line of every result card, in rank order ("**#1** · Leopards")."""
    return [m.value for m in at.markdown if m.value.startswith("**#")]


def labels(at: AppTest) -> list[str]:
    return [c.split(" · ", 1)[1] for c in cards(at)]


def scores_line(at: AppTest) -> list[str]:
    """The line under each label: calibrated confidence badge, raw score, source."""
    return [m.value for m in at.markdown if "-badge[" in m.value and "`" in m.value]


def result_caption(at: AppTest) -> str:
    found = [c.value for c in at.caption if " results for " in c.value]
    assert found, [c.value for c in at.caption]
    return found[0]


def timing(at: AppTest) -> list[str]:
    """The in-page click-to-results figures' starting text ("measuring ..." until the browser has
    timed the result, or "restored from the link")."""
    return [re.sub(r"<script>.*", "", h.value, flags=re.S).strip() for h in at.html if "imrs-timing" in h.value
            and 'data-nonce=""' not in h.value]


def search_text(at: AppTest, text: str) -> AppTest:
    at.text_input(key="q_text").set_value(text)
    return at.button(key=TEXT_SUBMIT).click().run()


def to_image_mode(at: AppTest) -> AppTest:
    at.session_state["mode"] = "Image"
    return at.run()


def go_to(at: AppTest, tab: str) -> AppTest:
    at.session_state["tab"] = tab
    return at.run()


def photo(name: str) -> bytes:
    path = PHOTOS / name
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared photos)")
    return path.read_bytes()


def header(at: AppTest) -> str:
    return at.markdown[0].value


def use_loopback_provider(at: AppTest, web_server: Any) -> AppTest:
    at.session_state["provider"] = "wikimedia"
    at.session_state["wikimedia_api"] = web_server.api_url
    at.session_state["allow_loopback"] = True
    return at.run()


# --------------------------------------------------------------------------------------------


def test_offline_default_indexes_and_text_search(app_env: Path, home: Path) -> None:
    at = start()  # no backbone chosen: CLIP's weights are not here, so the offline one is the default
    assert_clean(at)
    assert at.selectbox(key="backbone").value == OFFLINE
    assert not at.warning, [w.value for w in at.warning]  # no banner: a badge says what runs
    assert any(f"{OFFLINE} · in use" in m.value for m in at.markdown)
    assert "24 of your images + 0 from the web" in header(at) and OFFLINE in header(at)
    assert any(s.value.startswith("Indexed collection: 24 files: 24 new") for s in at.success)
    assert list(home.glob(f"collections/*/snapshots/live-{OFFLINE}-hnsw.json"))

    search_text(at, "a leopard")
    assert_clean(at)
    got = labels(at)
    assert len(got) == 12 and got[0] == "Leopards" and got[:5].count("Leopards") >= 4, got
    # the pipeline's calibrated confidence next to the raw score, and the verdict in the caption
    line = scores_line(at)[0]
    assert re.match(r":(green|orange|gray)-badge\[(likely match|uncertain|no match)\] `0\.\d{3}` :gray-badge\[yours\]",
                    line), line
    cap = result_caption(at)
    assert "coverage: likely match" in cap and "server share" in cap and "encode" in cap, cap
    assert len(timing(at)) == 1 and 'data-restored="0"' in timing(at)[0], timing(at)  # timed in the browser
    assert at.query_params["q"] == "a leopard"
    assert len(list((home / "app" / "thumbs").rglob("*.jpg"))) >= 12  # kept for the next start


def test_weak_text_query_offers_growth_and_empty_text_is_readable(app_env: Path, tmp_path: Path) -> None:
    at = start()
    at.button(key=TEXT_SUBMIT).click().run()
    assert any("Type something" in w.value for w in at.warning)
    search_text(at, "a yellow school bus")
    assert not at.exception
    assert any("Weak coverage" in w.value for w in at.warning), [w.value for w in at.warning]
    grow = at.button(key="grow_text")
    assert grow.label == "Grow the collection with “a yellow school bus”"
    # an empty search clears the previous answer and its banner
    at.text_input(key="q_text").set_value("   ")
    at.button(key=TEXT_SUBMIT).click().run()
    assert not cards(at) and not any("Weak coverage" in w.value for w in at.warning), cards(at)
    assert "q" not in at.query_params
    # a folder outside the allowed ones: one line naming no path, and the default collection stays
    for folder in (str(tmp_path / "nope"), "/etc", "/proc/self", "../../etc"):
        at.text_input(key="root").set_value(folder).run()
        assert not at.exception
        assert errors(at) == ["that folder is not one this server allows (the server's IMRS_ALLOWED_ROOTS decide): "
                              "showing the default collection."], errors(at)
        assert "24 of your images" in header(at)


def test_unavailable_backbone_is_a_badge_with_a_fix(app_env: Path) -> None:
    at = start(backbone="clip_vit_b32")
    assert not at.exception
    assert any(":orange-badge[clip_vit_b32: not available]" in m.value and OFFLINE in m.value for m in at.markdown)
    assert not at.warning  # details live in the expander, not in a banner on every tab
    details = " ".join(c.value for c in at.caption)
    assert "IMRS_CHECKPOINT_CLIP_VIT_B32" in details
    at.button(key="dl_weights").click().run()  # offline: fails at once, with the reason
    assert any("cannot download clip_vit_b32" in e and "offline" in e for e in errors(at)), errors(at)


def test_two_sessions_keep_their_own_settings(app_env: Path) -> None:
    a, b = start(), start()
    a.slider(key="top_k").set_value(5).run()
    a.number_input(key="tune_hnsw_efSearch").set_value(300).run()
    search_text(a, "a watch")
    search_text(b, "a watch")
    assert len(cards(a)) == 5 and len(cards(b)) == 12
    assert b.slider(key="top_k").value == 12
    assert b.number_input(key="tune_hnsw_efSearch").value != 300
    search_text(a, "a sunflower")
    assert labels(a)[0] == "sunflower" and len(cards(a)) == 5
    # a's efSearch was applied to a's searches only: a new session still finds the shared default
    c = start()
    assert c.number_input(key="tune_hnsw_efSearch").value == b.number_input(key="tune_hnsw_efSearch").value != 300


def test_reload_restores_the_query_from_the_url(app_env: Path) -> None:
    at = start(query_params={"q": "a sunflower"})  # a reload, or a shared link
    assert_clean(at)
    assert at.text_input(key="q_text").value == "a sunflower"
    assert labels(at)[0] == "sunflower"
    assert timing(at) and 'data-restored="1"' in timing(at)[0] and "restored from the link" in timing(at)[0]
    assert not any("grew" in s.value for s in at.success)  # a reload searches again, it never grows
    # an image link: a collection image by id, with its crop
    from imrs.ids import stable_id

    rel = sorted((app_env / "watch").iterdir())[0].relative_to(app_env).as_posix()
    img = start(query_params={"img": f"c:{stable_id(rel)}", "crop": "0.1,0.1,0.9,0.9"})
    assert_clean(img)
    assert img.session_state["mode"] == "Image"
    assert labels(img)[0] == "watch"
    assert str(stable_id(rel)) not in " ".join(b.key or "" for b in img.button)  # the query itself is hidden
    gone = start(query_params={"img": "u:0123456789abcdef"})
    assert any("no longer kept" in w.value for w in gone.warning), [w.value for w in gone.warning]


def test_upload_crop_webcam_and_search_with_a_result(app_env: Path, home: Path) -> None:
    at = to_image_mode(start())
    at.file_uploader(key="upload").set_value(("sunflower.jpg", photo("sunflower.jpg"), "image/jpeg")).run()
    assert_clean(at)
    got = labels(at)
    assert got[0] == "sunflower" and got[:5].count("sunflower") >= 4, got
    ref = at.query_params["img"]
    assert ref.startswith("u:") and (home / "app" / "queries" / f"{ref[2:]}.bin").is_file()

    # not an image: one readable line, and the previous results are gone, not left under the error
    at.file_uploader(key="upload").set_value(("notes.jpg", b"this is not a JPEG", "image/jpeg")).run()
    assert not at.exception
    assert errors(at) == ["upload: notes.jpg is not a readable image (18 bytes): use a JPEG, PNG, WebP, GIF, BMP "
                          "or TIFF file"], errors(at)
    assert not cards(at)

    at.session_state["img_src"] = "Webcam"
    at.run()
    at.camera_input(key="camera").set_value(("shot.jpg", photo("sunflower.jpg"), "image/jpeg")).run()
    assert_clean(at)
    assert labels(at)[0] == "sunflower"

    at.session_state["crop_box"] = (0.2, 0.2, 0.8, 0.8)  # what a drag on the crop box sets
    at.run()
    assert_clean(at)
    assert "(cropped)" in result_caption(at) and "searching the box" in " ".join(c.value for c in at.caption)
    assert at.query_params["crop"] == "0.2,0.2,0.8,0.8"

    first_id = int(next(b.key for b in at.button if b.key and b.key.startswith("use_res_")).rsplit("_", 1)[1])
    next(b for b in at.button if b.key == f"use_res_{first_id}").click().run()
    assert_clean(at)
    assert at.session_state["img_src"] == "Result" and at.query_params["img"] == f"c:{first_id}"
    assert f"use_res_{first_id}" not in [b.key for b in at.button]  # the query image is left out
    at.toggle(key="hide_query").set_value(False).run()
    at.button(key="img_search").click().run()
    assert any(":blue-badge[query image]" in m for m in scores_line(at)[:1]), scores_line(at)[:2]


def test_example_query_is_left_out_of_its_own_results(app_env: Path) -> None:
    from imrs.ids import stable_id

    at = to_image_mode(start())
    at.session_state["img_src"] = "Example"
    at.run()
    at.button(key="ex_watch").click().run()
    assert_clean(at)
    first = sorted((app_env / "watch").iterdir())[0]  # a symbolic link: its id is of the path under the root
    own = stable_id(first.relative_to(app_env).as_posix())
    assert at.query_params["img"] == f"c:{own}"
    assert labels(at)[0] == "watch"
    assert f"use_res_{own}" not in [b.key for b in at.button] and not any("query image" in m for m in scores_line(at))


def test_enlarge_shows_the_original_and_its_facts(app_env: Path) -> None:
    at = search_text(start(), "a leopard")
    view = next(b for b in at.button if b.key and b.key.startswith("view_res_"))
    view.click().run()
    assert_clean(at)
    facts = " ".join(m.value for m in at.markdown)
    assert "Original: " in facts and " px, JPEG" in facts and "File: Leopards/" in facts
    assert str(app_env) not in facts  # the file by its place in the collection, never the server's path


def test_url_query_through_safe_downloader(app_env: Path, web_server: Any) -> None:
    at = to_image_mode(start())
    at.session_state["img_src"] = "URL"
    at.run()
    at.text_input(key="q_url").set_value(web_server.url("/photos/sunflower.jpg"))
    at.button(key="FormSubmitter:url_form-Fetch").click().run()
    assert not at.exception
    assert any("could not download" in e for e in errors(at)), errors(at)  # loopback refused by default
    assert not cards(at)
    at.toggle(key="allow_loopback").set_value(True)
    at.button(key="FormSubmitter:url_form-Fetch").click().run()
    assert_clean(at)
    assert labels(at)[0] == "sunflower"


def test_weak_text_query_grows_from_the_web_with_auto_expand(app_env: Path, web_server: Any) -> None:
    at = use_loopback_provider(start(), web_server)
    at.toggle(key="auto_expand").set_value(True).run()
    search_text(at, "parrot")
    assert_clean(at)
    grew = " ".join(s.value for s in at.success)
    assert "the collection grew" in grew and "for “parrot” were added" in grew, (grew, [w.value for w in at.warning])
    assert cards(at)[0].endswith("parrot") and ":violet-badge[web]" in scores_line(at)[0]
    assert "from the web" in header(at) and "+ 0 from the web" not in header(at)
    assert any(e.label.startswith("Results before growing") for e in at.expander)


def test_image_query_proposes_terms_and_grows_on_confirmation(app_env: Path, web_server: Any) -> None:
    at = use_loopback_provider(to_image_mode(start()), web_server)
    at.toggle(key="auto_expand").set_value(True).run()  # without auto-confirm, the term is asked for
    at.file_uploader(key="upload").set_value(("dragonfly.jpg", photo("dragonfly.jpg"), "image/jpeg")).run()
    assert_clean(at)
    assert any("Weak coverage" in w.value for w in at.warning), [w.value for w in at.warning]
    assert "+ 0 from the web" in header(at)  # nothing was fetched before the person confirmed
    terms = [b for b in at.button if b.key and b.key.startswith("term_")]
    assert terms and "dragonfly" in terms[0].label.lower(), [b.label for b in terms]
    terms[0].click().run()
    assert_clean(at)
    grew = " ".join(s.value for s in at.success)
    assert "the collection grew" in grew and "dragonfly" in grew, grew
    assert ":violet-badge[web]" in scores_line(at)[0] and float(scores_line(at)[0].split("`")[1]) > 0.9


def _in_threads(work: Any, n: int = 8) -> None:
    """``work(i)`` in ``n`` threads released together, with thread switches as often as possible."""
    barrier = threading.Barrier(n)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=lambda i=i: (barrier.wait(), work(i))) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)


def test_activity_board_is_one_per_collection_under_concurrent_sessions(tmp_path: Path) -> None:
    from imrs.app.activity import activity_for

    coll = SimpleNamespace(state_dir=tmp_path / "state")
    boards: list[Any] = []
    seen: list[list[str]] = []

    def session(i: int) -> None:
        board = activity_for(coll)
        boards.append(board)
        for n in range(50):
            with board.job(f"s{i}", "expanding", f"term {n}"):
                seen.append([j.session for j in board.others(f"s{i}")])

    _in_threads(session)
    assert len({id(b) for b in boards}) == 1  # every session sees the same board
    assert boards[0].version == 8 * 50 and boards[0].others("nobody") == []  # no end was lost
    assert activity_for(SimpleNamespace(state_dir=tmp_path / "other")) is not boards[0]


def test_weights_failures_count_each_failure_once_across_threads() -> None:
    from imrs.app.backbones import WeightsFailures

    failures = WeightsFailures()
    _in_threads(lambda i: [failures.remember(f"bb{n}", f"gone ({i})") for n in range(2000)])
    # every thread saw every backbone fail: one failure each, one fresh workspace each
    assert [failures.generation(f"bb{n}") for n in range(2000)] == [1] * 2000
    assert failures.recent("bb7").startswith("gone (") and failures.recent("other") is None
    failures.forget("bb7")
    assert failures.recent("bb7") is None and failures.generation("bb7") == 1


def test_busy_notice_when_another_session_or_process_writes(app_env: Path) -> None:
    at = start()
    from imrs.app.activity import activity_for
    from imrs.collection import Collection

    coll = Collection(app_env, OFFLINE)
    with activity_for(coll).job("another-session", "searching", "“a parrot”") as job:
        at.run()
        assert not any("Another" in i.value for i in at.info)  # a plain search is nobody's business
        job.stage, job.done, job.total = "download", 3, 8  # ... until it grows the collection
        at.run()
        notes = " ".join(i.value for i in at.info)
        assert "Another session is growing the collection for “a parrot” — download 3/8" in notes, notes
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with coll.writer.hold():
            held.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    try:
        held.wait(10)
        at.run()
        assert any("Another program is writing" in i.value for i in at.info), [i.value for i in at.info]
    finally:
        release.set()
        t.join()
    at.run()
    assert not any("Another" in i.value for i in at.info)


def test_batch_expansion_then_remove_selected(app_env: Path, web_server: Any, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    twin = tmp_path / "twin"  # the same images, grown by `imrs expand` below
    for f in app_env.rglob("*.jpg"):
        (twin / f.relative_to(app_env)).parent.mkdir(parents=True, exist_ok=True)
        (twin / f.relative_to(app_env)).symlink_to(f.resolve())
    at = use_loopback_provider(start(), web_server)
    go_to(at, "Batch expansion")
    at.text_area(key="batch_terms").set_value("parrot\ndog\n\nparrot\nzzqx-nothing")
    at.number_input(key="batch_n").set_value(3)
    at.button(key="FormSubmitter:batch_form-Run expansion").click().run()
    assert not at.exception
    rows = {r["term"]: r for r in at.dataframe[0].value.to_dict("records")}
    assert set(rows) == {"parrot", "dog", "zzqx-nothing"}
    assert rows["parrot"]["added"] == 1 and rows["dog"]["added"] == 2, rows
    assert rows["zzqx-nothing"]["added"] == 0
    assert "+ 3 from the web" in header(at)

    # The CLI grows the twin for the same terms from the same web: the same report, the same files.
    from imrs.cli import main

    home = ["--home", str(tmp_path / "twin-home")]
    cli = ["--root", str(twin), *home]
    assert main(["index", str(twin), *home, "--backbone", OFFLINE, "--indexer", "hnsw", "-q"]) == 0
    capsys.readouterr()
    assert main(["expand", "parrot", "dog", "parrot", "zzqx-nothing", "-n", "3", "--provider", "wikimedia",
                 "--wikimedia-api", web_server.api_url, "--allow-loopback", "--json", *cli]) == 0
    by_cli = {t["term"]: t for t in json.loads(capsys.readouterr().out)["terms"]}
    assert {t: (r["added"], r["duplicates"], r["failed"]) for t, r in rows.items()} == \
        {t: (r["added"], r["duplicates"], r["failed"]) for t, r in by_cli.items()}

    def grown(root: Path) -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.glob("dynamic_*/*.jpg"))

    assert grown(app_env) == grown(twin) and len(grown(twin)) == 3

    go_to(at, "Manage web images")
    assert_clean(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {"Your images": "24", "Web images": "3", "Terms": "2"}
    assert len([c for c in at.checkbox if c.key and c.key.startswith("sel_")]) == 3  # base images never listed
    at.checkbox(key="all_dog").check().run()
    assert at.button(key="remove_sel").label == "Remove selected (2)"
    at.button(key="remove_sel").click().run()
    assert_clean(at)
    assert any("removed 2 dynamic image(s)" in s.value for s in at.success), [s.value for s in at.success]
    assert {m.label: m.value for m in at.metric}["Web images"] == "1"
    assert "+ 1 from the web" in header(at)
    assert not list(app_env.glob("dynamic_dog/*.jpg"))


def test_sidebar_index_operations(app_env: Path) -> None:
    at = start()
    at.button(key="rebuild").click().run()
    assert_clean(at)
    assert any("index rebuilt: 24 vectors (hnsw)" in s.value for s in at.success), [s.value for s in at.success]
    at.button(key="rescan").click().run()
    assert_clean(at)
    done = " ".join(s.value for s in at.success)
    assert "24 files: 0 new" in done and "merged" in done, done
    at.selectbox(key="indexer").set_value("flat_ip").run()  # built from the cached embeddings
    assert_clean(at)
    assert f"{OFFLINE} / flat_ip" in header(at) and not any("Indexed" in s.value for s in at.success)
    assert labels(search_text(at, "a watch"))[0] == "watch"


def test_snapshot_save_then_load_in_one_session(app_env: Path) -> None:
    at = start()
    assert at.selectbox(key="snap_pick").value is None and at.button(key="snap_load").disabled
    at.text_input(key="snap_name").set_value("before-web")
    at.button(key="snap_save").click().run()
    assert_clean(at)
    assert any("saved snapshot before-web: 24 vectors" in s.value for s in at.success)
    pick = at.selectbox(key="snap_pick")
    assert pick.options == ["before-web"] and pick.value == "before-web" and not at.button(key="snap_load").disabled
    at.button(key="snap_load").click().run()
    assert_clean(at)
    assert any("loaded snapshot before-web: 24 vectors" in s.value for s in at.success)
    at.text_input(key="snap_name").set_value("../evil")
    at.button(key="snap_save").click().run()
    assert any("invalid snapshot name" in e for e in errors(at)), errors(at)


def test_benchmark_runs_from_the_tab(app_env: Path, home: Path) -> None:
    at = go_to(start(), "Benchmarks")
    assert_clean(at)
    assert any("No benchmark results yet" in i.value for i in at.info)
    at.multiselect(key="bench_indexers").set_value(["flat_ip", "hnsw"])
    at.multiselect(key="bench_improvements").set_value([])
    at.number_input(key="bench_queries").set_value(20)
    at.toggle(key="bench_tune").set_value(False)
    at.selectbox(key="bench_map").set_value("pca")
    at.button(key="FormSubmitter:bench_form-Run benchmark").click().run()
    assert_clean(at)
    assert any("Benchmark done" in s.value and "24 images, 20 queries" in s.value for s in at.success)
    assert any(m.value.startswith("#### Latest run: collection") for m in at.markdown)
    assert not any(str(home) in m.value or ".venv" in m.value for m in at.markdown)  # no developer paths
    indexes = next(d.value for d in at.dataframe if "indexer" in d.value.columns)
    assert sorted(indexes["indexer"]) == ["flat_ip", "hnsw"]
    assert len(at.image) >= 2  # the quality plot and the collection map


def test_coverage_thresholds_calibrate_and_session_override(app_env: Path) -> None:
    at = start()
    shown = " ".join(c.value for c in at.caption if "queries: best" in c.value)
    assert "image queries: best" in shown and "(default)" in shown, shown
    at.button(key="calibrate").click().run()
    assert_clean(at)
    said = [s.value for s in at.success if s.value.startswith("Calibrated. ")]
    assert said and "**Image queries** now count as covered when the best match scores at least" in said[0], said
    assert re.search(r"held out of the measurement this is right \d+% of the time", said[0]), said
    assert "(calibrated)" in " ".join(c.value for c in at.caption if "queries: best" in c.value)
    # An image query (a text query that names a folder is judged on that exact word match, 1.0)
    def search_photo(app: AppTest) -> AppTest:
        app = to_image_mode(app)
        return app.file_uploader(key="upload").set_value(("sunflower.jpg", photo("sunflower.jpg"),
                                                          "image/jpeg")).run()

    search_photo(at)
    assert not any("Weak coverage" in w.value for w in at.warning)
    at.toggle(key="cov_override").set_value(True).run()
    at.slider(key="cov_best").set_value(1.0).run()  # this session only: nothing can be that good
    search_photo(at)
    assert any("Weak coverage" in w.value for w in at.warning), [w.value for w in at.warning]
    other = search_photo(start())
    assert not any("Weak coverage" in w.value for w in other.warning)


def test_query_store_and_thumbnail_folder_stay_bounded(tmp_path: Path) -> None:
    import time

    from PIL import Image

    from imrs.app import media

    home = tmp_path / "home"
    digests = [media.store_query(home, bytes([i]) * 64) for i in range(media.STORE_KEEP + 5)]
    kept = list(media.store_dir(home).glob("*.bin"))
    assert len(kept) == media.STORE_KEEP and media.load_stored(home, digests[-1]) == bytes([media.STORE_KEEP + 4]) * 64
    assert media.load_stored(home, "../../etc/passwd") is None  # only our own digests are names
    thumbs = tmp_path / "thumbs"
    for i in range(5):
        src = tmp_path / f"{i}.jpg"
        Image.new("RGB", (40 + i, 30), (i * 40, 0, 0)).save(src)
        assert media.thumbnail(str(src), src.stat().st_mtime, 64, str(thumbs))
        time.sleep(0.01)
    assert len(list(thumbs.rglob("*.jpg"))) == 5
    assert media.prune_thumbs(thumbs, keep=2) == 3 and len(list(thumbs.rglob("*.jpg"))) == 2


# --------------------------------------------------------------------------------------------
# Links, roles and text that did not come from the code
# --------------------------------------------------------------------------------------------


def test_every_demo_image_reference_round_trips_through_a_link() -> None:
    """Every demo image (404 files; web images get their ids the same way, from their relative
    path): its ``?img=c:<id>`` as the page writes it (ids are signed 64-bit, about half negative),
    through the browser's URL encoding, back to the same id; anything else is refused before
    SQLite sees it."""
    from types import SimpleNamespace
    from urllib.parse import parse_qs, urlencode

    from imrs.app import session as S
    from imrs.app.media import DEMO_ROOT
    from imrs.app.tab_search import _collection_ref
    from imrs.ids import normalise_relpath, stable_id

    files = sorted(p for p in DEMO_ROOT.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    assert len(files) == 404
    ids = [stable_id(normalise_relpath(f.relative_to(DEMO_ROOT).as_posix())) for f in files]
    assert sum(i < 0 for i in ids) > 150  # the half the old parser refused
    coll = SimpleNamespace(root=DEMO_ROOT)
    for f, image_id in zip(files, ids, strict=True):
        ref = _collection_ref(coll, f)
        assert ref == f"c:{image_id}"
        url = urlencode({"img": ref, "mode": "Image"})
        assert S.parse_image_ref(parse_qs(url)["img"][0]) == ("c", image_id), (f, ref, url)
    for edge in (-(2**63), 2**63 - 1, 0):
        assert S.parse_image_ref(S.collection_ref(edge)) == ("c", edge)
    for bad in ("c:99999999999999999999999999", f"c:{2**63}", f"c:{-(2**63) - 1}", "c:", "c:1.5", "c:+1", "c:--1",
                "c: 1", "x:1", "u:../../etc/passwd", "u:0123", "", "c:٣"):
        assert S.parse_image_ref(bad) is None, bad


def test_links_never_switch_writes_on_and_odd_references_are_one_line(app_env: Path, home: Path) -> None:
    from imrs.ids import stable_id

    at = start(query_params={"q": "a yellow school bus", "auto_expand": "true", "auto_confirm": "true"})
    assert_clean(at)
    assert at.session_state["auto_expand"] is False and at.session_state["auto_confirm"] is False
    assert "auto_expand" not in at.query_params and "auto_confirm" not in at.query_params
    assert "0 from the web" in header(at) and not any("grew" in s.value for s in at.success)
    for ref in ("c:99999999999999999999999999", "c:-", "file:///etc/passwd"):
        odd = start(query_params={"img": ref})
        assert not odd.exception
        assert [w.value for w in odd.warning] == ["the link's image reference is not one this app wrote"]
    # negative ids (half of all) are restored like positive ones
    rels = sorted(p.relative_to(app_env).as_posix() for p in app_env.rglob("*.jpg"))
    neg = [r for r in rels if stable_id(r) < 0][:2]
    pos = [r for r in rels if stable_id(r) >= 0][:1]
    assert neg and pos
    for rel in neg + pos:
        img = start(query_params={"img": f"c:{stable_id(rel)}", "hide_query": "false"})
        assert_clean(img)
        assert labels(img)[0] == rel.split("/")[0], (rel, labels(img))
        assert "query image" in scores_line(img)[0], scores_line(img)  # the link's "show it" was kept


def test_visitor_searches_but_cannot_change_the_collection(app_env: Path, monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    token = "correct-horse-battery-staple"
    monkeypatch.setenv("IMRS_EDITOR_TOKEN", token)
    other = tmp_path / "allowed" / "pets"
    (other / "Leopards").mkdir(parents=True)
    for f in sorted((app_env / "Leopards").iterdir())[:3]:
        (other / "Leopards" / f.name).symlink_to(f.resolve())
    monkeypatch.setenv("IMRS_ALLOWED_ROOTS", str(tmp_path / "allowed"))
    at = start()
    assert_clean(at)
    keys = {w.key for w in (*at.button, *at.toggle, *at.text_input) if w.key}
    for editor_only in ("root", "auto_expand", "auto_confirm", "calibrate", "rebuild", "rescan", "snap_save",
                        "snap_load", "grow_text"):
        assert editor_only not in keys, editor_only
    assert at.selectbox(key="backbone").disabled and at.selectbox(key="indexer").disabled
    search_text(at, "a yellow school bus")
    assert any("Weak coverage" in w.value for w in at.warning)
    assert any("An editor can grow" in c.value for c in at.caption)
    go_to(at, "Batch expansion")
    assert any("is for editors" in i.value for i in at.info), [i.value for i in at.info]
    # a wrong token is refused; the right one makes this session an editor (and no other)
    at.text_input(key="editor_token_input").set_value("wrong-token-wrong")
    at.button(key="FormSubmitter:editor_sign_in-Sign in as editor").click().run()
    assert "that is not the editor token" in errors(at)
    at.text_input(key="editor_token_input").set_value(token)
    at.button(key="FormSubmitter:editor_sign_in-Sign in as editor").click().run()
    assert_clean(at)
    assert at.text_input(key="root") and at.toggle(key="auto_expand")
    assert "root" not in {w.key for w in start().text_input}  # another session is still a visitor
    # an editor may open a folder inside IMRS_ALLOWED_ROOTS, by its name under the root
    at.text_input(key="root").set_value("pets").run()
    assert_clean(at)
    assert "pets" in header(at) and "3 of your images" in header(at) and str(tmp_path) not in header(at)


def test_hostile_text_is_shown_as_text(app_env: Path) -> None:
    """A query, a folder and a file name carrying Markdown and Streamlit's extensions reach the
    page escaped (the browser test checks what is drawn)."""
    hostile = "[log in](http://127.0.0.1:9/phish) ![x](http://127.0.0.1:9/x.jpg) :red[r] $x$ :material/home:"
    folder = app_env / ":red[x] [f](phish.html) ![i](kite.jpg)"
    folder.mkdir()
    (folder / "![j](kite2.jpg) _b_.jpg").symlink_to(sorted((app_env / "watch").iterdir())[0].resolve())
    at = search_text(start(query_params={"top_k": "30"}), hostile + " " + "long " * 1000)
    assert_clean(at)
    cap = result_caption(at)
    assert "\\[log in\\](http:\u2060//127.0.0.1:9/phish)" in cap and "\\$x\\$" in cap, cap
    assert ":\u2060red\\[r\\]" in cap and ":\u2060material/home:" in cap, cap
    assert len(cap) < 400, len(cap)  # a 5,000-character query is not echoed in full
    assert any(c.startswith("**#") and c.endswith("· :\u2060red\\[x\\] \\[f\\](phish.html) !\\[i\\](kite.jpg)")
               for c in cards(at)), cards(at)
    assert any("!\\[j\\](kite2.jpg) \\_b\\_.jpg" in c.value for c in at.caption), [c.value for c in at.caption]


def test_truncated_upload_is_named_as_truncated(app_env: Path) -> None:
    at = to_image_mode(start())
    data = photo("sunflower.jpg")
    at.file_uploader(key="upload").set_value(("half.jpg", data[: len(data) // 2], "image/jpeg")).run()
    assert not at.exception
    said = errors(at)
    assert len(said) == 1 and "upload: half.jpg is truncated: the file ends early" in said[0], said
    assert not cards(at)
