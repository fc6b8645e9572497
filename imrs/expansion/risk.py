"""Thresholds with a guarantee, and how confident answers are measured.

The statistics of the judge (``imrs.expansion.judge``), apart from its evidence and its model, so
that both the live decision and ``imrs calibrate``'s report rest on one implementation:

- ``precision_thresholds``: the two confident outcomes' thresholds, each meeting the precision the
  person asks for at the confidence they ask for (fixed-sequence testing, as in Learn-then-Test risk
  control, with a lower bound from a bootstrap of whole folders: ``folder_bootstrap``);
- ``balanced_threshold``: the forced decision (should IMRS grow?) under the no-regression bar;
- ``outcome_metrics`` and friends: precision of the confident answers, the share that got one and
  the balanced accuracy of the forced decision, each with a 90% interval, as the report shows them;
  ``best_possible_answered``: what thresholds chosen on the measured cases themselves would answer.

Everything here is a free function over arrays (probabilities, truth, the folder of each case):
no collection, no model.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..config import COVERAGE_CONFIDENCE

#: 1 - the default confidence of the precision bound (the thresholds hold with probability 1 - DELTA).
DELTA = 1.0 - COVERAGE_CONFIDENCE
#: A confident side must rest on at least this many folders: a bound drawn from a handful of
#: concepts says little about the next one.
MIN_GROUPS = 8
#: Thresholds tested per side when there are many calibration cases (see ``precision_thresholds``).
GRID = 100


def folder_bootstrap(groups: np.ndarray, reps: int) -> np.ndarray:
    """(reps, cases) weights of a bootstrap that draws whole folders (``groups``) with replacement:
    how often each case's folder was drawn in each replicate. Queries of one concept succeed or
    fail together, so the precision bound and the forced decision's miss bar both resample folders,
    with the same fixed seed."""
    ug, inv = np.unique(np.asarray(groups), return_inverse=True)
    rng = np.random.default_rng(0)
    return np.stack([np.bincount(rng.integers(0, len(ug), len(ug)), minlength=len(ug))[inv] for _ in range(reps)])


def min_answers(alpha: float, delta: float = DELTA) -> int:
    """The fewest answers whose error bound can meet ``alpha`` at all (zero errors among them):
    below this, a run of lucky answers would set a threshold nothing supports."""
    return int(math.ceil(math.log(delta) / math.log(1.0 - alpha)))


def _side(p: np.ndarray, wrong: np.ndarray, W: np.ndarray, precision: float, need: int, delta: float,
          descending: bool, inv: np.ndarray | None = None) -> float | None:
    """The most liberal threshold on one side whose bootstrap lower bound of precision stays at
    ``precision``, scanning from the most conservative (fixed sequence); None: none qualifies."""
    order = np.argsort(-p if descending else p, kind="stable")
    ps = p[order]
    Wo = W[:, order]
    prec = 1.0 - np.cumsum(Wo * wrong[order], axis=1) / np.maximum(np.cumsum(Wo, axis=1), 1)
    lower = np.quantile(prec, delta, axis=0)
    best = None
    # the tested thresholds: every answer count from ``need`` on, in steps of 1/GRID of the cases
    # (a few hundred calibration cases are all tested; thousands are not tested one by one, where
    # a single unlucky error among the very first would stop the scan)
    # and the scan starts where a twentieth of the cases are answered (or ``need``, if more), a count
    # that does not depend on the truth
    step = max(1, len(ps) // GRID)
    for j in range(max(need, len(ps) // 20) - 1, len(ps), step):
        while j + 1 < len(ps) and ps[j + 1] == ps[j]:
            j += 1  # a threshold selects every tie
        if inv is not None and len(np.unique(inv[order[:j + 1]])) < min(MIN_GROUPS, len(np.unique(inv))):
            continue
        if lower[j] < precision:
            break
        best = float(ps[j])
    return best


def precision_thresholds(p: np.ndarray, y: np.ndarray, precision: float, groups: np.ndarray | None = None,
                         delta: float = DELTA, reps: int = 300) -> tuple[float, float]:
    """(t_low, t_high): "covered" when p >= t_high, "not covered" when p <= t_low, each with a
    precision of at least ``precision`` at confidence ``1 - delta``.

    Thresholds are tried in an order fixed without looking at the truth (from the one answering
    a twentieth of the cases, or the fewest any bound could accept, ``min_answers``, to the most
    liberal) and the scan
    stops at the first that fails (fixed-sequence testing, as in Learn-then-Test risk control, so
    no multiple-testing correction is needed). The bound is the ``delta`` quantile of precision
    over a bootstrap that resamples whole ``groups`` (the folder a query came from): queries of
    one concept succeed or fail together, and a bound that treated them as independent promised
    95% and delivered 88% on folders it had not seen."""
    p = np.asarray(p, np.float64)
    y = np.asarray(y, int)
    if not len(p):
        return -math.inf, math.inf
    groups = np.arange(len(p)) if groups is None else np.asarray(groups)
    ug, inv = np.unique(groups, return_inverse=True)
    W = folder_bootstrap(groups, reps)
    # the scan never starts before the default confidence's start: a weaker promise then only
    # loosens the bound at every tested threshold, so it answers at least as many
    need = min_answers(1.0 - precision, min(delta, DELTA))
    grouped = inv if len(ug) < len(p) else None
    hi = _side(p, y == 0, W, precision, need, delta, descending=True, inv=grouped)
    lo = _side(p, y == 1, W, precision, need, delta, descending=False, inv=grouped)
    t_high = math.inf if hi is None else hi
    t_low = -math.inf if lo is None else lo
    if t_low >= t_high:  # both sides confident everywhere: split at the middle
        t_low = t_high = (t_low + t_high) / 2
    return t_low, t_high


#: The no-regression bar of the forced decision: at most this share of covered concepts judged weak...
MAX_MISS = 0.10
#: ...with this confidence over the calibration's folders, when the cases' folders are known.
MISS_CONFIDENCE = 0.90


def balanced_threshold(p: np.ndarray, y: np.ndarray, max_miss: float = MAX_MISS, groups: np.ndarray | None = None,
                       confidence: float = MISS_CONFIDENCE, reps: int = 300) -> float:
    """The forced decision: the threshold of best balanced accuracy among those that call at most
    ``max_miss`` of covered queries weak (growing a concept the collection has costs a download and
    clutters it; missing an absent one only asks the person), else of best balanced accuracy.

    With ``groups`` (the folder each case came from) the miss rate must stay under ``max_miss`` at
    its ``confidence`` quantile over a bootstrap of whole folders, not just on average: a diverse
    folder's queries are missed together, and a bar met only on average was missed on one held-out
    draw in five."""
    p = np.asarray(p, np.float64)
    y = np.asarray(y, int)
    pos, neg = np.sort(p[y == 1]), np.sort(p[y == 0])
    cands = np.unique(p)
    if not len(cands):
        return 0.5
    tpr = 1.0 - np.searchsorted(pos, cands, side="left") / max(len(pos), 1) if len(pos) else np.zeros(len(cands))
    tnr = np.searchsorted(neg, cands, side="left") / len(neg) if len(neg) else np.zeros(len(cands))
    miss = 1.0 - tpr
    if groups is not None and len(pos):
        # bootstrap weights of the covered cases, in the order of their probabilities
        order = np.argsort(p[y == 1], kind="stable")
        w = folder_bootstrap(groups, reps)[:, y == 1][:, order].astype(np.float64)
        below = np.concatenate([np.zeros((reps, 1)), np.cumsum(w, axis=1)], axis=1)  # weight below the k-th
        k = np.searchsorted(pos, cands, side="left")
        miss = np.quantile(below[:, k] / np.maximum(below[:, -1:], 1.0), confidence, axis=0)
    allowed = miss <= max_miss + 1e-12
    ba = (tpr + tnr) / 2
    pool = np.flatnonzero(allowed) if allowed.any() else np.arange(len(cands))
    best = pool[np.lexsort((cands[pool], -ba[pool]))[0]]  # best balanced accuracy, then the lowest cut
    return float(cands[best])


# ---------------------------------------------------------------------------------------------
# Measuring confident answers (the calibration report)
# ---------------------------------------------------------------------------------------------


def balanced_accuracy(ok: np.ndarray, covered: np.ndarray) -> tuple[float, float, float]:
    """(balanced accuracy, covered judged ok, absent judged weak)."""
    tpr = float(ok[covered].mean()) if covered.any() else 0.0
    tnr = float((~ok[~covered]).mean()) if (~covered).any() else 0.0
    return (tpr + tnr) / 2, tpr, tnr


def wilson(k: int, n: int, z: float = 1.645) -> tuple[float, float]:
    """90% Wilson interval of a proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, mid - half), min(1.0, mid + half))


