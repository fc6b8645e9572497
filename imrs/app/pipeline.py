"""The app's only door into the search-and-grow pipeline and the settings.

Every search, verdict, term proposal and growth the page shows comes from ``run_query`` /
``grow_term`` / ``grow_terms`` (imrs.query) and every default from ``Settings`` (imrs.config): the app decides
nothing about coverage or expansion itself. Keeping the imports in this one module means the rest
of ``imrs.app`` never names the pipeline's modules directly.
"""

from __future__ import annotations

from ..config import OFFLINE_BACKBONE, PROVIDER_CHOICES, Settings
from ..expansion.batch import BatchReport, TermResult, batch_terms
from ..expansion.calibrate import calibrate
from ..progress import Progress, relabel
from ..query import (
    Query,
    QueryOutcome,
    TermCandidate,
    Verdict,
    collection_thresholds,
    grow_term,
    grow_terms,
    run_query,
)

__all__ = ["OFFLINE_BACKBONE", "PROVIDER_CHOICES", "BatchReport", "Progress", "Query", "QueryOutcome", "Settings",
           "TermCandidate", "TermResult", "Verdict", "batch_terms", "calibrate", "collection_thresholds", "grow_term",
           "grow_terms", "relabel", "run_query"]
