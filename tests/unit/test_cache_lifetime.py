"""Cache lifetimes (danemilter.cache.lifetime), the entry codec, and the cache settings.

Lifetimes follow the rules in danemilter/cache/lifetime.py, which come from the issue
and RFC 2308 §5: DNS TTL clamped to [min_ttl, max_ttl]; negative answers capped by
negative_max_ttl; tempfail and anything resting on a failed (bogus) host only
tempfail_ttl.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import yaml

from danemilter.cache import CacheSettings, CodecError, decode, encode, lifetime
from danemilter.cache.settings import parse_cache_section
from danemilter.config.loader import _Loader
from danemilter.dane import DomainState, DomainStatus, HostState, HostStatus
from danemilter.errors import ConfigError
from danemilter.tlsa import TLSARecord

EE = TLSARecord.from_text("3 1 1 " + "ab" * 32)
TA = TLSARecord.from_text("2 0 1 " + "cd" * 32)
PKIX = TLSARecord.from_text("1 1 1 " + "ef" * 32)


def host(name: str = "mx.example.org", state: HostState = HostState.DANE, ttl: int = 300,
         records: tuple[TLSARecord, ...] = (EE,)) -> HostStatus:
    base = name if state in (HostState.DANE, HostState.UNUSABLE) else None
    return HostStatus(name, 10, ("192.0.2.1", "2001:db8::1"), True, state, base,
                      records if base else (), f"{name}: {state}", ttl)


def status(state: DomainState, ttl: int, *hosts: HostStatus,
           domain: str = "example.org") -> DomainStatus:
    return DomainStatus(domain, state, 8 if state is DomainState.DANE else 0, True,
                        tuple(hosts), f"status {state}", ttl)


DEFAULTS = CacheSettings()
FAILED = host("mx2.example.org", HostState.FAILED, ttl=0, records=())

LIFETIMES = [
    # (why, status, settings, expected seconds)
    ("positive TTL within the clamp is kept", status(DomainState.DANE, 300, host()),
     DEFAULTS, 300),
    ("a short TTL is raised to min_ttl", status(DomainState.DANE, 5, host(ttl=5)),
     DEFAULTS, 60),
    ("a long TTL is cut to max_ttl", status(DomainState.DANE, 604_800, host(ttl=604_800)),
     DEFAULTS, 86_400),
    ("partial is a positive answer", status(DomainState.PARTIAL, 7200, host()),
     DEFAULTS, 7200),
    ("unusable-tlsa is a positive answer",
     status(DomainState.UNUSABLE_TLSA, 7200, host(state=HostState.UNUSABLE, records=(PKIX,))),
     DEFAULTS, 7200),
    ("nxdomain: RFC 2308 TTL under the cap is kept", status(DomainState.NXDOMAIN, 900),
     DEFAULTS, 900),
    ("nxdomain: capped by negative_max_ttl", status(DomainState.NXDOMAIN, 10_800),
     DEFAULTS, 3600),
    ("nxdomain: still raised to min_ttl", status(DomainState.NXDOMAIN, 1), DEFAULTS, 60),
    ("null MX is capped like a denial", status(DomainState.NULLMX, 86_400), DEFAULTS, 3600),
    ("none (secure denial of TLSA) is capped",
     status(DomainState.NONE, 7200, host(state=HostState.NONE)), DEFAULTS, 3600),
    ("none below the cap keeps its TTL",
     status(DomainState.NONE, 600, host(state=HostState.NONE)), DEFAULTS, 600),
    ("dane-mismatch is re-checked within the negative cap",
     status(DomainState.DANE_MISMATCH, 7200, host()), DEFAULTS, 3600),
    ("tempfail: only the retry interval", status(DomainState.TEMPFAIL, 0), DEFAULTS, 30),
    ("tempfail never longer, whatever its TTL", status(DomainState.TEMPFAIL, 5000),
     DEFAULTS, 30),
    ("dane beside a failed (bogus) host: only the retry interval",
     status(DomainState.DANE, 3000, host(ttl=3000), FAILED), DEFAULTS, 30),
    ("partial beside a failed host: only the retry interval",
     status(DomainState.PARTIAL, 3000, host(ttl=3000), FAILED), DEFAULTS, 30),
    ("none beside a failed host: only the retry interval",
     status(DomainState.NONE, 3000, host(state=HostState.NONE), FAILED), DEFAULTS, 30),
    ("tempfail_ttl 0 means tempfails are not cached", status(DomainState.TEMPFAIL, 0),
     replace(DEFAULTS, tempfail_ttl=0), 0),
    ("min_ttl 0 and TTL 0: not cached", status(DomainState.DANE, 0, host(ttl=0)),
     replace(DEFAULTS, min_ttl=0), 0),
    ("negative cap below min_ttl wins for denials", status(DomainState.NXDOMAIN, 10),
     replace(DEFAULTS, min_ttl=300, negative_max_ttl=60), 60),
    ("max_ttl bounds the retry interval too", status(DomainState.TEMPFAIL, 0),
     replace(DEFAULTS, max_ttl=20, min_ttl=10), 20),
    ("a negative TTL from a broken evaluator is treated as 0",
     status(DomainState.DANE, -5, host()), replace(DEFAULTS, min_ttl=0), 0),
]


@pytest.mark.parametrize(("why", "value", "settings", "expected"), LIFETIMES,
                         ids=[row[0] for row in LIFETIMES])
def test_lifetime(why: str, value: DomainStatus, settings: CacheSettings,
                  expected: int) -> None:
    assert lifetime(value, settings) == expected, why


# --- codec ---------------------------------------------------------------------

ROUND_TRIP = [
    status(DomainState.DANE, 300, host(records=(EE, TA)), host("mx2.example.org", ttl=600)),
    status(DomainState.PARTIAL, 60, host(), FAILED),
    status(DomainState.UNUSABLE_TLSA, 60, host(state=HostState.UNUSABLE, records=(PKIX,))),
    status(DomainState.NXDOMAIN, 900),
    status(DomainState.TEMPFAIL, 0),
    DomainStatus("xn--bcher-kva.example", DomainState.NONE, 0, False,
                 (HostStatus("xn--bcher-kva.example", 0, (), False, HostState.NONE, None, (),
                             "no address — “quoted”", 3),), "ünïcode reason", 3),
    DomainStatus("alias.example", DomainState.DANE, 4, True, (host(records=(TA,)),),
                 "through a secure CNAME", 300, canonical="target.example"),
]


@pytest.mark.parametrize("value", ROUND_TRIP, ids=lambda s: f"{s.domain}-{s.status}")
def test_codec_round_trip(value: DomainStatus) -> None:
    entry = decode(encode(value, 1_700_000_000.25))
    assert entry.status == value
    assert entry.stored_at == 1_700_000_000.25


GOOD = encode(ROUND_TRIP[0], 1_700_000_000.0)


def _mutated(edit: str) -> bytes:
    document = json.loads(GOOD)
    exec(edit, {"d": document, "s": document["status"], "h": document["status"]["hosts"][0]})
    return json.dumps(document).encode()


CORRUPT = {
    "empty": b"",
    "garbage": b"\x00\xffgarbage\x13\x37",
    "not utf-8": b"\xff\xfe{}",
    "truncated": GOOD[:-7],
    "a JSON array": b"[1, 2, 3]",
    "a JSON string": b'"status"',
    "deeply nested": b"[" * 100_000 + b"]" * 100_000,
    "oversized": b'{"v": 1, "pad": "' + b"x" * (1 << 20) + b'"}',
    "NaN stored_at": GOOD.replace(b'"stored_at":1700000000.0', b'"stored_at":NaN'),
    "negative stored_at": _mutated("d['stored_at'] = -1"),
    "string stored_at": _mutated("d['stored_at'] = 'yesterday'"),
    "future version": _mutated("d['v'] = 3"),
    "previous version": _mutated("d['v'] = 1"),
    "version true": _mutated("d['v'] = True"),
    "missing version": _mutated("del d['v']"),
    "extra top key": _mutated("d['extra'] = 1"),
    "missing status key": _mutated("del s['ttl']"),
    "extra status key": _mutated("s['probes'] = []"),
    "unknown status": _mutated("s['status'] = 'maybe'"),
    "status not a string": _mutated("s['status'] = 3"),
    "usage as text": _mutated("s['usage'] = '8'"),
    "usage as bool": _mutated("s['usage'] = True"),
    "negative ttl": _mutated("s['ttl'] = -1"),
    "float ttl": _mutated("s['ttl'] = 1.5"),
    "mx_secure as int": _mutated("s['mx_secure'] = 1"),
    "empty domain": _mutated("s['domain'] = ''"),
    "hosts not a list": _mutated("s['hosts'] = {}"),
    "host not an object": _mutated("s['hosts'] = ['mx.example.org']"),
    "host state unknown": _mutated("h['tlsa_state'] = 'great'"),
    "host missing ttl": _mutated("del h['ttl']"),
    "addresses not a list": _mutated("h['addresses'] = '192.0.2.1'"),
    "address not a string": _mutated("h['addresses'] = [1]"),
    "bad TLSA hex": _mutated("h['records'] = ['3 1 1 zz']"),
    "short TLSA": _mutated("h['records'] = ['3 1']"),
    "TLSA usage out of range": _mutated("h['records'] = ['300 1 1 ab']"),
    "tlsa_base empty": _mutated("h['tlsa_base'] = ''"),
}


@pytest.mark.parametrize("data", CORRUPT.values(), ids=list(CORRUPT))
def test_codec_rejects_malformed_entries(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode(data)


def test_codec_rejects_every_truncation() -> None:
    for end in range(len(GOOD)):
        with pytest.raises(CodecError):
            decode(GOOD[:end])


# --- settings ------------------------------------------------------------------

@pytest.mark.parametrize(("change", "message"), [
    ({"backend": "mongodb"}, "cache.backend must be one of"),
    ({"path": ""}, "cache.path"),
    ({"url": "http://127.0.0.1:6379"}, "cache.url"),
    ({"key_prefix": "dane milter:"}, "cache.key_prefix"),
    ({"max_entries": 0}, "cache.max_entries"),
    ({"max_entries": True}, "cache.max_entries"),
    ({"lru_entries": -1}, "cache.lru_entries"),
    ({"min_ttl": 600, "max_ttl": 300}, "exceeds cache.max_ttl"),
    ({"tempfail_ttl": 2.5}, "cache.tempfail_ttl"),
    ({"negative_max_ttl": -1}, "cache.negative_max_ttl"),
    ({"refresh_ahead": 1.0}, "cache.refresh_ahead"),
    ({"refresh_ahead": float("nan")}, "cache.refresh_ahead"),
])
def test_settings_validation(change: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CacheSettings(**change)  # type: ignore[arg-type]


def test_settings_defaults_are_valid() -> None:
    settings = CacheSettings()
    assert (settings.backend, settings.min_ttl, settings.max_ttl) == ("sqlite", 60, 86_400)


def _parse(text: str) -> tuple[CacheSettings | None, list[str]]:
    loader = _Loader("/etc/danemilter/danemilter.yaml")
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    assert isinstance(root, yaml.MappingNode)
    node = root.value[0][1]
    try:
        result: CacheSettings | None = parse_cache_section(loader, node)
    except ConfigError as exc:
        loader.errors.append(exc)
        result = None
    return result, [str(e) for e in loader.errors]


def test_parse_cache_section_full() -> None:
    settings, errors = _parse(
        "cache:\n  backend: redis\n  url: redis://cache.internal:6380/2\n"
        "  key_prefix: 'fleet:'\n  max_entries: 5000\n  lru_entries: 100\n  min_ttl: 30\n"
        "  max_ttl: 3600\n  negative_max_ttl: 600\n  tempfail_ttl: 10\n  refresh_ahead: 0.2\n")
    assert errors == []
    assert settings == CacheSettings(backend="redis", url="redis://cache.internal:6380/2",
                                     key_prefix="fleet:", max_entries=5000, lru_entries=100,
                                     min_ttl=30, max_ttl=3600, negative_max_ttl=600,
                                     tempfail_ttl=10, refresh_ahead=0.2)


def test_parse_cache_section_empty_means_defaults() -> None:
    assert _parse("cache:\n") == (CacheSettings(), [])


@pytest.mark.parametrize(("text", "message"), [
    ("cache:\n  backend: mongodb\n", ":2: cache.backend must be one of memory|sqlite|redis"),
    ("cache:\n  size: 5\n", ":2: unknown key 'size' in cache"),
    ("cache:\n  max_entries: 1.5\n", ":2: cache.max_entries must be a whole number"),
    ("cache:\n  min_ttl: soon\n", ":2: cache.min_ttl must be a number"),
    ("cache:\n  backend: redis\n  path: /tmp/x\n", ":3: cache.path applies only to backend"),
    ("cache:\n  url: redis://h/0\n", ":2: cache.url applies only to backend redis"),
    ("cache:\n  min_ttl: 600\n  max_ttl: 60\n", ":2: cache.min_ttl (600) exceeds"),
    ("cache:\n  refresh_ahead: 2\n", ":2: cache.refresh_ahead must be between 0 and 0.9"),
    ("cache: [sqlite]\n", ":1: cache must be a mapping"),
])
def test_parse_cache_section_errors_name_the_line(text: str, message: str) -> None:
    _, errors = _parse(text)
    assert errors, text
    assert any(e.startswith("/etc/danemilter/danemilter.yaml") and message in e
               for e in errors), errors