def _ba_interval(ok: np.ndarray, covered: np.ndarray, cls: np.ndarray, reps: int = 400) -> tuple[float, float]:
    """90% interval of balanced accuracy over the bootstrap of whole folders the thresholds use
    (``folder_bootstrap``): queries of one folder are not independent."""
    W = folder_bootstrap(cls, reps).astype(np.float64)
    hit = ok.astype(np.float64)
    tpr = (W * (hit * covered)).sum(axis=1) / np.maximum((W * covered).sum(axis=1), 1e-12)
    tnr = (W * ((1.0 - hit) * ~covered)).sum(axis=1) / np.maximum((W * ~covered).sum(axis=1), 1e-12)
    vals = (tpr + tnr) / 2  # a side no drawn folder has counts 0, as in ``balanced_accuracy``
    return (float(np.quantile(vals, 0.05)), float(np.quantile(vals, 0.95)))


def outcome_metrics(said_covered: np.ndarray, said_absent: np.ndarray, forced_ok: np.ndarray, y: np.ndarray,
                    cls: np.ndarray) -> dict[str, Any]:
    """Precision of the confident answers (``said_covered``/``said_absent``), the share that got
    one, and the forced decision (``forced_ok``: judged covered), with 90% intervals."""
    covered = y == 1
    confident = said_covered | said_absent
    right = int((said_covered & covered).sum() + (said_absent & ~covered).sum())
    n_conf = int(confident.sum())
    ba, tpr, tnr = balanced_accuracy(forced_ok, covered)
    return {"queries": int(len(y)), "precision": right / n_conf if n_conf else 1.0,
            "precision_ci": list(wilson(right, n_conf)), "answered": n_conf / len(y) if len(y) else 0.0,
            "answered_ci": list(wilson(n_conf, int(len(y)))), "balanced_accuracy": ba,
            "balanced_accuracy_ci": list(_ba_interval(forced_ok, covered, cls)),
            "covered_judged_weak": 1.0 - tpr, "absent_judged_ok": 1.0 - tnr,
            "covered_confident": float(said_covered[covered].mean()) if covered.any() else 0.0,
            "absent_confident": float(said_absent[~covered].mean()) if (~covered).any() else 0.0}


