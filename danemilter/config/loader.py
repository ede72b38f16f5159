"""The policy file (/etc/danemilter/danemilter.yaml) loaded once into frozen, validated values.

The YAML is walked as a node tree rather than loaded into dicts, so that every
error (unknown key, wrong type, bad value) names the file and the line. The values
themselves live in :mod:`danemilter.config.model`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields, replace
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

import yaml

from danemilter.config.model import (
    DEFAULT_PATH,
    LISTEN_SPEC,
    MAX_MEMORY_BYTES,
    MAX_MX_HOSTS,
    MAX_RESOLVER_QUERIES,
    POLICY_SOCKET_OFF,
    SYSTEMD_LISTEN,
    ApplyTo,
    BackendName,
    CacheSettings,
    DaneMode,
    ErrorAction,
    Exemption,
    FailAction,
    MetricsSettings,
    MilterLimits,
    MtaStsSettings,
    OcspMode,
    Policy,
    ProbeMode,
    ProbeSettings,
    ResolverCheckMode,
    ResolverCheckSettings,
    ResolverSettings,
    Rule,
    Settings,
    TlsRequirement,
    Transport,
    Undeliverable,
)
from danemilter.errors import ConfigError, InputError
from danemilter.files import FileReadError, read_regular_file
from danemilter.names import normalize_domain

# --- YAML node walking -------------------------------------------------------

T = TypeVar("T")
E = TypeVar("E", bound=StrEnum)


class ConfigErrors(ConfigError):
    """Every problem found in one file; ``str()`` is the first, ``errors`` has them all."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"{errors[0]}{more}")


class _Loader:
    def __init__(self, path: str) -> None:
        self.path = path
        self.errors: list[ConfigError] = []

    @contextmanager
    def collecting(self) -> Iterator[None]:
        """Record a ConfigError and go on, so one run reports every problem."""
        try:
            yield
        except ConfigError as exc:
            self.errors.append(exc)

    def error(self, node: yaml.Node, message: str) -> ConfigError:
        return ConfigError(message, self.path, node.start_mark.line + 1)

    def mapping(self, node: yaml.Node, what: str, allowed: frozenset[str]
                ) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return {}
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{what} must be a mapping")
        result: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise self.error(key_node, f"keys of {what} must be plain names")
            key = str(key_node.value)
            if allowed and key not in allowed:
                known = ", ".join(sorted(allowed))
                self.errors.append(
                    self.error(key_node, f"unknown key {key!r} in {what} (known: {known})"))
            elif key in result:
                self.errors.append(self.error(key_node, f"duplicate key {key!r} in {what}"))
            else:
                result[key] = (key_node, value_node)
        return result

    def scalar(self, node: yaml.Node, what: str) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(node, f"{what} must be a single value")
        return str(node.value)

    def string(self, node: yaml.Node, what: str) -> str:
        value = self.scalar(node, what)
        if node.tag != "tag:yaml.org,2002:str" or not value:
            raise self.error(node, f"{what} must be a non-empty string")
        return value

    def optional_string(self, node: yaml.Node, what: str) -> str | None:
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return None
        return self.string(node, what)

    def boolean(self, node: yaml.Node, what: str) -> bool:
        value = self.scalar(node, what)
        if node.tag != "tag:yaml.org,2002:bool":
            raise self.error(node, f"{what} must be true or false, not {value!r}")
        return value.lower() in ("true", "yes", "on")

    def number(self, node: yaml.Node, what: str, low: float, high: float) -> float:
        value = self.scalar(node, what)
        if node.tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
            raise self.error(node, f"{what} must be a number, not {value!r}")
        number = float(value)
        if not low <= number <= high:
            raise self.error(node, f"{what} must be between {low:g} and {high:g}")
        return number

    def whole(self, node: yaml.Node, what: str, low: int, high: int) -> int:
        number = self.number(node, what, low, high)
        if number != int(number):
            raise self.error(node, f"{what} must be a whole number")
        return int(number)

    def choice(self, node: yaml.Node, what: str, enum: type[E]) -> E:
        # YAML 1.1 reads a bare `off` as false; accept it as the word the user wrote.
        value = self.scalar(node, what)
        if node.tag == "tag:yaml.org,2002:bool":
            value = value.lower()
        try:
            return enum(value)
        except ValueError:
            allowed = "|".join(e.value for e in enum)
            raise self.error(node, f"{what} must be one of {allowed}, not {value!r}") from None

    def sequence(self, node: yaml.Node, what: str, item: Callable[[yaml.Node], T]) -> list[T]:
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return []
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, f"{what} must be a list")
        return [item(child) for child in node.value]

    def domain_pattern(self, node: yaml.Node, what: str) -> str:
        text = self.string(node, what)
        dot = text.startswith(".")
        try:
            name = normalize_domain(text[1:] if dot else text)
        except InputError as exc:
            raise self.error(node, f"{what}: {exc}") from None
        return "." + name if dot else name


