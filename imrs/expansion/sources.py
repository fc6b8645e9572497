"""Which image providers and download limits an expansion uses, from ``Settings``.

The settings come from the environment (``IMRS_EXPAND_PROVIDER``, ``IMRS_WIKIMEDIA_API``,
``IMRS_EXPAND_URLS_FILE``, ``IMRS_EXPAND_ALLOW_LOOPBACK``, ...; see ``imrs.config``) with the
command line's or the page's choices applied on top, so ``imrs search --expand``, ``imrs expand``
and the app build the same chain and the same download limits from the same values.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import PROVIDER_CHOICES as _CHOICES
from ..config import Settings
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

PROVIDER_CHOICES = _CHOICES


def make_providers(kind: str = "auto", wikimedia_api: str | None = None,
                   urls_file: str | os.PathLike[str] | None = None, allow_loopback: bool = False,
                   ddg_client: str = "guarded") -> ProviderChain:
    """A provider chain. A custom ``wikimedia_api`` (a mirror, a test server) is used for Commons
    search only; Wikipedia lead images are asked only of the real Wikipedia. API calls go through
    the same SSRF guard as downloads: ``allow_loopback`` opens 127.0.0.1 for them too."""
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
        return ProviderChain([DuckDuckGoProvider(allow_loopback=allow_loopback, client=ddg_client)])
    if kind == "wikimedia":
        return ProviderChain([WikimediaProvider(commons, wikipedia, allow_loopback=allow_loopback)])
    return default_chain(commons_api_url=commons, wikipedia_api_url=wikipedia, allow_loopback=allow_loopback,
                         ddg_client=ddg_client)


def as_chain(providers: Any) -> ProviderChain:
    """None -> providers from the settings (default chain); one provider or a list -> a chain."""
    if providers is None:
        return providers_for()
    if isinstance(providers, ProviderChain):
        return providers
    if isinstance(providers, Sequence) and not isinstance(providers, str | bytes):
        return ProviderChain(list(providers))
    if hasattr(providers, "search"):
        return ProviderChain([providers])
    raise IMRSError(f"not an image provider: {providers!r}")


def providers_for(settings: Settings | None = None) -> ProviderChain:
    s = settings or Settings.from_env()
    return make_providers(s.provider, s.wikimedia_api, s.urls_file, allow_loopback=s.allow_loopback,
                          ddg_client=s.ddg_client)


def policy_for(settings: Settings | None = None, **overrides: Any) -> DownloadPolicy:
    """Download limits from the settings (``overrides`` win; ``None`` values are ignored)."""
    s = settings or Settings.from_env()
    kw: dict[str, Any] = {"allow_loopback": s.allow_loopback, "max_side": s.expand_max_side,
                          "jpeg_quality": s.expand_jpeg_quality, "workers": s.expand_workers}
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return DownloadPolicy(**kw)
