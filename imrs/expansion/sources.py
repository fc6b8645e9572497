"""Which image providers and download limits an expansion uses, from arguments or the environment.

``imrs search --expand`` has no provider flags, so the environment configures it:
``IMRS_EXPAND_PROVIDER`` (auto | ddg | wikimedia), ``IMRS_WIKIMEDIA_API`` (a MediaWiki API URL),
``IMRS_EXPAND_URLS_FILE`` (a fixed URL list, one per line or ``term<TAB>url``) and
``IMRS_EXPAND_ALLOW_LOOPBACK=1`` (lets downloads reach 127.0.0.1: for local testing only).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import ENV_PROVIDER, ENV_WIKIMEDIA_API, PROVIDER_CHOICES
from ..errors import IMRSError
from ..web.download import DownloadPolicy
from ..web.providers import (
    COMMONS_API,
    WIKIPEDIA_API,
    DuckDuckGoProvider,
    ProviderChain,
    StaticProvider,
    WikimediaProvider,
    default_chain,
)

ENV_URLS_FILE = "IMRS_EXPAND_URLS_FILE"
__all__ = ["ENV_PROVIDER", "ENV_WIKIMEDIA_API", "PROVIDER_CHOICES", "as_chain", "make_providers", "policy_from_env",
           "providers_from_env"]
ENV_ALLOW_LOOPBACK = "IMRS_EXPAND_ALLOW_LOOPBACK"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def make_providers(kind: str = "auto", wikimedia_api: str | None = None,
                   urls_file: str | os.PathLike[str] | None = None) -> ProviderChain:
    """A provider chain. A custom ``wikimedia_api`` (a mirror, a test server) is used for Commons
    search only; Wikipedia lead images are asked only of the real Wikipedia."""
    if urls_file:
        path = Path(urls_file)
        if not path.is_file():
            raise IMRSError(f"URL list {path} not found (one image URL per line, or term<TAB>url)")
        return ProviderChain([StaticProvider.from_file(path, name=f"urls:{path.name}")])
    if kind not in PROVIDER_CHOICES:
        raise IMRSError(f"unknown provider {kind!r}; choose one of {', '.join(PROVIDER_CHOICES)}")
    commons = wikimedia_api or COMMONS_API
    wikipedia = WIKIPEDIA_API if not wikimedia_api else None
    if kind == "ddg":
        return ProviderChain([DuckDuckGoProvider()])
    if kind == "wikimedia":
        return ProviderChain([WikimediaProvider(commons, wikipedia)])
    return default_chain(commons_api_url=commons, wikipedia_api_url=wikipedia)


def as_chain(providers: Any) -> ProviderChain:
    """None -> providers from the environment (default chain); one provider or a list -> a chain."""
    if providers is None:
        return providers_from_env()
    if isinstance(providers, ProviderChain):
        return providers
    if isinstance(providers, Sequence) and not isinstance(providers, str | bytes):
        return ProviderChain(list(providers))
    if hasattr(providers, "search"):
        return ProviderChain([providers])
    raise IMRSError(f"not an image provider: {providers!r}")


def providers_from_env() -> ProviderChain:
    return make_providers(os.environ.get(ENV_PROVIDER, "auto").strip() or "auto",
                          os.environ.get(ENV_WIKIMEDIA_API) or None, os.environ.get(ENV_URLS_FILE) or None)


def policy_from_env(**overrides: Any) -> DownloadPolicy:
    kw: dict[str, Any] = {"allow_loopback": _truthy(os.environ.get(ENV_ALLOW_LOOPBACK))}
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return DownloadPolicy(**kw)