_RESOLVER_KEYS = frozenset({"address", "port", "timeout", "max_queries", "max_mx_hosts"})
_POLICY_KEYS = frozenset({"default", "domains", "exceptions"})
_EXEMPTION_KEYS = frozenset({"until", "reason"})
_RULE_KEYS = frozenset({"dane", "ocsp", "on_fail", "reply", "probe", "tls",
                        "undeliverable"})
_PROBE_KEYS = frozenset({"port", "timeout", "concurrency", "helo", "allow_private",
                         "cache_ttl"})
_HEADER = re.compile(r"^[!-9;-~]+$")  # RFC 5322 ftext
_LOG_LEVELS = frozenset({"debug", "info", "warning", "error"})


def _rule(loader: _Loader, node: yaml.Node, what: str, base: Rule) -> Rule:
    fields = loader.mapping(node, what, _RULE_KEYS)
    values: dict[str, object] = {}
    for key, enum in (("dane", DaneMode), ("ocsp", OcspMode), ("on_fail", FailAction),
                      ("probe", ProbeMode), ("tls", TlsRequirement),
                      ("undeliverable", Undeliverable)):
        if key in fields:
            with loader.collecting():
                values[key] = loader.choice(fields[key][1], f"{what}.{key}", enum)
    if "reply" in fields:
        with loader.collecting():
            reply = loader.optional_string(fields["reply"][1], f"{what}.reply")
            if reply is not None and any(c in reply for c in "\r\n%"):
                raise loader.error(fields["reply"][1],
                                   f"{what}.reply must be one line without '%'")
            values["reply"] = reply
    rule = replace(base, **values)  # type: ignore[arg-type]
    if rule.dane is DaneMode.OFF and rule.tls is TlsRequirement.AUTHENTICATED:
        # dane: off means "not checked at all"; nothing could enforce the requirement.
        raise loader.error(node, f"{what}: tls: authenticated needs dane: try or require")
    return rule


_MTA_STS_KEYS = frozenset({"port", "timeout", "ca_file"})


def _mta_sts(loader: _Loader, node: yaml.Node) -> MtaStsSettings:
    fields = loader.mapping(node, "mta_sts", _MTA_STS_KEYS)
    values: dict[str, object] = {}
    with loader.collecting():
        if "port" in fields:
            values["port"] = loader.whole(fields["port"][1], "mta_sts.port", 1, 65535)
        if "timeout" in fields:
            values["timeout"] = loader.number(fields["timeout"][1], "mta_sts.timeout", 0.1, 60)
        if "ca_file" in fields:
            values["ca_file"] = _ca_file(loader, fields["ca_file"][1])
    return replace(MtaStsSettings(), **values)  # type: ignore[arg-type]


def _ca_file(loader: _Loader, node: yaml.Node) -> str:
    """A PEM file with at least one certificate: one that is missing or unreadable would
    otherwise fail every policy fetch and every PKIX check, silently, at run time."""
    path = loader.string(node, "mta_sts.ca_file")
    try:
        data = read_regular_file(path)
    except InputError as exc:
        raise loader.error(node, f"mta_sts.ca_file: {exc}") from None
    # OpenSSL parses it (a bundle may hold roots that cryptography would warn about).
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise loader.error(node, f"mta_sts.ca_file: {path} holds no PEM certificate")
    return path


def _listen(loader: _Loader, node: yaml.Node) -> str:
    listen = loader.string(node, "listen")
    if not LISTEN_SPEC.match(listen):
        raise loader.error(node, "listen must be inet:PORT@HOST, inet6:PORT@HOST, "
                           f"unix:/PATH or systemd, not {listen!r}")
    return listen


def _socket_mode(loader: _Loader, node: yaml.Node, what: str = "socket_mode") -> int:
    mode = loader.scalar(node, what)
    if not re.fullmatch(r"0?[0-7]{3}", mode):
        raise loader.error(node, f"{what} must be an octal mode like \"0660\": {mode!r}")
    return int(mode, 8)


