"""The one judge (``imrs.expansion.judge``): its statistics on data whose truth is known, what
calibration fits and stores, and the live verdict and badges that follow from it -- with the real
EfficientNet-Lite0, FAISS and SQLite."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imrs.collection import Collection
from imrs.config import Settings
from imrs.expansion.calibrate import calibrate, load_judges
from imrs.expansion.cases import families
from imrs.expansion.coverage import LIKELY, NO_MATCH, UNCERTAIN, CoverageThresholds
from imrs.expansion.judge import JudgeModel, fit_logistic
from imrs.expansion.risk import balanced_threshold, min_answers, precision_thresholds
from imrs.query import Query, Verdict, hit_confidence, run_query
from tests.conftest import CALTECH, PHOTOS, REPO
from tests.test_expansion import BACKBONE, encoder, make_base, sun_urls, web  # noqa: F401 - fixtures

# ---------------------------------------------------------------------------------------------
# Statistics, on synthetic data whose truth is known
# ---------------------------------------------------------------------------------------------


def _sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """p uniform in [0, 1] and y ~ Bernoulli(p): p is a calibrated probability of "covered"."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 1, n)
    return p, (rng.uniform(0, 1, n) < p).astype(int)


def test_min_answers_is_the_zero_error_bound() -> None:
    # (1 - 0.05) ** n <= 0.1  <=>  n >= ln 0.1 / ln 0.95 = 44.9
    assert min_answers(0.05, 0.1) == 45
    assert min_answers(0.10, 0.1) == 22


def test_precision_thresholds_hold_on_new_cases() -> None:
    p, y = _sample(4000, 0)
    t_low, t_high = precision_thresholds(p, y, 0.90)
    # the truth: precision of p >= t is (1 + t) / 2, so 90% needs t >= 0.80 (and p <= 0.20 on the
    # other side); the bound is a little stricter, never looser
    assert 0.79 <= t_high < 0.9 and 0.1 < t_low <= 0.21
    q, z = _sample(200_000, 1)  # fresh, exchangeable cases
    assert z[q >= t_high].mean() >= 0.895
    assert 1 - z[q <= t_low].mean() >= 0.895
    # a higher target answers fewer cases confidently
    lo99, hi99 = precision_thresholds(p, y, 0.97)
    assert hi99 > t_high and lo99 < t_low


def test_an_uninformative_score_is_never_confident() -> None:
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 1, 3000)
    y = rng.integers(0, 2, 3000)  # the score says nothing about the truth
    t_low, t_high = precision_thresholds(p, y, 0.95)
    assert t_high == math.inf and t_low == -math.inf


def test_clustered_cases_need_more_evidence() -> None:
    """Cases of one folder succeed or fail together: bootstrapping whole folders must be more
    careful than treating every case as independent."""
    rng = np.random.default_rng(5)
    groups = np.repeat(np.arange(40), 20)
    p = rng.uniform(0.5, 1.0, len(groups))
    y = (rng.uniform(0, 1, len(groups)) < 0.995).astype(int)
    y[groups == 7] = 0  # one folder whose queries look fairly covered and are not: 97% precision overall
    p[groups == 7] = rng.uniform(0.6, 0.7, 20)
    _, t_independent = precision_thresholds(p, y, 0.95)
    _, t_grouped = precision_thresholds(p, y, 0.95, groups)
    assert t_independent < 0.65  # as independent cases, the folder is answered "covered"
    assert t_grouped > t_independent


def test_fit_logistic_recovers_the_model() -> None:
    rng = np.random.default_rng(7)
    X = rng.normal(size=(5000, 3))
    logit = 2.0 * X[:, 0] - 1.0 * X[:, 1] + 0.0 * X[:, 2] + 0.5
    y = (rng.uniform(size=5000) < 1 / (1 + np.exp(-logit))).astype(float)
    mean, scale, coef, intercept = fit_logistic(X, y, l2=1e-3)
    w = coef / scale  # back to the raw features' scale
    b = intercept - float((coef * mean / scale).sum())
    assert np.allclose(w, [2.0, -1.0, 0.0], atol=0.15) and abs(b - 0.5) < 0.15


