"""The Streamlit app, driven headlessly with ``streamlit.testing.v1.AppTest``.

Each test runs the real ``app_streamlit.py`` against a small writable Caltech-101 collection in a
temporary folder (state in a temporary IMRS_HOME) on the offline backbone, and checks what a user
would see: results with labels, readable errors instead of tracebacks, web expansion against the
loopback MediaWiki server, removal of dynamic images, snapshots.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import PHOTOS, REPO

pytest.importorskip("streamlit.testing.v1")
from streamlit.testing.v1 import AppTest  # noqa: E402

pytestmark = pytest.mark.slow

APP = REPO / "app_streamlit.py"
TIMEOUT = 300  # the first run loads a CPU model and indexes the collection
OFFLINE = "efficientnet_lite0"


@pytest.fixture
def app_env(home: Path, small_collection: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("IMRS_ROOT", str(small_collection))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # CLIP weights are not here; never wait on the network
    return small_collection


def start(backbone: str | None = OFFLINE) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    if backbone:
        at.session_state["backbone"] = backbone
    return at.run()


def assert_no_traceback(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def result_cards(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if m.value.startswith("**#")]


def result_labels(at: AppTest) -> list[str]:
    return [card.rsplit("\n", 1)[-1].strip() for card in result_cards(at)]


def go_to(at: AppTest, tab: str) -> AppTest:
    at.session_state["tab"] = tab
    return at.run()


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def photo(name: str) -> bytes:
    path = PHOTOS / name
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared photos)")
    return path.read_bytes()


def test_first_start_falls_back_indexes_and_text_search(app_env: Path, home: Path) -> None:
    at = start(backbone=None)  # the default: CLIP, whose weights are not available offline
    assert_no_traceback(at)
    banner = " ".join(w.value for w in at.warning)
    assert "clip_vit_b32" in banner and OFFLINE in banner and "IMRS_CHECKPOINT_CLIP_VIT_B32" in banner
    header = at.markdown[0].value
    assert "24 base" in header and OFFLINE in header
    assert any(s.value.startswith("Indexed collection: 24 files: 24 new") for s in at.success), \
        [s.value for s in at.success]
    # the first start persisted a live snapshot, so the next start loads instead of re-embedding
    assert list(home.glob(f"collections/*/snapshots/live-{OFFLINE}-hnsw.json"))

    at.text_input(key="q_text").set_value("a leopard")
    at.button(key="FormSubmitter:text_form-Search").click().run()
    assert_no_traceback(at)
    assert not errors(at), errors(at)
    labels = result_labels(at)
    assert len(labels) == 15
    assert labels[0] == "Leopards" and labels[:5].count("Leopards") >= 4, labels
    assert len(at.image) >= 15


def test_empty_text_and_bad_root_are_readable(app_env: Path, tmp_path: Path) -> None:
    at = start()
    at.button(key="FormSubmitter:text_form-Search").click().run()
    assert any("Type something" in w.value for w in at.warning)
    at.text_input(key="root").set_value(str(tmp_path / "nope")).run()
    assert_no_traceback(at)
    assert any("collection folder not found" in e for e in errors(at)), errors(at)


def test_upload_crop_and_search_with_result(app_env: Path) -> None:
    at = start()
    at.session_state["q_mode"] = "Image"
    at.run()
    at.file_uploader(key="upload").set_value(("sunflower.jpg", photo("sunflower.jpg"), "image/jpeg")).run()
    assert_no_traceback(at)
    assert not errors(at), errors(at)
    labels = result_labels(at)
    assert labels[0] == "sunflower" and labels[:5].count("sunflower") >= 4, labels
    assert any("upload: sunflower.jpg" in m.value for m in at.markdown)

    # not an image: one readable line, no traceback, the previous results stay
    at.file_uploader(key="upload").set_value(("notes.jpg", b"this is not a JPEG", "image/jpeg")).run()
    assert_no_traceback(at)
    assert errors(at) == ["upload: notes.jpg is not a readable image (18 bytes): use a JPEG, PNG, WebP, GIF, BMP "
                          "or TIFF file"], errors(at)
    at.file_uploader(key="upload").set_value(("sunflower.jpg", photo("sunflower.jpg"), "image/jpeg")).run()
    assert not errors(at), errors(at)

    at.session_state["img_src"] = "Webcam"
    at.run()
    at.camera_input(key="camera").set_value(("shot.jpg", photo("sunflower.jpg"), "image/jpeg")).run()
    assert_no_traceback(at)
    assert any("webcam" in m.value for m in at.markdown) and result_labels(at)[0] == "sunflower"

    at.slider(key="crop_l").set_value(20)
    at.slider(key="crop_r").set_value(20).run()
    assert_no_traceback(at)
    assert any("(cropped)" in c.value for c in at.caption), [c.value for c in at.caption]
    assert result_labels(at)[0] == "sunflower"

    # "Search with this" on a result makes it the query (output reused as input)
    first_use = next(b for b in at.button if b.key and b.key.startswith("use_res_"))
    first_use.click().run()
    assert_no_traceback(at)
    assert at.session_state["img_src"] == "Result"
    assert any("result: sunflower/" in m.value for m in at.markdown)
    cards = result_cards(at)
    assert cards[0].startswith("**#1** `1.000`") or "`0.99" in cards[0], cards[0]


def test_url_query_through_safe_downloader(app_env: Path, web_server) -> None:  # noqa: ANN001
    at = start()
    at.session_state["q_mode"] = "Image"
    at.session_state["img_src"] = "URL"
    at.run()
    url = web_server.url("/photos/sunflower.jpg")
    at.text_input(key="q_url").set_value(url)
    at.button(key="FormSubmitter:url_form-Fetch").click().run()
    assert_no_traceback(at)
    # loopback is refused by default (SSRF guard): a readable message, no results, no traceback
    assert any("could not download" in e for e in errors(at)), errors(at)
    assert not result_cards(at)

    at.toggle(key="allow_loopback").set_value(True)
    at.button(key="FormSubmitter:url_form-Fetch").click().run()
    assert_no_traceback(at)
    assert not errors(at), errors(at)
    assert result_labels(at)[0] == "sunflower"


def configure_loopback_provider(at: AppTest, web_server) -> AppTest:  # noqa: ANN001
    at.selectbox(key="provider").set_value("wikimedia")
    at.text_input(key="wikimedia_api").set_value(web_server.api_url)
    at.toggle(key="allow_loopback").set_value(True)
    return at.run()


def test_batch_expansion_then_remove_selected(app_env: Path, web_server) -> None:  # noqa: ANN001
    at = start()
    configure_loopback_provider(at, web_server)
    go_to(at, "Batch expansion")
    at.text_area(key="batch_terms").set_value("parrot\ndog\n\nparrot\nzzqx-nothing")
    at.number_input(key="batch_n").set_value(3)
    at.button(key="FormSubmitter:batch_form-Run expansion").click().run()
    assert_no_traceback(at)
    table = at.dataframe[0].value
    rows = {r["term"]: r for r in table.to_dict("records")}
    assert set(rows) == {"parrot", "dog", "zzqx-nothing"}
    assert rows["parrot"]["added"] == 1 and rows["dog"]["added"] == 2, rows
    assert rows["zzqx-nothing"]["added"] == 0
    assert "3 dynamic" in at.markdown[0].value

    go_to(at, "Manage dynamic images")
    assert_no_traceback(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Dynamic images"] == "3" and metrics["Terms"] == "2" and metrics["Base images"] == "24"
    boxes = [c for c in at.checkbox if c.key and c.key.startswith("sel_")]
    assert len(boxes) == 3  # base images never appear here
    dog_group = next(c for c in at.checkbox if c.key == "all_dog")
    dog_group.check().run()
    remove = at.button(key="remove_sel")
    assert remove.label == "Remove selected (2)"
    remove.click().run()
    assert_no_traceback(at)
    assert any("removed 2 dynamic image(s)" in s.value for s in at.success), [s.value for s in at.success]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Dynamic images"] == "1" and metrics["Terms"] == "1"
    assert "1 dynamic" in at.markdown[0].value
    assert not list(app_env.glob("dynamic_dog/*.jpg"))
    assert len(list(app_env.glob("dynamic_parrot/*.jpg"))) == 1


def test_weak_coverage_auto_expands(app_env: Path, web_server) -> None:  # noqa: ANN001
    at = start()
    configure_loopback_provider(at, web_server)
    at.session_state["q_mode"] = "Image"
    at.run()
    # a dragonfly is nowhere in a collection of sunflowers, airplanes, leopards and watches; the
    # classifier names it "dragonfly", which the loopback MediaWiki API finds
    at.file_uploader(key="upload").set_value(("dragonfly.jpg", photo("dragonfly.jpg"), "image/jpeg")).run()
    assert_no_traceback(at)
    assert any("Weak coverage" in w.value for w in at.warning), [w.value for w in at.warning]

    at.toggle(key="auto_expand").set_value(True)
    at.button(key="img_search").click().run()
    assert_no_traceback(at)
    done = " ".join(s.value for s in at.success)
    assert "1 web image(s) for “dragonfly” were added" in done and "Top score" in done, (done, errors(at))
    cards = result_cards(at)
    # the downloaded copy (re-encoded, shrunk) of the query itself now ranks first
    assert ":orange-badge[dynamic]" in cards[0] and cards[0].endswith("dragonfly"), cards[0]
    assert float(cards[0].split("`")[1]) > 0.95
    assert any("[source ↗](http://127.0.0.1" in m.value for m in at.markdown)  # provenance link
    assert "1 dynamic" in at.markdown[0].value


def test_sidebar_index_operations(app_env: Path, home: Path) -> None:
    at = start()
    at.button(key="rebuild").click().run()
    assert_no_traceback(at)
    assert any("index rebuilt: 24 vectors (hnsw)" in s.value for s in at.success), [s.value for s in at.success]

    at.button(key="rescan").click().run()
    assert_no_traceback(at)
    done = " ".join(s.value for s in at.success)
    assert "24 files: 0 new" in done and "merged" in done, done

    at.number_input(key="tune_hnsw_efSearch").set_value(128).run()
    assert_no_traceback(at)

    # another index kind: built from the cached embeddings, nothing re-embedded
    at.selectbox(key="indexer").set_value("flat_ip").run()
    assert_no_traceback(at)
    assert "efficientnet_lite0 / flat_ip" in at.markdown[0].value
    assert not any("Indexed" in s.value for s in at.success)
    at.text_input(key="q_text").set_value("a watch")
    at.button(key="FormSubmitter:text_form-Search").click().run()
    assert result_labels(at)[0] == "watch", result_labels(at)


def test_snapshot_save_and_load(app_env: Path, home: Path) -> None:
    at = start()
    at.text_input(key="snap_name").set_value("before-web")
    at.button(key="snap_save").click().run()
    assert_no_traceback(at)
    assert any("saved snapshot before-web: 24 vectors" in s.value for s in at.success), \
        [s.value for s in at.success]
    assert at.selectbox(key="snap_pick").options == ["before-web"]
    at.selectbox(key="snap_pick").set_value("before-web")
    at.button(key="snap_load").click().run()
    assert_no_traceback(at)
    assert any("loaded snapshot before-web: 24 vectors" in s.value for s in at.success)

    at.text_input(key="snap_name").set_value("../evil")
    at.button(key="snap_save").click().run()
    assert_no_traceback(at)
    assert any("invalid snapshot name" in e for e in errors(at)), errors(at)


def test_benchmarks_tab(app_env: Path, home: Path) -> None:
    at = start()
    go_to(at, "Benchmarks")
    assert_no_traceback(at)
    assert any("No benchmark results yet" in i.value for i in at.info)
    assert "imrs bench" in at.code[0].value

    # a run in the layout imrs.bench.report writes (pointer + results.json + CSV + PNG)
    from PIL import Image

    from imrs.fsutil import atomic_write_json

    run = home / "bench" / "caltech101"
    run.mkdir(parents=True)
    (run / "indexes.csv").write_text("backbone,indexer,recall@10,qps\nefficientnet_lite0,hnsw,0.97,5200\n")
    Image.new("RGB", (64, 48), "white").save(run / "quality.png")
    atomic_write_json(run / "results.json", {
        "meta": {"images": 9144, "queries": 300},
        "files": {"tables": {"indexes": str(run / "indexes.csv")}, "plots": {"quality": str(run / "quality.png")}}})
    atomic_write_json(home / "bench" / "latest.json", {"run_dir": str(run), "created": "2026-01-01T00:00:00",
                                                       "data_root": "/data/caltech101"})
    at.run()
    assert_no_traceback(at)
    assert any("Latest run" in m.value and "9144 images" in m.value for m in at.markdown)
    table = at.dataframe[0].value
    assert list(table["indexer"]) == ["hnsw"] and str(table["recall@10"][0]) == "0.97"
    assert len(at.image) == 1
