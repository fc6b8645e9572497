"""Folder names from search terms: safe everywhere, stable, and distinct for distinct terms."""

from __future__ import annotations

import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from imrs.slug import canonical_term, safe_slug

SAFE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
WINDOWS_RESERVED = {"con", "prn", "aux", "nul"} | {f"{p}{i}" for p in ("com", "lpt") for i in range(10)}

NASTY = [
    "../../etc",
    "..",
    ".",
    ".hidden",
    "a/b\\c",
    "con",
    "CON",
    "Con.txt",
    "lpt1",
    "com9",
    "nul ",
    "",
    "   ",
    "a" * 500,
    "a" * 499 + "b",
    "🐱",
    "🐱🐶",
    "猫",
    "犬",
    "Straße",
    "Café",
    "cafe",
    "naïve café-au-lait!",
    "Ελληνικά",
    "русский кот",
    "C:\\Windows\\System32",
    "name:with*bad?chars<>|\"",
    "tab\there\nnewline",
    "\x00nul byte",
    "trailing dot.",
    "-leading-dash",
    "x" * 61,
]


def _assert_safe(slug: str, max_len: int = 60) -> None:
    assert SAFE.fullmatch(slug), slug
    assert 0 < len(slug) <= max_len
    assert slug not in WINDOWS_RESERVED
    assert ".." not in slug and not slug.startswith(".")


@pytest.mark.parametrize("term", NASTY)
def test_every_term_gives_a_safe_folder_name(term: str):
    _assert_safe(safe_slug(term))


def test_plain_terms_stay_readable():
    assert safe_slug("cat") == "cat"
    assert safe_slug("Hot Dog") == safe_slug("hot_dog") == safe_slug("hot-dog") == "hot-dog"
    assert safe_slug("  Golden   Retriever ") == "golden-retriever"
    assert safe_slug("Café").startswith("cafe-")
    assert safe_slug("../../etc").startswith("etc-")
    assert safe_slug("con").startswith("con-")
    assert safe_slug("").startswith("term-") and safe_slug("🐱").startswith("term-")


def test_distinct_terms_get_distinct_slugs():
    by_key: dict[str, str] = {}
    for term in NASTY:
        by_key.setdefault(canonical_term(term), safe_slug(term))
    assert len(set(by_key.values())) == len(by_key)
    assert safe_slug("Café") != safe_slug("cafe")
    assert safe_slug("猫") != safe_slug("犬")
    assert safe_slug("a" * 500) != safe_slug("a" * 499 + "b")


def test_random_unicode_terms_are_safe_and_injective():
    rng = random.Random(0)
    alphabet = (
        "abcXYZ019 -_./\\:*?\"<>|\t"
        + "éüñçøßæ"
        + "猫犬鳥"
        + "кот"
        + "\u200b\u0301\ufeff"
        + "🐱🐶"
    )
    by_key: dict[str, str] = {}
    for _ in range(3000):
        term = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 90)))
        slug = safe_slug(term, max_len=40)
        _assert_safe(slug, 40)
        assert by_key.setdefault(canonical_term(term), slug) == slug
    assert len(set(by_key.values())) == len(by_key)


def test_slug_is_deterministic_across_processes():
    code = "from imrs.slug import safe_slug; print(safe_slug('猫 ' * 40))"
    env = {"PYTHONHASHSEED": "7", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == safe_slug("猫 " * 40)


def test_max_len_is_validated():
    with pytest.raises(ValueError):
        safe_slug("cat", max_len=5)
    assert len(safe_slug("x" * 100, max_len=16)) <= 16
