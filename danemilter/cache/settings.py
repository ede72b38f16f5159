"""Cache settings (the ``cache:`` section of the policy file): defined with the rest of
the configuration, named here too for the cache's own users."""

from __future__ import annotations

from danemilter.config.loader import CACHE_KEYS, parse_cache_section
from danemilter.config.model import BackendName, CacheSettings

__all__ = ["CACHE_KEYS", "BackendName", "CacheSettings", "parse_cache_section"]
