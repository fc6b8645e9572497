"""The web side of dynamic expansion: find image URLs (providers) and fetch them safely (download).

Every URL from the web is hostile until proven otherwise: see ``netguard`` (SSRF) and
``download`` (size, time, type and decode limits).
"""

from __future__ import annotations

from .download import (
    DEFAULT_USER_AGENT,
    DownloadPolicy,
    DownloadResult,
    fetch_image,
    fetch_image_bytes,
    fetch_many,
    fetch_pil_image,
    make_session,
)
from .netguard import BlockedURLError, check_ip, check_url
from .providers import (
    DuckDuckGoProvider,
    ImageHit,
    ImageProvider,
    ProviderChain,
    ProviderReport,
    StaticProvider,
    WikimediaProvider,
    default_chain,
)

__all__ = [
    "DEFAULT_USER_AGENT",
    "BlockedURLError",
    "DownloadPolicy",
    "DownloadResult",
    "DuckDuckGoProvider",
    "ImageHit",
    "ImageProvider",
    "ProviderChain",
    "ProviderReport",
    "StaticProvider",
    "WikimediaProvider",
    "check_ip",
    "check_url",
    "default_chain",
    "fetch_image",
    "fetch_image_bytes",
    "fetch_many",
    "fetch_pil_image",
    "make_session",
]
