"""The public port crash repair uses beneath a collection's consistency check.

One job: give ``imrs.reconcile`` exactly what a repair must touch that ordinary callers must not:
the catalog as it is (the facade's ``catalog`` property would first run the very check the repair
is part of), the power to swap a damaged catalog for a rebuilt one, one cache delta, the live index
without opening checks, and saving it. ``RepairTarget`` is what reconcile types against, so it
never imports the facade (the facade imports reconcile) and never reaches into its privates.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .catalog import Catalog
    from .indexes import VectorIndex
    from .liveindex import LiveIndex
    from .store import EmbeddingSet
    from .vectorstore import VectorStore


class RepairPort:
    """Repair's access to one collection's stores. ``get_catalog``/``set_catalog`` read and swap
    the catalog the facade holds; ``runtime_label()`` is the caches' runtime tag ("fp32" before any)."""

    def __init__(self, *, get_catalog: Callable[[], Catalog | None], set_catalog: Callable[[Catalog], None],
                 store: VectorStore, live: LiveIndex, runtime_label: Callable[[], str]) -> None:
        self._get_catalog = get_catalog
        self._set_catalog = set_catalog
        self._store = store
        self._live = live
        self._runtime_label = runtime_label

    @property
    def catalog(self) -> Catalog:
        """The catalog as it is, unchecked."""
        cat = self._get_catalog()
        if cat is None:
            raise RuntimeError("the collection has no catalog open")
        return cat

    @property
    def catalog_open(self) -> bool:
        return self._get_catalog() is not None

    def replace_catalog(self, catalog: Catalog) -> None:
        """Use ``catalog`` from now on (the old one is the caller's to close first)."""
        self._set_catalog(catalog)

    def write_cache(self, path: Path, add: EmbeddingSet | None = None, remove: Iterable[int] = ()) -> int:
        return self._store.write(path, add=add, remove=remove)

    def index_for_repair(self, vectors: Callable[[], EmbeddingSet]) -> tuple[VectorIndex, bool]:
        """The live index (no consistency check: that is the caller), and whether it had to be built
        from ``vectors()`` because no usable snapshot exists."""
        return self._live.for_repair(vectors)

    def persist_index(self) -> None:
        self._live.persist(self._runtime_label())

    def runtime_label(self) -> str:
        return self._runtime_label()


class RepairTarget(Protocol):
    """A collection as ``imrs.reconcile`` sees it: where its stores live, and its repair port."""

    root: Path
    state_dir: Path
    backbone: str
    emb_dir: Path
    snap_dir: Path
    dynamic_root: Path
    repair_port: RepairPort

    @property
    def dim(self) -> int: ...

    @property
    def indexer(self) -> str: ...

    @property
    def live_name(self) -> str: ...

    def base_npz(self) -> Path: ...

    def dynamic_npzs(self) -> list[Path]: ...

    def abspath(self, relpath: str, source: str | None = None) -> Path: ...
