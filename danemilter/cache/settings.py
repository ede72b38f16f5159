"""Cache settings (the ``cache:`` section of the policy file), validated once."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from danemilter.errors import ConfigError

if TYPE_CHECKING:  # config.py imports this module; the loader is only a type here
    import yaml

    from danemilter.config import _Loader


class BackendName(StrEnum):
    MEMORY = "memory"
    SQLITE = "sqlite"
    REDIS = "redis"


_REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})
_MAX_ENTRIES = 100_000_000
_MAX_TTL = 7 * 86_400


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """Where domain statuses are cached and for how long.

    ``min_ttl``/``max_ttl`` clamp the DNS-derived lifetime; ``negative_max_ttl`` caps
    negative answers (RFC 2308 §5); ``tempfail_ttl`` is the retry interval for
    failures; ``refresh_ahead`` is the fraction of an entry's lifetime before its
    expiry from which a domain still being asked for is evaluated again in the
    background (0 disables). ``max_entries`` bounds the backend (memory, SQLite),
    ``lru_entries`` the in-process LRU in front of it (0 disables that LRU).
    """

    backend: str = BackendName.SQLITE.value
    path: str = "/var/lib/danemilter/cache.sqlite3"
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "danemilter:"
    max_entries: int = 100_000
    lru_entries: int = 10_000
    min_ttl: int = 60
    max_ttl: int = 86_400
    negative_max_ttl: int = 3_600
    tempfail_ttl: int = 30
    refresh_ahead: float = 0.1

    def __post_init__(self) -> None:
        if self.backend not in {b.value for b in BackendName}:
            allowed = "|".join(b.value for b in BackendName)
            raise ConfigError(f"cache.backend must be one of {allowed}, not {self.backend!r}")
        if not self.path or "\0" in self.path:
            raise ConfigError("cache.path must be a non-empty file name")
        scheme = urlsplit(self.url).scheme
        if scheme not in _REDIS_SCHEMES:
            raise ConfigError(f"cache.url must be a redis://, rediss:// or unix:// URL, "
                              f"not {self.url!r}")
        if any(c.isspace() for c in self.key_prefix):
            raise ConfigError(f"cache.key_prefix must not contain white space: "
                              f"{self.key_prefix!r}")
        for name, low, high in (("max_entries", 1, _MAX_ENTRIES),
                                ("lru_entries", 0, _MAX_ENTRIES),
                                ("min_ttl", 0, _MAX_TTL),
                                ("max_ttl", 1, _MAX_TTL),
                                ("negative_max_ttl", 0, _MAX_TTL),
                                ("tempfail_ttl", 0, _MAX_TTL)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"cache.{name} must be a whole number between {low} and "
                                  f"{high}, not {value!r}")
        if self.min_ttl > self.max_ttl:
            raise ConfigError(f"cache.min_ttl ({self.min_ttl}) exceeds cache.max_ttl "
                              f"({self.max_ttl})")
        ahead = self.refresh_ahead
        if (isinstance(ahead, bool) or not isinstance(ahead, int | float)
                or not math.isfinite(ahead) or not 0 <= ahead <= 0.9):
            raise ConfigError(f"cache.refresh_ahead must be a fraction between 0 and 0.9, "
                              f"not {ahead!r}")


_INT_KEYS = ("max_entries", "lru_entries", "min_ttl", "max_ttl", "negative_max_ttl",
             "tempfail_ttl")
CACHE_KEYS = frozenset(f.name for f in fields(CacheSettings))


def parse_cache_section(loader: _Loader, node: yaml.Node) -> CacheSettings:
    """The ``cache:`` mapping, with every error naming the file and line (config.py's loader)."""
    entries = loader.mapping(node, "cache", CACHE_KEYS)
    values: dict[str, object] = {}
    if "backend" in entries:
        with loader.collecting():
            values["backend"] = loader.choice(entries["backend"][1], "cache.backend",
                                              BackendName).value
    for key in ("path", "url", "key_prefix"):
        if key in entries:
            with loader.collecting():
                values[key] = loader.string(entries[key][1], f"cache.{key}")
    for key in _INT_KEYS:
        if key in entries:
            with loader.collecting():
                value_node = entries[key][1]
                number = loader.number(value_node, f"cache.{key}", 0, _MAX_ENTRIES)
                if number != int(number):
                    raise loader.error(value_node, f"cache.{key} must be a whole number")
                values[key] = int(number)
    if "refresh_ahead" in entries:
        with loader.collecting():
            values["refresh_ahead"] = loader.number(entries["refresh_ahead"][1],
                                                    "cache.refresh_ahead", 0, 0.9)
    backend = values.get("backend", BackendName.SQLITE.value)
    for key, needs in (("path", BackendName.SQLITE), ("url", BackendName.REDIS),
                       ("key_prefix", BackendName.REDIS)):
        if key in entries and backend != needs:
            loader.errors.append(loader.error(
                entries[key][0], f"cache.{key} applies only to backend {needs.value}"))
    try:
        return CacheSettings(**values)  # type: ignore[arg-type]
    except ConfigError as exc:
        raise loader.error(node, str(exc)) from None