def _policy_socket(loader: _Loader, node: yaml.Node) -> str:
    value = loader.scalar(node, "policy_socket")
    if node.tag == "tag:yaml.org,2002:bool" and value.lower() in ("off", "false", "no"):
        return POLICY_SOCKET_OFF  # YAML 1.1 reads a bare `off` as false
    if value not in (POLICY_SOCKET_OFF, SYSTEMD_LISTEN) and not LISTEN_SPEC.match(value):
        raise loader.error(node, "policy_socket must be unix:/PATH, inet:PORT@HOST, "
                           f"inet6:PORT@HOST, systemd or off, not {value!r}")
    return value


def _resolver(loader: _Loader, node: yaml.Node) -> ResolverSettings:
    fields = loader.mapping(node, "resolver", _RESOLVER_KEYS)
    address, port, timeout = "127.0.0.1", 53, 3.0
    if "address" in fields:
        address = loader.string(fields["address"][1], "resolver.address")
    if "port" in fields:
        port = int(loader.number(fields["port"][1], "resolver.port", 1, 65535))
    if "timeout" in fields:
        timeout = loader.number(fields["timeout"][1], "resolver.timeout", 0.05, 60)
    limits = {key: loader.whole(fields[key][1], f"resolver.{key}", 1, high)
              for key, high in (("max_queries", MAX_RESOLVER_QUERIES),
                                ("max_mx_hosts", MAX_MX_HOSTS)) if key in fields}
    try:
        return ResolverSettings(address, port, timeout, **limits)
    except InputError as exc:
        raise loader.error(node, str(exc)) from None


_CHECK_KEYS = frozenset(f.name for f in fields(ResolverCheckSettings))


def _resolver_check(loader: _Loader, node: yaml.Node) -> ResolverCheckSettings:
    """``resolver_check: refuse | degrade | off``, or a mapping with ``mode`` and the names."""
    if isinstance(node, yaml.ScalarNode) and node.tag != "tag:yaml.org,2002:null":
        return ResolverCheckSettings(loader.choice(node, "resolver_check", ResolverCheckMode))
    entries = loader.mapping(node, "resolver_check", _CHECK_KEYS)
    values: dict[str, object] = {}
    with loader.collecting():
        if "mode" in entries:
            values["mode"] = loader.choice(entries["mode"][1], "resolver_check.mode",
                                           ResolverCheckMode)
        for key in ("signed_name", "signed_type", "bogus_type"):
            if key in entries:
                values[key] = loader.string(entries[key][1], f"resolver_check.{key}")
        if "bogus_name" in entries:
            values["bogus_name"] = loader.optional_string(entries["bogus_name"][1],
                                                          "resolver_check.bogus_name")
        if "interval" in entries:
            values["interval"] = loader.number(entries["interval"][1],
                                               "resolver_check.interval", 10, 86_400)
    for key in ("signed_type", "bogus_type"):
        if isinstance(values.get(key), str):
            values[key] = str(values[key]).upper()
    try:
        return replace(ResolverCheckSettings(), **values)  # type: ignore[arg-type]
    except ConfigError as exc:
        raise loader.error(node, str(exc)) from None


def _metrics(loader: _Loader, node: yaml.Node) -> MetricsSettings:
    entries = loader.mapping(node, "metrics", frozenset({"listen"}))
    if "listen" not in entries:
        return MetricsSettings()
    listen = loader.optional_string(entries["listen"][1], "metrics.listen")
    try:
        return MetricsSettings(listen)
    except ConfigError as exc:
        raise loader.error(entries["listen"][1], str(exc)) from None


def _header(loader: _Loader, node: yaml.Node) -> str:
    header = loader.string(node, "header")
    if not _HEADER.match(header):
        raise loader.error(node, f"header must be a valid header field name: {header!r}")
    return header


def _networks(loader: _Loader, node: yaml.Node
              ) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    def network(item: yaml.Node) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        text = loader.string(item, "networks entry")
        try:
            return ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise loader.error(item, f"not a network: {text!r}") from None
    return tuple(loader.sequence(node, "networks", network))


def _skip_domains(loader: _Loader, node: yaml.Node) -> frozenset[str]:
    return frozenset(loader.sequence(
        node, "skip_domains", lambda item: loader.domain_pattern(item, "skip_domains entry")))


def _policy(loader: _Loader, node: yaml.Node) -> Policy:
    fields = loader.mapping(node, "policy", _POLICY_KEYS)
    default = Rule()
    if "default" in fields:
        with loader.collecting():
            default = _rule(loader, fields["default"][1], "policy.default", Rule())
    domains = _by_domain(loader, fields, "domains",
                         lambda value, what: _rule(loader, value, what, default))
    exceptions = _by_domain(loader, fields, "exceptions",
                            lambda value, what: _exemption(loader, value, what))
    return Policy(default, domains, exceptions)


