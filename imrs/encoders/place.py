"""Where model files are found and kept: the part of ``Settings`` every weights loader needs.

A leaf module (it imports only :mod:`imrs.config`), so the registry, the loaders, the runtimes and
the encoder factory can all take a :class:`WeightsPlace` without importing one another.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import Settings, checkpoint_env_var, checkpoint_in

__all__ = ["WeightsPlace", "checkpoint_env_var"]


@dataclass(frozen=True)
class WeightsPlace:
    """Where model files are found and kept, and whether the network may be tried: the part of
    ``Settings`` the loaders need, resolved once (frozen and hashable, so it is part of the
    encoder cache's key: two settings never share an encoder loaded from different files)."""

    cache_dir: Path  #: exported and quantised models (``IMRS_CACHE_DIR``)
    torch_hub_dir: Path  #: torch hub's checkpoint cache (``TORCH_HOME``)
    checkpoint_dir: Path | None = None  #: ``IMRS_CHECKPOINT_DIR``
    checkpoints: tuple[tuple[str, str], ...] = ()  #: ``IMRS_CHECKPOINT_<NAME>``, as in Settings
    offline: bool = False  #: never probe a download host
    verify_runtime: bool = True  #: compare a fast runtime to eager once (``IMRS_SKIP_RUNTIME_CHECK``)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> WeightsPlace:
        """The place ``settings`` describe; None: the environment's settings, read now."""
        s = Settings.from_env() if settings is None else settings
        return cls(cache_dir=s.model_cache_dir(), torch_hub_dir=s.torch_hub_dir(),
                   checkpoint_dir=Path(s.checkpoint_dir).expanduser() if s.checkpoint_dir else None,
                   checkpoints=s.checkpoints, offline=s.offline, verify_runtime=not s.skip_runtime_check)

    def checkpoint_for(self, name: str) -> str | None:
        """The file named for backbone ``name`` (``IMRS_CHECKPOINT_<NAME>``), or None."""
        return checkpoint_in(self.checkpoints, name)
