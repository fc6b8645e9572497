"""Dynamic web expansion: grow the collection when a query's coverage is weak.

- ``coverage``: is a result list weak? (thresholds per backbone and query kind)
- ``terms``: what to search for (zero-shot / classifier / label vote for image queries; term files)
- ``grow``: search providers, download in parallel, pHash-dedupe, embed, add, re-query
- ``batch``: many terms in one run
- ``prune``: list and remove dynamic images (never base ones)
"""

from __future__ import annotations

from .batch import BatchReport, TermResult, expand_batch
from .coverage import (
    DEFAULT_THRESHOLDS,
    Coverage,
    CoverageThresholds,
    check_coverage,
    query_coverage,
    textmap_scores,
    thresholds_for,
)
from .grow import (
    ExpansionReport,
    Outcome,
    catalog_hash_index,
    dynamic_folder,
    expand,
    expand_if_weak,
    fill_missing_phashes,
    slug_for,
    url_filename,
)
from .prune import DynamicGroup, PruneReport, dynamic_groups, list_dynamic, prune, resolve_slug
from .sources import PROVIDER_CHOICES, make_providers, policy_from_env, providers_from_env
from .terms import TermGuess, infer_term, parse_terms, read_terms

__all__ = [
    "DEFAULT_THRESHOLDS",
    "PROVIDER_CHOICES",
    "BatchReport",
    "Coverage",
    "CoverageThresholds",
    "DynamicGroup",
    "ExpansionReport",
    "Outcome",
    "PruneReport",
    "TermGuess",
    "TermResult",
    "catalog_hash_index",
    "check_coverage",
    "dynamic_folder",
    "dynamic_groups",
    "expand",
    "expand_batch",
    "expand_if_weak",
    "fill_missing_phashes",
    "infer_term",
    "list_dynamic",
    "make_providers",
    "parse_terms",
    "policy_from_env",
    "providers_from_env",
    "prune",
    "query_coverage",
    "read_terms",
    "resolve_slug",
    "slug_for",
    "textmap_scores",
    "thresholds_for",
    "url_filename",
]
