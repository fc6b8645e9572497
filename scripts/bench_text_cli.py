"""Wall time of ``imrs search --text`` as a brand-new process: what a shell user waits for.

    IMRS_HOME=runs/c101 .venv/bin/python -m imrs.cli index ../shared/datasets/caltech101 \\
        --backbone efficientnet_lite0 --indexer hnsw            # once, ~2 min
    .venv/bin/python scripts/bench_text_cli.py --home runs/c101 --repeats 5

Every measurement is a separate ``python -m imrs.cli search --text ...`` process (median of
``--repeats``), next to baselines run in the same session: ``python -c pass`` and importing the CLI
(``imrs --help``). Cases:

- *repeat*: the same query as the run before it (the warm path: plan and sentence caches hit);
- *new text*: a query never seen before (WordNet, and the sentence model for some senses, run);
- *repeat, --no-metadata*: visual ranking only.

Then one in-process breakdown (imports, opening the collection, ``run_query``'s own timings)
says what dominates.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", required=True, help="IMRS_HOME holding the indexed collection (its active one)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--query", default="a photo of a dog")
    args = ap.parse_args()
    env = {**os.environ, "IMRS_HOME": str(Path(args.home).resolve()), "PYTHONPATH": str(REPO)}
    py = sys.executable
    cli = [py, "-m", "imrs.cli"]
    search = [*cli, "search", "-k", "10", "--text"]

    subprocess.run([*search, args.query], env=env, cwd=REPO, check=True, stdout=subprocess.DEVNULL)  # warm caches
    rows: dict[str, list[float]] = {"python -c pass": [], "imrs --help (imports)": [], "repeat": [],
                                    "repeat, --no-metadata": [], "new text": []}
    for i in range(args.repeats):
        rows["python -c pass"].append(timed([py, "-c", "pass"], env))
        rows["imrs --help (imports)"].append(timed([*cli, "--help"], env))
        rows["repeat"].append(timed([*search, args.query], env))
        rows["repeat, --no-metadata"].append(timed([*search, args.query, "--no-metadata"], env))
        # a text never seen before: a real word plus a fresh token so no cache can answer it
        rows["new text"].append(timed([*search, f"a wooden chair {uuid.uuid4().hex[:6]} {i}"], env))
    base = statistics.median(rows["python -c pass"])
    print(f"{'case':28s} {'median s':>9s} {'min s':>7s} {'max s':>7s}  ratio to python -c pass")
    for name, xs in rows.items():
        med = statistics.median(xs)
        print(f"{name:28s} {med:9.3f} {min(xs):7.3f} {max(xs):7.3f}  {med / base:5.1f}x")

    code = (
        "import json, time\nt0 = time.perf_counter()\nimport imrs.cli\n"
        "from imrs.cli import build_parser\nfrom imrs.cli.common import open_collection\n"
        "from imrs.query import Query, run_query\n"
        "t1 = time.perf_counter()\n"
        f"a = build_parser().parse_args(['search', '--text', {args.query!r}])\n"
        "t2 = time.perf_counter()\nc = open_collection(a)\nn = len(c.index)\nt3 = time.perf_counter()\n"
        f"r = run_query(c, Query(text={args.query!r}, k=10))\nt4 = time.perf_counter()\n"
        "print(json.dumps({'imports': t1 - t0, 'parser': t2 - t1, 'open collection + index': t3 - t2,"
        " 'run_query': t4 - t3, **{'  ' + k: v for k, v in r.timings.items()}}))\n")
    out = subprocess.run([py, "-c", code], env=env, cwd=REPO, check=True, capture_output=True, text=True)
    print("\nin-process breakdown of one repeat query (s):")
    for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items():
        print(f"  {k:28s} {v:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
