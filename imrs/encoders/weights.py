"""Weights: local checkpoints, the user cache, and a fast, readable answer when offline.

Pretrained weights come from a package, a hub cache, a download, or a file the user points to.
Everything that decides which (and fails in seconds with one clear line when none is possible)
lives here, so each family module only names its files and hosts. Where files are looked for and
kept comes in a :class:`WeightsPlace`, resolved once from ``Settings`` by whoever builds the
encoder: nothing here reads the environment, so a checkpoint folder, cache folder or offline switch
given in code reaches the loader exactly as one given in ``IMRS_*`` variables does.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import IMRSError, WeightsUnavailableError
from .place import WeightsPlace, checkpoint_env_var
from .registry import get_spec, torch_missing

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

def user_cache_dir(place: WeightsPlace | None = None) -> Path:
    """``$IMRS_CACHE_DIR`` or ``$XDG_CACHE_HOME/imrs`` (``~/.cache/imrs``), as ``place`` says."""
    return (place or WeightsPlace.from_settings()).cache_dir


def find_local_checkpoint(name: str, checkpoint: str | os.PathLike[str] | None,
                          upstream_filenames: Sequence[str] = (), place: WeightsPlace | None = None) -> Path | None:
    """Explicit argument > ``IMRS_CHECKPOINT_<NAME>`` > a matching file in ``IMRS_CHECKPOINT_DIR``.

    An explicitly named file that does not exist is an error, not a reason to go online.
    """
    place = place or WeightsPlace.from_settings()
    explicit = checkpoint if checkpoint is not None else place.checkpoint_for(name)
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            source = "checkpoint argument" if checkpoint is not None else checkpoint_env_var(name)
            raise WeightsUnavailableError(f"{source} for {name} points to {path}, which is not a file")
        return path
    if place.checkpoint_dir is not None:
        candidates = [f"{name}{ext}" for ext in (".pth", ".pt", ".bin", ".safetensors")]
        candidates += list(upstream_filenames)
        for cand in candidates:
            if (place.checkpoint_dir / cand).is_file():
                return place.checkpoint_dir / cand
    return None


def offline_forced(place: WeightsPlace | None = None) -> bool:
    """Whether the settings forbid probing the network (``IMRS_OFFLINE``, ``HF_HUB_OFFLINE``)."""
    return (place or WeightsPlace.from_settings()).offline


_PROBE_CACHE: dict[str, tuple[float, bool]] = {}
_PROBE_LOCK = threading.Lock()


def host_reachable(host: str, port: int = 443, timeout: float = 2.0, place: WeightsPlace | None = None) -> bool:
    """TCP connect within ``timeout`` seconds, DNS included (done in a thread: getaddrinfo has no
    timeout of its own). Answers are remembered for a minute so a UI listing backbones probes once.
    Always False when ``place`` says offline.
    """
    if offline_forced(place):
        return False
    with _PROBE_LOCK:
        hit = _PROBE_CACHE.get(host)
        if hit is not None and time.monotonic() - hit[0] < 60.0:
            return hit[1]
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, name=f"imrs-probe-{host}", daemon=True)
    t.start()
    t.join(timeout + 0.5)
    ok = bool(result and result[0])
    with _PROBE_LOCK:
        _PROBE_CACHE[host] = (time.monotonic(), ok)
    return ok


def weights_unavailable(name: str, what: str, host: str, cache_hint: str, filenames: Sequence[str] = ()
                        ) -> WeightsUnavailableError:
    fname = filenames[0] if filenames else f"{name}.pth"
    return WeightsUnavailableError(
        f"pretrained weights for {name} ({what}) are not cached and {host} is unreachable: connect to "
        f"the internet once (they are then cached in {cache_hint}), or download {fname} elsewhere and "
        f"set {checkpoint_env_var(name)}=/path/to/{fname} (or put it in $IMRS_CHECKPOINT_DIR)"
    )


def load_state_dict_file(path: Path) -> dict[str, Any]:
    """Tensors only (``weights_only``/safetensors): a checkpoint must never run code."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsUnavailableError(f"cannot load checkpoint {path}: {' '.join(str(exc).split())}") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise WeightsUnavailableError(f"checkpoint {path} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_checkpoint_into(model: nn.Module, path: Path, name: str) -> None:
    sd = load_state_dict_file(path)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:300]
        raise WeightsUnavailableError(f"checkpoint {path} does not fit {name}: {first}") from exc


@contextlib.contextmanager
def wrap_download_errors(name: str, host: str, cache_hint: str, filenames: Sequence[str] = ()
                         ) -> Iterator[None]:
    """A download that fails midway (network dropped, proxy, 404) becomes one readable line."""
    try:
        yield
    except IMRSError:
        raise
    except (OSError, RuntimeError, ValueError) as exc:
        err = weights_unavailable(name, "download failed", host, cache_hint, filenames)
        raise WeightsUnavailableError(f"{err} [{type(exc).__name__}: {' '.join(str(exc).split())[:200]}]") \
            from exc


def weights_unobtainable(name: str, place: WeightsPlace | None = None) -> str | None:
    """Why ``name``'s pretrained weights certainly cannot be had right now (not cached, no local
    checkpoint, download host unreachable), decided without importing the model's library -- the
    app asks this on every offline start, where importing open_clip alone costs seconds. None
    when they are ready or might be downloadable: then the real load decides."""
    spec = get_spec(name)
    if spec.load_onnx is None:
        missing = torch_missing(name)
        if missing:
            return missing
    place = place or WeightsPlace.from_settings()
    state, reason = spec.status(place)
    if state != "needs download" or place.checkpoint_dir is not None or not spec.download_host:
        return None
    if host_reachable(spec.download_host, place=place):
        return None
    return str(weights_unavailable(name, reason, spec.download_host, "their cache", spec.checkpoint_filenames))
