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
from datetime import date
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


class ResolverCheckMode(StrEnum):
    """What a resolver that fails the self-check (danemilter.resolver_check) does to
    the daemon: ``refuse`` to start, ``degrade`` (run, but no domain can be ``dane``),
    or ``off`` (no check)."""

    REFUSE = "refuse"
    DEGRADE = "degrade"
    OFF = "off"


class BackendName(StrEnum):
    MEMORY = "memory"
    SQLITE = "sqlite"
    REDIS = "redis"


class TlsRequirement(StrEnum):
    """What a rule demands of delivery beyond ``dane:`` (issue 14): ``authenticated`` is
    satisfied by DANE or, for a domain without usable DANE records, by an MTA-STS policy
    in enforce mode (RFC 8461 §2: DANE first)."""

    OPPORTUNISTIC = "opportunistic"
    AUTHENTICATED = "authenticated"


class Undeliverable(StrEnum):
    """What a rule does with a domain that can never receive mail (null MX, RFC 7505;
    nonexistent): ``auto`` refuses it where the rule demands authenticated TLS
    (``dane: require`` or ``tls: authenticated``) and tags it elsewhere."""

    AUTO = "auto"
    REFUSE = "refuse"
    TAG = "tag"


@dataclass(frozen=True, slots=True)
class Rule:
    dane: DaneMode = DaneMode.TRY
    ocsp: OcspMode = OcspMode.OFF
    on_fail: FailAction = FailAction.TAG
    reply: str | None = None
    probe: ProbeMode = ProbeMode.OFF
    tls: TlsRequirement = TlsRequirement.OPPORTUNISTIC
    undeliverable: Undeliverable = Undeliverable.AUTO

    @property
    def refuses_undeliverable(self) -> bool:
        if self.undeliverable is Undeliverable.AUTO:
            return self.dane is DaneMode.REQUIRE or self.tls is TlsRequirement.AUTHENTICATED
        return self.undeliverable is Undeliverable.REFUSE


@dataclass(frozen=True, slots=True)
class Policy:
    default: Rule = field(default_factory=Rule)
    domains: Mapping[str, Rule] = field(default_factory=dict)
    exceptions: Mapping[str, Exemption] = field(default_factory=dict)

    def rule_for(self, domain: str) -> Rule:
        """Most specific match wins: the exact domain, then the longest ``.suffix``."""
        return _most_specific(self.domains, domain) or self.default

    def rule_below(self, parent: str) -> Rule:
        """The rule of a name below ``parent`` that has no rule of its own: the longest
        ``.suffix`` rule covering it, else the default."""
        return _most_specific(self.domains, "." + parent) or self.default

    def exemption_for(self, domain: str) -> tuple[str, Exemption] | None:
        """The most specific ``policy.exceptions`` entry for ``domain``, with its key."""
        for key in _keys_for(domain):
            found = self.exceptions.get(key)
            if found is not None:
                return key, found
        return None


@dataclass(frozen=True, slots=True)
class Exemption:
    """``policy.exceptions``: no refusal for a domain until ``until`` (inclusive, UTC),
    for the stated ``reason`` (a partner fixing its DNS, say)."""

    until: date
    reason: str

    def active(self, today: date) -> bool:
        return today <= self.until


def _keys_for(domain: str) -> list[str]:
    """The exact name, then every ``.suffix`` from the longest to the shortest."""
    labels = domain.split(".")
    return [domain, *("." + ".".join(labels[i:]) for i in range(1, len(labels)))]


def _most_specific(table: Mapping[str, Rule], domain: str) -> Rule | None:
    return next((table[key] for key in _keys_for(domain) if key in table), None)


@dataclass(frozen=True, slots=True)
class MtaStsSettings:
    """How MTA-STS policies are fetched (RFC 8461 §3.3): HTTPS on ``port`` (443; another
    only for tests), PKIX against the system store or ``ca_file``, within ``timeout``."""

    port: int = 443
    ca_file: str | None = None
    timeout: float = 10.0


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


MAX_RESOLVER_QUERIES = 4096
MAX_MX_HOSTS = 100


@dataclass(frozen=True, slots=True)
class ResolverSettings:
    """The validating resolver, and what one process may ask of it.

    ``max_queries``: DNS queries outstanding at once in the whole process (each holds
    a socket); ``max_mx_hosts``: the MX hosts of one domain that are evaluated, most
    preferred first, as Postfix's ``smtp_mx_address_limit`` bounds what it will use.
    """

    address: str = "127.0.0.1"
    port: int = 53
    timeout: float = 3.0
    max_queries: int = 128
    max_mx_hosts: int = 10

    def __post_init__(self) -> None:
        if not 1 <= self.max_queries <= MAX_RESOLVER_QUERIES:
            raise InputError(f"resolver max_queries must be 1-{MAX_RESOLVER_QUERIES}: "
                             f"{self.max_queries}")
        if not 1 <= self.max_mx_hosts <= MAX_MX_HOSTS:
            raise InputError(f"resolver max_mx_hosts must be 1-{MAX_MX_HOSTS}: "
                             f"{self.max_mx_hosts}")
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


