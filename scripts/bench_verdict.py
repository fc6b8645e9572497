"""How often is the coverage verdict right on queries that look like other people's photos?

Runs ``imrs calibrate``'s protocol (``imrs.expansion.calibrate``: the judge fitted on 70% of the
folders, its precision thresholds set on out-of-fold probabilities of those, everything measured
on the last 30%,
image queries asked as indexed and as external-style views, a concept absent only with its whole
family of folders) for several seeds, and prints, per query kind:

- precision of the confident answers and the share of queries that got one (target 95% / 70%);
- balanced accuracy of the forced grow-or-not decision, and how often a covered concept is
  judged weak (the no-regression bar, 10%);
- the same forced decision made by the threshold rule alone (the verdict before the judge), on
  the same held-out cases, as the baseline.

Then judges the real photos in ``../shared/photos`` with the first seed's judge (their truth:
dragonfly, sunflower and the portrait are concepts Caltech-101 has; the others are not).

    python scripts/bench_verdict.py --root ../shared/datasets/caltech101 --write-docs

``--write-docs`` replaces the block between ``<!-- bench_verdict:BACKBONE:start -->`` and
``<!-- bench_verdict:BACKBONE:end -->`` in docs/benchmarks.md with what this run printed.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from imrs.bench.docblock import host_line, replace_block  # noqa: E402
from imrs.collection import Collection  # noqa: E402
from imrs.config import CALIBRATE_PER_CLASS, COVERAGE_CONFIDENCE, caltech_dir, shared_data_dir  # noqa: E402
from imrs.expansion.calibrate import calibrate, save_calibration  # noqa: E402
from imrs.expansion.cases import PHRASINGS, families  # noqa: E402
from imrs.expansion.coverage import LIKELY, NO_MATCH  # noqa: E402
from imrs.expansion.judge import labelled_classes  # noqa: E402
from imrs.expansion.risk import outcome_metrics  # noqa: E402
from imrs.expansion.terms import readable_label  # noqa: E402
from imrs.query import Query, run_query  # noqa: E402

PHOTO_TRUTH = {"dragonfly.jpg": True, "sunflower.jpg": True, "grace_hopper.jpg": True}


def pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def web_part(judge_report: dict) -> dict | None:
    """The two-step (web check) figures of a kind's report: on the external-style views when there
    are any, else on every query."""
    web = judge_report.get("web") or {}
    return web.get("external") or web.get("all")


def live_text(coll: Collection, folders: list[str], names: list[str]) -> dict[str, dict]:
    """Text queries through ``run_query`` itself (the collection's stored judge, no web), on the
    report's held-out folders, in ``calibrate``'s phrasings: once with the folder there, once with
    it and its family left out by a ``--where`` filter. With the collection's words (the default,
    where a folder's name can answer for itself) and without them (what calibration simulates:
    the two should agree, or the fitted judge is not what runs)."""
    fam = families(names)
    out = {}
    for words in (True, False):
        said_cov, said_abs, ok, y, cls = [], [], [], [], []
        for c, name in enumerate(folders):
            gone = sorted(fam.get(name, {name}))
            assert all("'" not in g for g in gone), gone
            away = "label not in [" + ", ".join(f"'{g}'" for g in gone) + "]"
            for form in PHRASINGS:
                text = form.format(readable_label(name))
                for present in (True, False):
                    v = run_query(coll, Query(text=text, k=10, metadata=words,
                                              where=None if present else away)).verdict
                    said_cov.append(v.label == LIKELY)
                    said_abs.append(v.label == NO_MATCH)
                    ok.append(not v.weak)
                    y.append(int(present))
                    cls.append(c)
        out["with words" if words else "no words"] = outcome_metrics(
            np.asarray(said_cov), np.asarray(said_abs), np.asarray(ok), np.asarray(y), np.asarray(cls))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(caltech_dir()))
    ap.add_argument("--photos", default=str(shared_data_dir() / "photos"))
    ap.add_argument("--home", default=str(REPO / "runs" / "bench_verdict"))
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--per-class", type=int, default=CALIBRATE_PER_CLASS)
    ap.add_argument("--precision", type=float, default=0.95)
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--no-live", action="store_true", help="skip the text queries through run_query")
    ap.add_argument("--also-confidence", type=float, nargs="*", default=[0.90, 0.80],
                    help="also calibrate at these confidences of the precision bound (a table of what each gives)")
    args = ap.parse_args()

    coll = Collection(args.root, args.backbone, "flat_ip", home=args.home, runtime="fp32")
    rep = coll.sync(progress=True)
    print(rep.summary(), flush=True)
    rows: dict[str, list[dict]] = {}
    live: dict[int, dict[str, dict]] = {}
    by_conf: dict[tuple[str, float], list[dict]] = {}
    first = None
    for seed in args.seeds:
        r = calibrate(coll, per_class=args.per_class, seed=seed, save=False, precision=args.precision,
                      confidence=COVERAGE_CONFIDENCE)
        for c in args.also_confidence:
            rc = calibrate(coll, per_class=args.per_class, seed=seed, save=False, precision=args.precision,
                           confidence=c)
            for k in rc.results:
                w = web_part(k.judge_report)
                if w:
                    by_conf.setdefault((k.kind, c), []).append(w)
        first = first or r
        for k in r.results:
            j = k.judge_report
            part = j.get("external") or j.get("all") or {}
            rows.setdefault(k.kind, []).append({
                "seed": seed, "fitted": j.get("fitted", False), "precision": part.get("precision", float("nan")),
                "answered": part.get("answered", 0.0), "ba": part.get("balanced_accuracy", float("nan")),
                "covered_weak": part.get("covered_judged_weak", float("nan")),
                "rule_ba": k.accuracy_held_out, "builtin_ba": k.builtin_held_out,
                "classes": j.get("classes_report", k.classes_held_out), "queries": part.get("queries", 0),
                "web": web_part(j)})
        print(f"seed {seed}: " + " | ".join(r.lines()), flush=True)
        text = next((k for k in r.results if k.kind in ("text", "textmap") and k.judge_report.get("fitted")), None)
        if text is not None and not args.no_live:
            save_calibration(coll, r)  # this seed's judges answer the live queries
            names = sorted(labelled_classes(coll, 2))  # the folders calibration draws from
            live[seed] = live_text(coll, text.judge_report["folders_report"], names)
            sim = live[seed]["calibration"] = text.judge_report["all"]
            print(f"seed {seed} live text: " + "; ".join(
                f"{view}: {pct(m['precision'])} right, {pct(m['answered'])} answered, BA {m['balanced_accuracy']:.3f}"
                for view, m in live[seed].items() if view != "calibration") +
                f" (calibration's own simulation: {pct(sim['precision'])} right, {pct(sim['answered'])} answered, "
                f"BA {sim['balanced_accuracy']:.3f})", flush=True)

    out = [f"{host_line()} Backbone {args.backbone}, {len(coll.index)} images, precision target "
           f"{pct(args.precision)}, {args.per_class} image queries per folder, seeds {args.seeds}. Figures are for "
           "the held-out 30% of folders; image figures are the external-style views.", "",
           "| kind | seed | confident answers right | answered confidently | forced decision (balanced) | "
           "covered judged weak | threshold rule alone (balanced) | built-in thresholds (balanced) | "
           "asked the web | with web check: confident right | answered confidently | forced (balanced) | "
           "covered judged weak |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    nan = float("nan")

    def web(x: dict, key: str) -> float:
        return x["web"][key] if x["web"] else nan

    for kind, rs in rows.items():
        for x in rs:
            out.append(f"| {kind} | {x['seed']} | {pct(x['precision']) if x['answered'] else '-'} | "
                       f"{pct(x['answered'])} | {x['ba']:.3f} | {pct(x['covered_weak'])} | {x['rule_ba']:.3f} | "
                       f"{x['builtin_ba']:.3f} | {pct(web(x, 'asked_web'))} | "
                       f"{pct(web(x, 'precision')) if web(x, 'answered') else '-'} | {pct(web(x, 'answered'))} | "
                       f"{web(x, 'balanced_accuracy'):.3f} | {pct(web(x, 'covered_judged_weak'))} |")
        ba = np.mean([x["ba"] for x in rs])
        w = [x for x in rs if x["web"]]

        def mw(key: str, w: list = w) -> float:
            return float(np.mean([web(x, key) for x in w])) if w else nan

        out.append(f"| {kind} | mean | | {pct(np.mean([x['answered'] for x in rs]))} | {ba:.3f} | "
                   f"{pct(np.mean([x['covered_weak'] for x in rs]))} | {np.mean([x['rule_ba'] for x in rs]):.3f} | "
                   f"{np.mean([x['builtin_ba'] for x in rs]):.3f} | {pct(mw('asked_web'))} | | "
                   f"{pct(mw('answered'))} | {mw('balanced_accuracy'):.3f} | {pct(mw('covered_judged_weak'))} |")

    out += ["", "Where the wrong confident answers (with the web check) came from, all seeds together "
            "(\"absent, said covered\": the folder and its family were left out and the judge still said "
            "covered; \"covered, said absent\": the folder was there):", "",
            "| kind | folder | wrong answer | queries | share of the kind's wrong answers |", "|---|---|---|---|---|"]
    for kind, rs in rows.items():
        wrong: Counter[tuple[str, str]] = Counter()
        for x in rs:
            for side, counts in ((x["web"] or {}).get("confident_errors") or {}).items():
                for name, n in counts.items():
                    wrong[(name, side)] += n
        total = sum(wrong.values())
        for (name, side), n in wrong.most_common(8):
            what = "absent, said covered" if side == "absent_said_covered" else "covered, said absent"
            out.append(f"| {kind} | {name} | {what} | {n} | {pct(n / total)} |")
        out.append(f"| {kind} | all {len(wrong)} folders | | {total} | 100% |")

    if by_conf:
        out += ["", "The same seeds calibrated for a weaker promise (`IMRS_COVERAGE_CONFIDENCE`: how sure the "
                "precision bound must be; the default is "
                f"{pct(COVERAGE_CONFIDENCE)}), two-step figures (with the web check). The last row of each kind "
                "is what thresholds on the final probability, chosen on the held-out folders themselves, would "
                "answer at the same precision: no calibration can know the folders it will be asked about, so "
                "the gap to it is the price of that, not of the evidence:", "",
                "| kind | confidence | confident answers right, per seed (mean) | answered confidently | "
                "forced decision (balanced) | covered judged weak |", "|---|---|---|---|---|---|"]
        for kind, rs in rows.items():
            confs = [(COVERAGE_CONFIDENCE, [x["web"] for x in rs if x["web"]])]
            confs += [(c, by_conf.get((kind, c), [])) for c in args.also_confidence]
            for c, ws in confs:
                if not ws:
                    continue
                precs = [w["precision"] for w in ws if w["answered"]]
                mean = f"{100 * np.mean(precs):.1f}%" if precs else "-"
                out.append(f"| {kind} | {pct(c)} | {'/'.join(f'{100 * x:.0f}' for x in precs)} ({mean}) | "
                           f"{pct(np.mean([w['answered'] for w in ws]))} | "
                           f"{np.mean([w['balanced_accuracy'] for w in ws]):.3f} | "
                           f"{pct(np.mean([w['covered_judged_weak'] for w in ws]))} |")
            best = [x["web"]["best_possible_answered"] for x in rs if x["web"] and "best_possible_answered" in x["web"]]
            if best:  # what no calibration can reach: thresholds chosen on the held-out folders themselves
                out.append(f"| {kind} | thresholds set on the held-out folders themselves (an upper estimate) | "
                           f"{pct(args.precision)} on those folders | {pct(np.mean(best))} | | |")
    if live:
        out += ["", "Text queries through `run_query` itself (the seed's stored judge, first judgement, no web), on "
                "the same held-out folders in the same phrasings, each once with its folder and once with the "
                "folder and its family left out by a `--where` filter. \"With words\": the default, where the "
                "collection's folder names can answer; \"no words\": `--no-metadata`, the figures calibration "
                "simulates (its own simulation of the same queries in the last columns):", "",
                "| seed | view | confident answers right | answered confidently | forced decision (balanced) | "
                "covered judged weak | calibration's simulation: right | answered | balanced |",
                "|---|---|---|---|---|---|---|---|---|"]
        for seed, views in live.items():
            sim = views["calibration"]
            for view in ("with words", "no words"):
                m = views[view]
                tail = (f"{pct(sim['precision']) if sim['answered'] else '-'} | {pct(sim['answered'])} | "
                        f"{sim['balanced_accuracy']:.3f}") if view == "no words" else " | | "
                out.append(f"| {seed} | {view} | {pct(m['precision']) if m['answered'] else '-'} | "
                           f"{pct(m['answered'])} | {m['balanced_accuracy']:.3f} | {pct(m['covered_judged_weak'])} | "
                           f"{tail} |")
        for view in ("with words", "no words"):
            ms = [v[view] for v in live.values()]
            out.append(f"| mean | {view} | | {pct(np.mean([m['answered'] for m in ms]))} | "
                       f"{np.mean([m['balanced_accuracy'] for m in ms]):.3f} | "
                       f"{pct(np.mean([m['covered_judged_weak'] for m in ms]))} | | | |")
    photos = sorted(Path(args.photos).glob("*.jpg")) if Path(args.photos).is_dir() else []
    if photos and first is not None:
        save_calibration(coll, first)  # the first seed's judge answers the photos, as a live search would
        out += ["", "Real photos (not in the collection), judged live with the first seed's judge:", "",
                "| photo | truth | verdict | p(covered) | top folder |", "|---|---|---|---|---|"]
        right = 0
        for p in photos:
            o = run_query(coll, Query(image=str(p), k=10))
            v = o.verdict
            truth = PHOTO_TRUTH.get(p.name, False)
            right += (not v.weak) == truth
            top = o.hits[0].label if o.hits else "-"
            prob = "-" if v.probability is None else f"{v.probability:.2f}"
            out.append(f"| {p.name} | {'has' if truth else 'lacks'} | {v.label} ({'weak' if v.weak else 'ok'}) | "
                       f"{prob} | {top} |")
        out.append(f"\nForced decision right on {right}/{len(photos)} photos.")
    text = "\n".join(out)
    print(text)
    if args.write_docs:
        doc = REPO / "docs" / "benchmarks.md"
        replace_block(doc, f"bench_verdict:{args.backbone}", text)
        print(f"wrote {doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
