"""The policy file's values: frozen, validated, and free of any I/O or YAML.

Every layer reads its settings from here (pure core included), so this module imports
nothing of danemilter but ``errors``: no layer's settings can pull in another layer.
``danemilter.config.loader`` turns the YAML file into these values.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

from danemilter.errors import ConfigError, InputError

DEFAULT_PATH = Path("/etc/danemilter/danemilter.yaml")
BUILT_IN = "built-in defaults"  # Settings.source when no file was read


class DaneMode(StrEnum):
    """Exim's hosts_try_dane / hosts_require_dane, per destination domain."""

    OFF = "off"
    TRY = "try"
    REQUIRE = "require"


class OcspMode(StrEnum):
    """Exim's hosts_request_ocsp / hosts_require_ocsp; ``strict`` enforces without an OCSP URL."""

    OFF = "off"
    AUTO = "auto"
    REQUIRE = "require"
    STRICT = "strict"


class FailAction(StrEnum):
    TAG = "tag"
    DEFER = "defer"
    REJECT = "reject"
    HOLD = "hold"


class ErrorAction(StrEnum):
    TEMPFAIL = "tempfail"
    ACCEPT = "accept"


class ProbeMode(StrEnum):
    """Whether decisions use TLS probes of the MX hosts (certificate vs TLSA, OCSP staple).

    ``cached``: only results already in the cache (from ``danemilter verify`` or earlier
    inline probes); ``inline``: probe at RCPT time within what is left of the deadline.
    """

    OFF = "off"
    CACHED = "cached"
    INLINE = "inline"


class ApplyTo(StrEnum):
    ALL = "all"
    AUTHENTICATED = "authenticated"
    NETWORKS = "networks"


class Transport(StrEnum):
    """Which milter implementation serves the MTA (DESIGN.md "Milter transport")."""

    ASYNCIO = "asyncio"
    LIBMILTER = "libmilter"


class BackendName(StrEnum):
    MEMORY = "memory"
    SQLITE = "sqlite"
    REDIS = "redis"


@dataclass(frozen=True, slots=True)
class Rule:
    dane: DaneMode = DaneMode.TRY
    ocsp: OcspMode = OcspMode.OFF
    on_fail: FailAction = FailAction.TAG
    reply: str | None = None
    probe: ProbeMode = ProbeMode.OFF


@dataclass(frozen=True, slots=True)
class Policy:
    default: Rule = field(default_factory=Rule)
    domains: Mapping[str, Rule] = field(default_factory=dict)

    def rule_for(self, domain: str) -> Rule:
        """Most specific match wins: the exact domain, then the longest ``.suffix``."""
        exact = self.domains.get(domain)
        if exact is not None:
            return exact
        labels = domain.split(".")
        for i in range(1, len(labels)):
            rule = self.domains.get("." + ".".join(labels[i:]))
            if rule is not None:
                return rule
        return self.default


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    """How TLS probes connect: used by the milter's ``probe`` rules and ``verify``.

    ``concurrency`` bounds the probes running at once in the whole process.
    """

    port: int = 25
    timeout: float = 10.0
    concurrency: int = 16
    helo: str = "danemilter.invalid"
    allow_private: bool = False
    cache_ttl: int = 3600


@dataclass(frozen=True, slots=True)
class ResolverSettings:
    address: str = "127.0.0.1"
    port: int = 53
    timeout: float = 3.0

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.address)
        except ValueError:
            raise InputError(f"resolver address must be an IP address: {self.address!r}") from None
        if not 0 < self.port < 65536:
            raise InputError(f"resolver port out of range: {self.port}")
        if not self.timeout > 0:
            raise InputError(f"resolver timeout must be positive: {self.timeout}")

    @property
    def is_loopback(self) -> bool:
        return ipaddress.ip_address(self.address).is_loopback

    @classmethod
    def from_spec(cls, spec: str, timeout: float = 3.0) -> ResolverSettings:
        """Parse ``HOST``, ``HOST:PORT``, ``[V6]`` or ``[V6]:PORT``."""
        text = spec.strip()
        host, port = text, 53
        if text.startswith("["):
            end = text.find("]")
            if end < 0:
                raise InputError(f"unbalanced brackets in resolver {spec!r}")
            host, rest = text[1:end], text[end + 1 :]
            if rest:
                if not rest.startswith(":"):
                    raise InputError(f"cannot parse resolver {spec!r}")
                port = _parse_port(rest[1:], spec)
        elif text.count(":") == 1:
            host, port_text = text.split(":")
            port = _parse_port(port_text, spec)
        return cls(address=host, port=port, timeout=timeout)


def _parse_port(text: str, spec: str) -> int:
    if not text.isdigit():
        raise InputError(f"resolver port is not a number in {spec!r}")
    return int(text)


_REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})
MAX_CACHE_ENTRIES = 100_000_000
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
        for name, low, high in (("max_entries", 1, MAX_CACHE_ENTRIES),
                                ("lru_entries", 0, MAX_CACHE_ENTRIES),
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


SYSTEMD_LISTEN = "systemd"
LISTEN_SPEC = re.compile(r"^(?:inet6?:\d{1,5}(?:@[\w.:\[\]-]+)?|(?:unix|local):/.+|systemd)$")


@dataclass(frozen=True, slots=True)
class MilterLimits:
    """What one MTA connection may cost the daemon (hostile or broken peers included).

    ``max_packet`` bounds one milter packet; ``idle_timeout`` closes a connection the
    MTA leaves silent (Postfix keeps one open per SMTP session); ``max_connections``
    refuses the connection past it at once rather than queueing it.
    """

    max_connections: int = 1000
    idle_timeout: float = 600.0
    max_packet: int = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Settings:
    listen: str = "inet:8891@127.0.0.1"
    transport: Transport = Transport.ASYNCIO
    limits: MilterLimits = field(default_factory=MilterLimits)
    socket_mode: int | None = None
    socket_group: str | None = None
    resolver: ResolverSettings = field(default_factory=ResolverSettings)
    deadline: float = 10.0
    header: str = "X-DANE-Status"
    report_only: bool = False
    on_error: ErrorAction = ErrorAction.TEMPFAIL
    apply_to: ApplyTo = ApplyTo.ALL
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    skip_domains: frozenset[str] = frozenset()
    policy: Policy = field(default_factory=Policy)
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    log_level: str = "info"
    source: str = BUILT_IN

    def skips(self, domain: str) -> bool:
        """Local domains (exact or ``.suffix``) are not delivered over SMTP by us."""
        if domain in self.skip_domains:
            return True
        labels = domain.split(".")
        return any("." + ".".join(labels[i:]) in self.skip_domains
                   for i in range(1, len(labels)))