def _by_domain(loader: _Loader, fields: dict[str, tuple[yaml.Node, yaml.Node]], key: str,
               item: Callable[[yaml.Node, str], T]) -> dict[str, T]:
    """``policy.<key>``: a table keyed by domain or ``.suffix``, each key once."""
    table: dict[str, T] = {}
    if key not in fields:
        return table
    entries = loader.mapping(fields[key][1], f"policy.{key}", frozenset())
    for key_node, value_node in entries.values():
        with loader.collecting():
            pattern = loader.domain_pattern(key_node, f"policy.{key} key")
            if pattern in table:
                raise loader.error(key_node, f"policy.{key} lists {pattern} twice")
            table[pattern] = item(value_node, f"policy.{key}[{pattern}]")
    return table


def _exemption(loader: _Loader, node: yaml.Node, what: str) -> Exemption:
    fields = loader.mapping(node, what, _EXEMPTION_KEYS)
    missing = sorted(_EXEMPTION_KEYS - fields.keys())
    if missing:
        raise loader.error(node, f"{what} needs {' and '.join(missing)}")
    until_node = fields["until"][1]
    text = loader.scalar(until_node, f"{what}.until")
    try:
        until = date.fromisoformat(text)
    except ValueError:
        raise loader.error(until_node, f"{what}.until must be a date like 2027-01-31, "
                           f"not {text!r}") from None
    reason = loader.string(fields["reason"][1], f"{what}.reason")
    if any(c in reason for c in "\r\n"):
        raise loader.error(fields["reason"][1], f"{what}.reason must be one line")
    return Exemption(until, reason)


def _probe(loader: _Loader, node: yaml.Node) -> ProbeSettings:
    fields = loader.mapping(node, "probe", _PROBE_KEYS)
    values: dict[str, object] = {}
    with loader.collecting():
        if "port" in fields:
            values["port"] = int(loader.number(fields["port"][1], "probe.port", 1, 65535))
        if "timeout" in fields:
            values["timeout"] = loader.number(fields["timeout"][1], "probe.timeout", 0.1, 120)
        if "concurrency" in fields:
            values["concurrency"] = int(loader.number(fields["concurrency"][1],
                                                      "probe.concurrency", 1, 256))
        if "helo" in fields:
            values["helo"] = loader.domain_pattern(fields["helo"][1], "probe.helo")
        if "allow_private" in fields:
            values["allow_private"] = loader.boolean(fields["allow_private"][1],
                                                     "probe.allow_private")
        if "cache_ttl" in fields:
            values["cache_ttl"] = int(loader.number(fields["cache_ttl"][1], "probe.cache_ttl",
                                                    0, 86_400))
    return replace(ProbeSettings(), **values)  # type: ignore[arg-type]


_LIMIT_KEYS = frozenset(f.name for f in fields(MilterLimits))


def _limits(loader: _Loader, node: yaml.Node) -> MilterLimits:
    entries = loader.mapping(node, "limits", _LIMIT_KEYS)
    values: dict[str, object] = {}
    with loader.collecting():
        if "max_connections" in entries:
            values["max_connections"] = loader.whole(entries["max_connections"][1],
                                                     "limits.max_connections", 1, 100_000)
        if "idle_timeout" in entries:
            values["idle_timeout"] = loader.number(entries["idle_timeout"][1],
                                                   "limits.idle_timeout", 1, 86_400)
        if "max_packet" in entries:
            # Below 64 KiB a legitimate header or body chunk from Postfix would not fit.
            values["max_packet"] = loader.whole(entries["max_packet"][1], "limits.max_packet",
                                                65_536, 64 * 1024 * 1024)
    return replace(MilterLimits(), **values)  # type: ignore[arg-type]


_CACHE_INT_KEYS = ("max_entries", "lru_entries", "memory_max_bytes", "min_ttl", "max_ttl",
                   "negative_max_ttl", "tempfail_ttl")
CACHE_KEYS = frozenset(f.name for f in fields(CacheSettings))


def parse_cache_section(loader: _Loader, node: yaml.Node) -> CacheSettings:
    """The ``cache:`` mapping, with every error naming the file and line."""
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
    for key in _CACHE_INT_KEYS:
        if key in entries:
            with loader.collecting():
                values[key] = loader.whole(entries[key][1], f"cache.{key}", 0,
                                           MAX_MEMORY_BYTES)
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


