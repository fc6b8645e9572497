"""Dynamic web expansion: grow the collection when a query's coverage is weak.

- ``coverage``: is a result list weak? (thresholds per backbone and query kind)
- ``calibrate``: measure those thresholds on the collection itself (``imrs calibrate``)
- ``terms``: term clean-up, term files, prompt embeddings (candidates come from ``imrs.query``)
- ``grow``: search providers, download in parallel, pHash-dedupe, embed, add, re-query
- ``batch``: many terms in one run (through ``imrs.query.grow_terms``)
- ``prune``: list and remove dynamic images (never base ones)
"""

from __future__ import annotations

from .batch import BatchReport, TermResult, batch_terms
from .coverage import (
    DEFAULT_THRESHOLDS,
    Coverage,
    CoverageThresholds,
    check_coverage,
    is_clutter_label,
    thresholds_for,
)
from .grow import (
    ExpansionReport,
    catalog_hash_index,
    dynamic_folder,
    expand,
    fill_missing_phashes,
    slug_for,
    url_filename,
)
from .prune import DynamicGroup, PruneReport, dynamic_groups, list_dynamic, prune, resolve_slug
from .sources import PROVIDER_CHOICES, make_providers, policy_for, providers_for
from .terms import parse_terms, read_terms

__all__ = [
    "DEFAULT_THRESHOLDS",
    "PROVIDER_CHOICES",
    "BatchReport",
    "Coverage",
    "CoverageThresholds",
    "DynamicGroup",
    "ExpansionReport",
    "PruneReport",
    "TermResult",
    "batch_terms",
    "catalog_hash_index",
    "check_coverage",
    "dynamic_folder",
    "dynamic_groups",
    "expand",
    "fill_missing_phashes",
    "is_clutter_label",
    "list_dynamic",
    "make_providers",
    "parse_terms",
    "policy_for",
    "providers_for",
    "prune",
    "read_terms",
    "resolve_slug",
    "slug_for",
    "thresholds_for",
    "url_filename",
]