def best_possible_answered(q: np.ndarray, y: np.ndarray, precision: float) -> float:
    """The share of queries thresholds chosen on these very cases could answer at ``precision``
    (each side's plain precision, the most liberal cut that still meets it). No calibration can
    know the folders it will be asked about, so this is an upper estimate: the gap to what the
    calibrated thresholds answer is what not knowing them in advance costs."""
    q, y = np.asarray(q, np.float64), np.asarray(y, int)
    if not len(q):
        return 0.0

    def side(order: np.ndarray, wrong: np.ndarray) -> int:
        prec = 1.0 - np.cumsum(wrong[order]) / np.arange(1, len(order) + 1)
        ok = np.flatnonzero(prec >= precision - 1e-12)
        return int(ok[-1]) + 1 if len(ok) else 0

    n = side(np.argsort(-q, kind="stable"), y == 0) + side(np.argsort(q, kind="stable"), y == 1)
    return min(n, len(q)) / len(q)


def judge_metrics(p: np.ndarray, y: np.ndarray, cls: np.ndarray, t_low: float, t_high: float,
                  t_mid: float) -> dict[str, Any]:
    """Precision of the confident answers, the share that got one, and the forced decision."""
    return outcome_metrics(p >= t_high, p <= t_low, p >= t_mid, y, cls)