def _log_level(loader: _Loader, node: yaml.Node) -> str:
    level = loader.string(node, "log_level").lower()
    if level not in _LOG_LEVELS:
        raise loader.error(node, f"log_level must be one of {'|'.join(sorted(_LOG_LEVELS))}")
    return level


_FIELDS: dict[str, Callable[[_Loader, yaml.Node], object]] = {
    "listen": _listen,
    "transport": lambda loader, node: loader.choice(node, "transport", Transport),
    "limits": _limits,
    "socket_mode": _socket_mode,
    "socket_group": lambda loader, node: loader.string(node, "socket_group"),
    "policy_socket": _policy_socket,
    "policy_socket_mode": lambda loader, node: _socket_mode(loader, node, "policy_socket_mode"),
    "policy_socket_group": lambda loader, node: loader.string(node, "policy_socket_group"),
    "resolver": _resolver,
    "resolver_check": _resolver_check,
    "metrics": _metrics,
    "deadline": lambda loader, node: loader.number(node, "deadline", 0.1, 25),
    "header": _header,
    "report_only": lambda loader, node: loader.boolean(node, "report_only"),
    "on_error": lambda loader, node: loader.choice(node, "on_error", ErrorAction),
    "apply_to": lambda loader, node: loader.choice(node, "apply_to", ApplyTo),
    "networks": _networks,
    "skip_domains": _skip_domains,
    "policy": _policy,
    "probe": _probe,
    "mta_sts": _mta_sts,
    "cache": parse_cache_section,
    "log_level": _log_level,
}
_TOP_KEYS = frozenset(_FIELDS)


def parse(text: str, path: str) -> Settings:
    """Parse policy text; raise ConfigErrors naming ``path`` and the line of every problem."""
    loader = _Loader(path)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigErrors([ConfigError(f"invalid YAML: {exc.problem}", path, line)]) from None
    except yaml.YAMLError as exc:
        raise ConfigErrors([ConfigError(f"invalid YAML: {exc}", path)]) from None
    except RecursionError:
        # PyYAML composes nested collections recursively: a 1 KB file of "[" is enough.
        raise ConfigErrors([ConfigError("invalid YAML: nested too deeply", path)]) from None
    settings = Settings(source=path)
    if root is None or (isinstance(root, yaml.ScalarNode)
                        and root.tag == "tag:yaml.org,2002:null"):
        # Built-in defaults come from having no file; an empty one (a truncated copy,
        # a botched edit) must not quietly lower a "require" policy to "try".
        raise ConfigErrors([ConfigError("the file is empty or holds only comments "
                                        "(write {} for built-in defaults)", path)])
    values: dict[str, object] = {}
    with loader.collecting():
        top = loader.mapping(root, "the configuration", _TOP_KEYS)
        for key, (_, node) in top.items():
            with loader.collecting():
                values[key] = _FIELDS[key](loader, node)
        listen = str(values.get("listen", Settings().listen))
        if values.get("transport") is Transport.LIBMILTER and not listen.startswith(
                ("unix:", "local:", SYSTEMD_LISTEN)):
            # libmilter trusts its peer (an odd macro packet crashes it): only the
            # MTA may reach it, through a socket file's permissions (docs/security.md).
            raise loader.error(top["transport"][1], "transport: libmilter needs listen: "
                               "unix:/PATH (libmilter must not be reachable over TCP)")
        if values.get("apply_to") is ApplyTo.NETWORKS and not values.get("networks"):
            raise loader.error(top["apply_to"][1], "apply_to: networks needs a networks list")
    if loader.errors:
        loader.errors.sort(key=lambda e: e.line or 0)
        raise ConfigErrors(loader.errors)
    return replace(settings, **values)  # type: ignore[arg-type]


def chosen_path(option: str | None) -> str | None:
    """The file named by ``--config``, else the installed policy file if there is one;
    ``None`` (built-in defaults) when neither."""
    if option is not None:
        return option
    return str(DEFAULT_PATH) if DEFAULT_PATH.exists() else None


def load(path: str | Path | None) -> Settings:
    """Load the policy file; ``None`` means built-in defaults (dane: try, on_fail: tag)."""
    if path is None:
        return Settings()
    try:
        text = read_regular_file(path).decode("utf-8")
    except FileReadError as exc:
        # The file first, as every configuration error names it (file:line: ...).
        raise ConfigError(f"cannot read: {exc.reason}", exc.path) from None
    except InputError as exc:
        raise ConfigError(str(exc)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read: {exc}", str(path)) from None
    return parse(text, str(path))