# Record types the self-check may ask for; a name is checked with one question.
CHECK_TYPES = frozenset({"A", "AAAA", "SOA", "NS", "MX", "TXT", "TLSA", "DNSKEY", "DS"})
_CHECK_NAME = re.compile(r"^(?:\.|(?:[A-Za-z0-9_-]{1,63}\.)*[A-Za-z0-9_-]{1,63}\.?)$")


@dataclass(frozen=True, slots=True)
class ResolverCheckSettings:
    """The resolver self-check: the resolver must answer ``signed_name``/``signed_type``
    (a signed name) with the AD bit, and, when ``bogus_name`` is set, answer that
    deliberately broken name with SERVFAIL. ``interval``: seconds between checks while
    the resolver passes (a failing one is checked, and logged, every minute)."""

    mode: ResolverCheckMode = ResolverCheckMode.REFUSE
    signed_name: str = "."
    signed_type: str = "SOA"
    bogus_name: str | None = None
    bogus_type: str = "A"
    interval: float = 300.0

    def __post_init__(self) -> None:
        for what, name in (("signed_name", self.signed_name), ("bogus_name", self.bogus_name)):
            if name is not None and (len(name) > 254 or not _CHECK_NAME.match(name)):
                raise ConfigError(f"resolver_check.{what} is not a DNS name: {name!r}")
        for what, rdtype in (("signed_type", self.signed_type), ("bogus_type", self.bogus_type)):
            if rdtype not in CHECK_TYPES:
                raise ConfigError(f"resolver_check.{what} must be one of "
                                  f"{'|'.join(sorted(CHECK_TYPES))}, not {rdtype!r}")
        if not 10 <= self.interval <= 86_400:
            raise ConfigError(f"resolver_check.interval must be between 10 and 86400 "
                              f"seconds, not {self.interval!r}")


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """The Prometheus endpoint: ``listen`` is ``HOST:PORT`` (``[V6]:PORT``), or None (off)."""

    listen: str | None = None

    def __post_init__(self) -> None:
        if self.listen is not None:
            self.address()  # validates

    def address(self) -> tuple[str, int]:
        text = self.listen or ""
        host, sep, port = text.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(f"metrics.listen must be IP:PORT, not {text!r}") from None
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"metrics.listen needs a port 1-65535: {text!r}")
        return host, int(port)

    @property
    def is_loopback(self) -> bool:
        return self.listen is not None and ipaddress.ip_address(self.address()[0]).is_loopback


_REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})
MAX_CACHE_ENTRIES = 100_000_000
MAX_MEMORY_BYTES = 1 << 40
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
    ``memory_max_bytes`` bounds the encoded size of what the LRU (and the memory
    backend) hold: a status of a domain with many hosts and records is large.
    """

    backend: str = BackendName.SQLITE.value
    path: str = "/var/lib/danemilter/cache.sqlite3"
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "danemilter:"
    max_entries: int = 100_000
    lru_entries: int = 10_000
    memory_max_bytes: int = 64 * 1024 * 1024
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
                                ("memory_max_bytes", 0, MAX_MEMORY_BYTES),
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


POLICY_SOCKET_OFF = "off"
POLICY_SOCKET_NAME = "policy.sock"


@dataclass(frozen=True, slots=True)
class Settings:
    listen: str = "inet:8891@127.0.0.1"
    transport: Transport = Transport.ASYNCIO
    limits: MilterLimits = field(default_factory=MilterLimits)
    socket_mode: int | None = None
    socket_group: str | None = None
    # The TLS-policy socket (docs/policy-socket.md): None = policy.sock next to a unix
    # milter socket (off for inet; beside listen: systemd, the socket systemd passes
    # named "policy", if any), "off", or a listen spec ("systemd": the one named
    # "policy"); mode and group default to the milter socket's.
    policy_socket: str | None = None
    policy_socket_mode: int | None = None
    policy_socket_group: str | None = None
    resolver: ResolverSettings = field(default_factory=ResolverSettings)
    resolver_check: ResolverCheckSettings = field(default_factory=ResolverCheckSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    deadline: float = 10.0
    header: str = "X-DANE-Status"
    report_only: bool = False
    on_error: ErrorAction = ErrorAction.TEMPFAIL
    apply_to: ApplyTo = ApplyTo.ALL
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    skip_domains: frozenset[str] = frozenset()
    policy: Policy = field(default_factory=Policy)
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    mta_sts: MtaStsSettings = field(default_factory=MtaStsSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    log_level: str = "info"
    source: str = BUILT_IN

    def policy_listen(self) -> str | None:
        """Where the policy socket listens; None when it is off."""
        if self.policy_socket == POLICY_SOCKET_OFF:
            return None
        if self.policy_socket is not None:
            return self.policy_socket
        if self.listen == SYSTEMD_LISTEN:
            return SYSTEMD_LISTEN
        scheme, _, path = self.listen.partition(":")
        if scheme not in ("unix", "local"):
            return None
        return f"unix:{path.rpartition('/')[0]}/{POLICY_SOCKET_NAME}"

    def skips(self, domain: str) -> bool:
        """Local domains (exact or ``.suffix``) are not delivered over SMTP by us."""
        if domain in self.skip_domains:
            return True
        labels = domain.split(".")
        return any("." + ".".join(labels[i:]) in self.skip_domains
                   for i in range(1, len(labels)))
