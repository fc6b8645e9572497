"""What the layers above a collection may use of it, written down as ``typing.Protocol``s.

One job: name the small surface text search and expansion depend on, so they type against it and
never import the ``Collection`` facade (which would close an import cycle: the facade's rooms and
the query loop import them). ``imrs.collection.Collection`` satisfies ``CollectionView``
structurally; a test double or another front end may too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    import numpy as np

    from .catalog import Catalog
    from .config import Settings
    from .encoders import Encoder
    from .filters import Where
    from .indexes import VectorIndex
    from .layout import SearchHit
    from .store import EmbeddingSet

T = TypeVar("T")


class CollectionView(Protocol):
    """A collection as text search, expansion terms and web exemplars see it: read-only state,
    search, and a per-collection cache for whatever they derive from it (``cache(key, factory)``
    keeps it on the collection object, never in a module global)."""

    root: Path
    state_dir: Path
    backbone: str
    weights: str
    checkpoint: str | None
    settings: Settings  # read once when the collection was opened: never the environment below it

    @property
    def backbone_info(self) -> Any: ...

    @property
    def catalog(self) -> Catalog: ...

    @property
    def index(self) -> VectorIndex: ...

    @property
    def encoder(self) -> Encoder: ...

    def cache(self, key: str, factory: Callable[[], T]) -> T: ...

    def abspath(self, relpath: str, source: str | None = None) -> Path: ...

    def all_embeddings(self) -> EmbeddingSet: ...

    def search_vectors(self, queries: np.ndarray, k: int = 10, qe: int = 0, qe_alpha: float = 3.0,
                       where: str | Where | None = None, params: dict[str, Any] | None = None
                       ) -> list[list[SearchHit]]: ...

    def hits_for(self, ids: Sequence[int], scores: Sequence[float]) -> list[SearchHit]: ...

    def warn_if_query_runtime_differs(self) -> None: ...