def test_forced_decision_keeps_covered_concepts_covered() -> None:
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.35, 0.45])
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1])
    # best balanced accuracy alone would cut at 0.6 (misses the two covered at 0.35 and 0.45)
    assert balanced_threshold(p, y, max_miss=1.0) == 0.6
    # at most 10% of covered judged weak: the cut moves down to 0.35
    assert balanced_threshold(p, y, max_miss=0.10) == 0.35


def test_forced_decision_bar_holds_over_folders_not_only_on_average() -> None:
    """Nine covered folders found well (0.6, 0.7) and one diverse folder found poorly (0.3, 0.3):
    on average a cut at 0.6 misses exactly 10% of covered queries, but any draw of folders with
    the diverse one twice misses more. Counted by folder, the cut must keep that folder covered."""
    pos = [0.6, 0.7] * 9 + [0.3, 0.3]
    neg = [0.1, 0.2, 0.25, 0.4, 0.45, 0.5, 0.55]
    p = np.asarray(pos + neg)
    y = np.asarray([1] * len(pos) + [0] * len(neg))
    groups = np.asarray([n // 2 for n in range(len(pos))] + [100 + n for n in range(len(neg))])
    assert balanced_threshold(p, y) == 0.6
    assert balanced_threshold(p, y, groups=groups) == 0.3


def test_balanced_accuracy_interval_resamples_whole_folders() -> None:
    """A judge that calls everything covered has balanced accuracy 0.5 in every draw of folders
    (all covered right, all absent wrong); a perfect one 1.0; one that is wrong on exactly one of
    four covered folders (two queries each) spans draws with that folder absent (1.0) and drawn
    twice or more (below its average of 0.875)."""
    from imrs.expansion.risk import _ba_interval

    covered = np.asarray([True] * 8 + [False] * 8)
    cls = np.asarray([n // 2 for n in range(16)])
    assert _ba_interval(np.ones(16, bool), covered, cls) == (0.5, 0.5)
    assert _ba_interval(covered.copy(), covered, cls) == (1.0, 1.0)
    ok = covered.copy()
    ok[:2] = False  # folder 0's two covered queries judged weak
    low, high = _ba_interval(ok, covered, cls)
    assert high == 1.0 and low < 0.875


def test_best_possible_answered_sets_each_side_on_the_cases_themselves() -> None:
    """Worked by hand: from the top, covered-side precision runs 1, 1, 2/3, 3/4...; from the
    bottom, absent-side precision runs 1, 1/2, 2/3, 3/4...: at 80% two and one case qualify, at
    75% four and four."""
    from imrs.expansion.risk import best_possible_answered

    q = np.asarray([0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1])
    y = np.asarray([1, 1, 0, 1, 0, 0, 1, 0])
    assert best_possible_answered(q, y, 0.80) == 3 / 8
    assert best_possible_answered(q, y, 0.75) == 1.0
    assert best_possible_answered(q, 1 - y, 0.95) == 0.0


def test_families_group_folders_of_one_concept() -> None:
    names = ["Faces", "Faces_easy", "cougar_body", "cougar_face", "chair", "windsor_chair", "sunflower",
             "crocodile", "crocodile_head", "watch"]
    fam = families(names)
    assert fam["Faces"] == {"Faces", "Faces_easy"}
    assert fam["cougar_face"] == {"cougar_body", "cougar_face"}
    assert fam["chair"] == {"chair", "windsor_chair"} and fam["crocodile"] == {"crocodile", "crocodile_head"}
    assert fam["sunflower"] == {"sunflower"} and fam["watch"] == {"watch"}


def test_hit_badges_follow_the_verdict() -> None:
    t = CoverageThresholds(best_min=0.5, good_min=0.4, min_good=3, keep_floor=0.3)

    def verdict(label: str) -> Verdict:
        return Verdict(label != LIKELY, "", "image", [], 0.6, "calibrated", label, t)

    # an unsure answer makes no hit a likely match, however high its score
    assert hit_confidence(verdict(UNCERTAIN), t, 0.9, "okapi", "okapi") == UNCERTAIN
    assert hit_confidence(verdict(NO_MATCH), t, 0.9, "okapi", "okapi") == NO_MATCH
    # a covered answer: the folder it was found in is a likely match down to the floor
    assert hit_confidence(verdict(LIKELY), t, 0.35, "watch", "watch") == LIKELY
    assert hit_confidence(verdict(LIKELY), t, 0.35, "pizza", "watch") == NO_MATCH
    assert hit_confidence(verdict(LIKELY), t, 0.25, "watch", "watch") == NO_MATCH


# ---------------------------------------------------------------------------------------------
# Calibration fits what live search runs
# ---------------------------------------------------------------------------------------------

CLASSES = ["airplanes", "Leopards", "watch", "sunflower", "Motorbikes", "chair", "ketch", "pizza", "dolphin",
           "elephant", "butterfly", "car_side", "grand_piano", "helicopter", "lotus", "revolver", "starfish",
           "umbrella", "laptop", "kangaroo", "Faces", "Faces_easy"]


@pytest.fixture
def calibrated(tmp_path: Path, home: Path, encoder: Any) -> Collection:  # noqa: F811
    c = Collection(make_base(tmp_path / "c", CLASSES, 6), BACKBONE, "flat_ip", home=home, encoder=encoder)
    c.sync()
    report = calibrate(c, kinds=["image"], per_class=4)
    [r] = report.results
    assert r.judge is not None and r.judge_report["fitted"]
    assert r.judge_report["classes_fit"] + r.judge_report["classes_report"] == len(CLASSES)
    assert r.judge_report["folds"] == 5  # thresholds from models that never saw the case's folder
    # every training case has an out-of-fold probability behind the thresholds
    assert len(r.judge.cal_p) == 4 * 2 * 2 * r.judge_report["classes_fit"]
    ext = r.judge_report["external"]
    assert ext["queries"] == r.judge_report["classes_report"] * 4 * 2  # present and absent, views only
    assert ext["precision_ci"][0] <= ext["precision"] <= ext["precision_ci"][1]
    # four images a folder: each query's folder has three other views to stand in for web images
    web = r.judge_report["web"]["external"]
    assert r.judge.web is not None and web["queries"] == ext["queries"]
    assert 0.0 <= web["asked_web"] <= 1.0 and web["precision_ci"][0] <= web["precision"] <= web["precision_ci"][1]
    assert any("with the web check" in line for line in report.lines())
    # the wrong confident answers are named by folder, and there are as many as precision says
    errors = web["confident_errors"]
    assert set(errors) == {"absent_said_covered", "covered_said_absent"}
    # ... and come from the folders the report names as its own, none of them used for fitting
    held = r.judge_report["folders_report"]
    assert len(held) == len(set(held)) == r.judge_report["classes_report"] and set(held) <= set(CLASSES)
    assert all(name in held for side in errors.values() for name in side)
    wrong = sum(n for side in errors.values() for n in side.values())
    assert wrong == round((1 - web["precision"]) * web["answered"] * web["queries"])
    return c


def test_calibrated_judge_decides_live_queries(calibrated: Collection, home: Path) -> None:
    c = calibrated
    model = load_judges(c)["image"]
    assert model.features[-2:] == ("agree", "agree_label")  # ImageNet evidence on a classifier backbone
    s = Settings.from_env(home=home)
    inside = sorted((CALTECH / "sunflower").glob("*.jpg"))[30]  # a sunflower the collection does not hold
    out = run_query(c, Query(image=str(inside), k=5), s)
    v = out.verdict
    assert v.source == "calibrated" and v.probability is not None
    assert v.label in (LIKELY, UNCERTAIN, NO_MATCH)
    assert v.weak == (v.probability < model.t_mid)
    t_low, t_high = model.thresholds(s.coverage_precision)
    assert (v.label == LIKELY) == (v.probability >= t_high) and (v.label == NO_MATCH) == (v.probability <= t_low)
    assert "p=" in v.reason and "top hits" in v.reason
    assert out.to_dict()["verdict"]["probability"] == round(v.probability, 4)
    # no hit is surer than the verdict
    rank = {NO_MATCH: 0, UNCERTAIN: 1, LIKELY: 2}
    assert all(rank[h.confidence] <= rank[v.label] or h.label == out.hits[0].label for h in out.hits)


def test_the_web_check_is_fitted_and_runs_live(calibrated: Collection, home: Path) -> None:
    """The stored judge carries the web check's model; a live web check decides with it, and web
    images of a folder the collection holds are judged more likely covered than those of one it
    lacks, from the same first judgement."""
    from imrs.expansion.judge import context
    from imrs.expansion.webcheck import web_test

    model = load_judges(calibrated)["image"]
    assert model.web is not None and model.web.features == (
        "p1", "to_collection", "to_each_other", "on_label", "same_folder", "apart", "vs_folder", "to_query")
    ctx = context(calibrated)
    # a folder's tightness: the median cosine of its images to their nearest one in the folder
    ids = np.asarray(calibrated.catalog.ids_by_label()["watch"], np.int64)
    V = calibrated.index.get_vectors(ids)
    nearest = [max(float(V[a] @ V[b]) for b in range(len(V)) if b != a) for a in range(len(V))]
    assert ctx.tightness_of("watch") == pytest.approx(float(np.median(nearest)), abs=1e-5)
    assert ctx.tightness_of("no such folder") == ctx.typical_tightness > 0

    def check(folder: str, p1: float, with_query: bool = True) -> Any:
        imgs = sorted((CALTECH / folder).glob("*.jpg"))[40:47]  # not in the collection
        vecs = calibrated.encoder.embed_images([str(x) for x in imgs])
        scores, ids = calibrated.index.search(vecs[1:], 10)
        # the first is the person's photo, the other six the web images of the term
        return web_test(ctx, vecs[1:], scores, ids, "sunflower", folder, model=model, p1=p1, precision=0.95,
                        query_vector=vecs[0] if with_query else None)

    has, lacks = check("sunflower", 0.5), check("trilobite", 0.5)
    assert has.probability is not None and lacks.probability is not None
    assert has.probability > lacks.probability and has.to_collection > lacks.to_collection
    assert has.on_label > lacks.on_label
    # web images of a concept the collection lacks are closer to each other than to what it holds
    assert has.evidence["apart"] > lacks.evidence["apart"]
    # a check that lacks a value its fitted model reads falls back to the rule, and says so by
    # having no probability
    assert check("sunflower", 0.5, with_query=False).probability is None
    lo, hi = model.web.thresholds(0.95)
    for t in (has, lacks):
        assert (t.outcome == LIKELY) == (t.probability >= hi) and (t.outcome == NO_MATCH) == (t.probability <= lo)
        assert t.weak == (t.probability < model.web.t_mid) and "p=" in t.describe()
    # the first judgement counts: the same web images weigh less against a surer first answer
    assert check("trilobite", 0.95).probability > lacks.probability


def test_a_live_search_asks_the_fitted_web_check(calibrated: Collection, home: Path, web: Any) -> None:  # noqa: F811
    """``run_query`` with ``ask_web`` on a calibrated collection: the web images are fetched from
    the loopback web, every value the fitted check reads is measured (the photo's closeness to
    them included), and the fitted check makes the forced decision."""
    from imrs.web import StaticProvider

    model = load_judges(calibrated)["image"]
    assert model.web is not None
    # a precision no calibration can certify leaves the first answer uncertain, so the web is asked
    s = Settings.from_env(home=home, allow_loopback=True, coverage_precision=0.999)
    out = run_query(calibrated, Query(image=str(PHOTOS / "sunflower.jpg"), k=5, term="sunflower", ask_web=True),
                    s, providers=StaticProvider(sun_urls(web, 10)))
    v = out.verdict
    assert v.web is not None and v.web["term"] == "sunflower" and v.web["exemplars"] >= 3
    assert set(model.web.features) - {"p1"} <= set(v.web)
    assert v.web["probability"] is not None and v.weak == (v.web["probability"] < model.web.t_mid)
    lo, hi = model.web.thresholds(0.999)
    assert (v.web["outcome"] == LIKELY) == (v.web["probability"] >= hi)
    assert out.timings["web_check"] > 0


def test_precision_target_is_a_setting(calibrated: Collection, home: Path) -> None:
    model = load_judges(calibrated)["image"]
    lo95, hi95 = model.thresholds(0.95)
    lo80, hi80 = model.thresholds(0.80)
    assert hi80 <= hi95 and lo80 >= lo95  # a lower target answers at least as many confidently
    with pytest.raises(Exception, match="IMRS_COVERAGE_PRECISION"):
        Settings.from_env(env={"IMRS_COVERAGE_PRECISION": "1.5"})


def test_confidence_of_the_bound_is_a_setting(calibrated: Collection, home: Path) -> None:
    """A weaker promise (the thresholds hold with 60% rather than 95% probability) answers at
    least as many confidently, and a live query decides with the thresholds of its own setting."""
    model = load_judges(calibrated)["image"]
    lo95, hi95 = model.thresholds(0.95, 0.95)
    lo60, hi60 = model.thresholds(0.95, 0.60)
    assert hi60 <= hi95 and lo60 >= lo95 and (hi60, lo60) != (hi95, lo95)
    assert model.thresholds(0.95) == (lo95, hi95)  # the default confidence is 95%
    photo = str(sorted((CALTECH / "sunflower").glob("*.jpg"))[30])
    for confidence, (lo, hi) in ((0.95, (lo95, hi95)), (0.60, (lo60, hi60))):
        s = Settings.from_env(home=home, env={"IMRS_COVERAGE_CONFIDENCE": str(confidence)})
        assert s.coverage_confidence == confidence
        v = run_query(calibrated, Query(image=photo, k=3), s).verdict
        assert (v.label == LIKELY) == (v.probability >= hi) and (v.label == NO_MATCH) == (v.probability <= lo)
    with pytest.raises(Exception, match="IMRS_COVERAGE_CONFIDENCE"):
        Settings.from_env(env={"IMRS_COVERAGE_CONFIDENCE": "0.2"})


def test_calibrate_cli_reports_at_the_settings_targets(calibrated: Collection, home: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """``imrs calibrate`` reports at the precision and confidence the person set, so the figures
    it prints are those of the verdicts they will get."""
    from imrs.cli import main

    monkeypatch.setenv("IMRS_HOME", str(home))
    monkeypatch.setenv("IMRS_COVERAGE_PRECISION", "0.9")
    monkeypatch.setenv("IMRS_COVERAGE_CONFIDENCE", "0.8")
    capsys.readouterr()
    assert main(["calibrate", "--root", str(calibrated.root), "--backbone", BACKBONE, "--kind", "image",
                 "--per-class", "4", "--json", "--dry-run"]) == 0
    [kind] = json.loads(capsys.readouterr().out)["kinds"]
    report = kind["judge_report"]
    assert (report["precision_target"], report["confidence"]) == (0.9, 0.8)
    model = JudgeModel.from_dict(kind["judge"])
    assert model.thresholds(0.9, 0.8) == pytest.approx((report["t_low"], report["t_high"]), abs=1e-4)
    assert model.thresholds(0.9, 0.8) != model.thresholds(0.9, 0.999)


def test_hand_set_thresholds_win_over_the_judge(calibrated: Collection, home: Path) -> None:
    out = run_query(calibrated, Query(image=str(PHOTOS / "sunflower.jpg"), k=3),
                    Settings.from_env(home=home, coverage_best_min=0.99))
    assert out.verdict.source == "env" and out.verdict.weak and out.verdict.probability is None


def test_expand_that_cannot_grow_exits_non_zero(tmp_path: Path, home: Path) -> None:
    root = make_base(tmp_path / "c", ["Leopards", "watch", "airplanes"], 4)
    env = {"IMRS_HOME": str(home), "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    run = [sys.executable, "-m", "imrs.cli"]
    subprocess.run([*run, "index", str(root), "--backbone", BACKBONE, "--runtime", "fp32"], env=env, check=True,
                   capture_output=True, timeout=300)
    # an image query grows only with a confirmed term: weak + --expand without one cannot grow
    out = subprocess.run([*run, "search", "--image", str(PHOTOS / "giraffe.jpg"), "--expand", "--root", str(root)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert "coverage weak" in out.stdout, out.stdout + out.stderr
    assert out.returncode == 3 and "confirm a search term" in out.stdout
    ok = subprocess.run([*run, "search", "--image", str(PHOTOS / "giraffe.jpg"), "--root", str(root)],
                        env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0  # no growth asked: a weak verdict is an answer, not a failure


def test_web_evidence_on_vectors_worked_by_hand() -> None:
    """Five web images: unit vectors e0, e0 (a copy: counts once), e1, e2 and m = 0.6 e0 + 0.8 e1."""
    from imrs.expansion.webcheck import web_evidence

    class Ctx:  # the judge context's labels and folder tightness, all web_evidence reads of it
        label_of = {10: "kite", 11: "kite", 12: "umbrella", 13: "kite", 14: "umbrella"}

        def tightness_of(self, label: str) -> float:
            return {"kite": 0.6, "umbrella": 0.5}[label]

    e = np.eye(4, dtype=np.float32)
    ex = np.stack([e[0], e[0], e[1], e[2], 0.6 * e[0] + 0.8 * e[1]])
    best = [[0.9, 0.2, 0.1], [0.9, 0.2, 0.1], [0.7, 0.1, 0.1], [0.5, 0.4, 0.3], [0.8, 0.3, 0.2]]
    ids = [[10, 12, 11], [10, 12, 11], [12, 10, 14], [11, 12, 13], [13, 14, 10]]
    ev = web_evidence(Ctx(), ex, best, ids, "kite", query_vector=e[0])
    assert ev is not None
    # mean cosine to the other distinct images: e0 0.6 / 3, e1 0.8 / 3, e2 0, m 1.4 / 3 -> median
    assert ev["to_each_other"] == pytest.approx((0.2 + 0.8 / 3) / 2, abs=1e-6)
    assert ev["to_collection"] == pytest.approx(0.75, abs=1e-6)  # median of .9 .7 .5 .8
    # best hits kite, umbrella, kite, kite: three of four agree; the best three mostly "kite" for
    # three of four (e1's are umbrella, kite, umbrella)
    assert ev["same_folder"] == pytest.approx(0.75) and ev["on_label"] == pytest.approx(0.75)
    # best minus nearest other web image: .9 - .6, .7 - .8, .5 - 0, .8 - .8 -> median (0 + .3) / 2
    assert ev["apart"] == pytest.approx(0.15, abs=1e-6)
    # best cosine minus its folder's tightness: .9 - .6, .7 - .5, .5 - .6, .8 - .6 -> median .2
    assert ev["vs_folder"] == pytest.approx(0.2, abs=1e-6)
    # the query (e0) to the web images: 1, 0, 0, 0.6 -> median 0.3
    assert ev["to_query"] == pytest.approx(0.3, abs=1e-6)
    assert "to_query" not in web_evidence(Ctx(), ex, best, ids, "kite")
    assert web_evidence(Ctx(), ex[:2], best[:2], ids[:2], "kite") is None  # one distinct image is too few
    # a tie among the labels goes to the one ranked first, in every process
    tie = web_evidence(Ctx(), ex[2:], [[0.5, 0.4]] * 3, [[12, 10]] * 3, "umbrella")
    assert tie is not None and tie["on_label"] == 1.0 and tie["same_folder"] == 1.0


# ---------------------------------------------------------------------------------------------
# Asking the web, for answers that stay uncertain (loopback web server)
# ---------------------------------------------------------------------------------------------


def _collection_of(root: Path, files: dict[str, list[Path]]) -> Path:
    for label, paths in files.items():
        for src in paths:
            dst = root / label / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(src)
    return root


def test_uncertain_answers_ask_the_web(tmp_path: Path, home: Path, encoder: Any, web: Any) -> None:  # noqa: F811
    from imrs.web import StaticProvider

    sunflowers = sorted((CALTECH / "sunflower").glob("*.jpg"))[20:26]  # not what the web serves
    others = {c: sorted((CALTECH / c).glob("*.jpg"))[:6] for c in ("airplanes", "Leopards", "watch")}
    with_sun = Collection(_collection_of(tmp_path / "a", {**others, "sunflower": sunflowers}), BACKBONE, "flat_ip",
                          home=home, encoder=encoder)
    without = Collection(_collection_of(tmp_path / "b", others), BACKBONE, "flat_ip", home=home, encoder=encoder)
    for c in (with_sun, without):
        c.sync()
    # hand-set bars that leave any answer "uncertain", so the web decides
    s = Settings.from_env(home=home, allow_loopback=True, coverage_best_min=0.99, coverage_good_min=0.05)
    provider = StaticProvider(sun_urls(web, 6))
    query = Query(image=str(PHOTOS / "sunflower.jpg"), k=5, term="sunflower", ask_web=True)
    rows_before = len(with_sun.catalog)
    has = run_query(with_sun, query, s, providers=provider)
    assert has.verdict.web is not None and has.verdict.web["exemplars"] == 6
    assert has.verdict.web["outcome"] == LIKELY and has.verdict.label == LIKELY and not has.verdict.weak
    assert has.hits[0].label == "sunflower" and has.hits[0].confidence == LIKELY
    assert "web check of 'sunflower': covered" in has.verdict.reason and has.timings["web_check"] > 0
    assert len(with_sun.catalog) == rows_before and not list((tmp_path / "a").glob("dynamic*"))  # nothing kept
    lacks = run_query(without, query, s, providers=provider)
    assert lacks.verdict.web["outcome"] == NO_MATCH and lacks.verdict.label == NO_MATCH and lacks.verdict.weak
    assert all(h.confidence == NO_MATCH for h in lacks.hits)
    assert lacks.verdict.web["to_each_other"] > lacks.verdict.web["to_collection"]
    # the photo is judged against the web images too (image queries have a vector in their space)
    assert has.verdict.web["apart"] > lacks.verdict.web["apart"]
    assert has.verdict.web["to_query"] == pytest.approx(lacks.verdict.web["to_query"], abs=1e-4)
    # a filter that leaves the sunflowers out asks about what it keeps: there, they are absent
    kept = run_query(with_sun, replace(query, where="label != 'sunflower'"), s, providers=provider)
    assert kept.verdict.web["outcome"] == NO_MATCH and kept.verdict.weak
    assert kept.verdict.web["to_collection"] == pytest.approx(lacks.verdict.web["to_collection"], abs=1e-4)
    # not asked (no growth, no --ask-web): the web is never touched
    quiet = run_query(without, Query(image=str(PHOTOS / "sunflower.jpg"), k=5), s, providers=provider)
    assert quiet.verdict.web is None and quiet.verdict.label == UNCERTAIN and "web_check" not in quiet.timings
    # offline: the verdict stays as it was and says why
    dead = StaticProvider([web.url("/status/404")] * 6)
    off = run_query(without, query, s, providers=dead)
    assert off.verdict.label == UNCERTAIN and off.verdict.web and off.verdict.web.get("error")
