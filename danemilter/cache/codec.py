"""Statuses and probe results <-> bytes for the shared cache: versioned JSON, decoded strictly.

An entry is ``{"v": 2, "stored_at": UNIX_TIME, "status": {...}}``. The status is
written field by field from the dataclasses (not from ``to_json()``, whose shape
belongs to the command-line contract) and includes the TTLs. Anything that does
not decode to exactly this shape raises :class:`CodecError`; the cache turns that
into a miss.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from danemilter.errors import InputError
from danemilter.judge import DaneVerdict, OcspState, PkixVerdict
from danemilter.probe_result import SYSTEM_TRUST, ProbeResult
from danemilter.status import DomainState, DomainStatus, HostState, HostStatus
from danemilter.tlsa import TLSARecord

# 2: statuses carry "canonical" (the next-hop domain's secure CNAME expansion).
VERSION = 2
_MAX_BYTES = 1 << 20

E = TypeVar("E", DomainState, HostState, DaneVerdict, OcspState, PkixVerdict)


class CodecError(ValueError):
    """A cache entry that is not a well-formed entry of this version."""


class OtherVersionError(CodecError):
    """A well-formed entry of another format version (written before an upgrade, or by
    a newer daemon sharing the cache): not corrupt, just not ours to read."""


@dataclass(frozen=True, slots=True)
class Entry:
    status: DomainStatus
    stored_at: float


def encode(status: DomainStatus, stored_at: float) -> bytes:
    document = {
        "v": VERSION,
        "stored_at": stored_at,
        "status": {
            "domain": status.domain,
            "status": status.status.value,
            "usage": status.usage,
            "mx_secure": status.mx_secure,
            "reason": status.reason,
            "ttl": status.ttl,
            "canonical": status.canonical,
            "hosts": [_host_document(h) for h in status.hosts],
        },
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _host_document(host: HostStatus) -> dict[str, Any]:
    return {
        "name": host.name,
        "preference": host.preference,
        "addresses": list(host.addresses),
        "address_secure": host.address_secure,
        "tlsa_state": host.tlsa_state.value,
        "tlsa_base": host.tlsa_base,
        "records": [r.to_text() for r in host.records],
        "reason": host.reason,
        "ttl": host.ttl,
    }


def decode(data: bytes) -> Entry:
    """The entry in ``data``, or CodecError; never any other exception."""
    top = _object(_json(data), {"v", "stored_at", "status"}, "entry")
    if top["v"] != VERSION or isinstance(top["v"], bool):
        raise OtherVersionError(f"unsupported entry version {top['v']!r}")
    return Entry(_status(top["status"]), _time(top["stored_at"]))


def _json(data: bytes) -> object:
    if not isinstance(data, bytes | bytearray | memoryview) or len(data) > _MAX_BYTES:
        raise CodecError("not a cache entry")
    try:
        return json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CodecError(f"not JSON: {exc}") from None


def _time(value: object) -> float:
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(value) or value < 0):
        raise CodecError("stored_at is not a time")
    return float(value)


def _status(value: object) -> DomainStatus:
    doc = _object(value, {"domain", "status", "usage", "mx_secure", "reason", "ttl",
                          "canonical", "hosts"}, "status")
    canonical = doc["canonical"]
    hosts = doc["hosts"]
    if not isinstance(hosts, list):
        raise CodecError("hosts is not a list")
    return DomainStatus(
        domain=_string(doc["domain"], "domain", empty=False),
        status=_enum(DomainState, doc["status"], "status"),
        usage=_count(doc["usage"], "usage"),
        mx_secure=_bool(doc["mx_secure"], "mx_secure"),
        hosts=tuple(_host(h) for h in hosts),
        reason=_string(doc["reason"], "reason"),
        ttl=_count(doc["ttl"], "ttl"),
        canonical=None if canonical is None else _string(canonical, "canonical", empty=False),
    )


def _host(value: object) -> HostStatus:
    doc = _object(value, {"name", "preference", "addresses", "address_secure", "tlsa_state",
                          "tlsa_base", "records", "reason", "ttl"}, "host")
    addresses, records = doc["addresses"], doc["records"]
    if not isinstance(addresses, list) or not isinstance(records, list):
        raise CodecError("host addresses and records must be lists")
    base = doc["tlsa_base"]
    return HostStatus(
        name=_string(doc["name"], "host name", empty=False),
        preference=_count(doc["preference"], "preference"),
        addresses=tuple(_string(a, "address", empty=False) for a in addresses),
        address_secure=_bool(doc["address_secure"], "address_secure"),
        tlsa_state=_enum(HostState, doc["tlsa_state"], "tlsa_state"),
        tlsa_base=None if base is None else _string(base, "tlsa_base", empty=False),
        records=tuple(_record(r) for r in records),
        reason=_string(doc["reason"], "host reason"),
        ttl=_count(doc["ttl"], "host ttl"),
    )


def _object(value: object, keys: set[str], what: str) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) != keys:
        raise CodecError(f"{what} is not an object with keys {sorted(keys)}")
    return value


def _string(value: object, what: str, *, empty: bool = True) -> str:
    if not isinstance(value, str) or (not empty and not value):
        raise CodecError(f"{what} is not a string")
    return value


def _bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise CodecError(f"{what} is not true or false")
    return value


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CodecError(f"{what} is not a non-negative whole number")
    return value


def _enum(enum: type[E], value: object, what: str) -> E:
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return enum(value)
    except ValueError:
        raise CodecError(f"{what} {value!r} is unknown") from None


def _record(value: object) -> TLSARecord:
    text = _string(value, "TLSA record")
    try:
        return TLSARecord.from_text(text)
    except InputError as exc:
        raise CodecError(str(exc)) from None


# --- probe results ------------------------------------------------------------------
#
# A probe entry is ``{"v": 3, "stored_at": T, "port": N, "ocsp": "auto", "fingerprint":
# HEX, "probes": [[{...}, ...], ...]}``: the results per MX host of one domain, and what
# they were taken under (port, staple request, and a digest of the DNS data the probes
# judged against, so that new TLSA records or addresses make the entry a miss).

_STAGES = frozenset({"not-probed", "connect", "banner", "ehlo", "starttls", "handshake"})
_OCSP_REQUESTS = frozenset({"auto", "always", "never"})
_PROBE_KEYS = {"address", "port", "starttls", "tls_version", "dane", "depth", "ocsp",
               "reason", "ocsp_reason", "ocsp_url", "must_staple", "failed_at", "seconds",
               "pkix", "pkix_reason"}
# Probe entries gained the PKIX verdict and its trust store in version 3: an older entry
# is a miss (probes are short-lived), not a probe whose certificate was never judged.
PROBE_VERSION = 3


@dataclass(frozen=True, slots=True)
class ProbeEntry:
    probes: tuple[tuple[ProbeResult, ...], ...]
    port: int
    ocsp: str
    fingerprint: str
    stored_at: float
    # The trust store the PKIX verdicts were judged against (probe.trust_label).
    trust: str = SYSTEM_TRUST


def encode_probes(probes: Sequence[Sequence[ProbeResult]], *, port: int, ocsp: str,
                  fingerprint: str, stored_at: float, trust: str = SYSTEM_TRUST) -> bytes:
    document = {
        "v": PROBE_VERSION,
        "stored_at": stored_at,
        "port": port,
        "ocsp": ocsp,
        "trust": trust,
        "fingerprint": fingerprint,
        "probes": [[_probe_document(p) for p in host] for host in probes],
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _probe_document(probe: ProbeResult) -> dict[str, Any]:
    return {
        "address": probe.address, "port": probe.port, "starttls": probe.starttls,
        "tls_version": probe.tls_version, "dane": probe.dane, "depth": probe.depth,
        "ocsp": probe.ocsp, "reason": probe.reason, "ocsp_reason": probe.ocsp_reason,
        "ocsp_url": probe.ocsp_url, "must_staple": probe.must_staple,
        "failed_at": probe.failed_at, "seconds": probe.seconds,
        "pkix": probe.pkix, "pkix_reason": probe.pkix_reason,
    }


def decode_probes(data: bytes) -> ProbeEntry:
    """The probe entry in ``data``, or CodecError; never any other exception."""
    document = _json(data)
    top = _object(document, {"v", "stored_at", "port", "ocsp", "trust", "fingerprint",
                             "probes"}, "probe entry")
    if top["v"] != PROBE_VERSION or isinstance(top["v"], bool):
        raise OtherVersionError(f"unsupported entry version {top['v']!r}")
    hosts = top["probes"]
    if not isinstance(hosts, list) or not all(isinstance(h, list) for h in hosts):
        raise CodecError("probes is not a list of lists")
    return ProbeEntry(
        probes=tuple(tuple(_probe(p) for p in host) for host in hosts),
        port=_count(top["port"], "port"),
        ocsp=_choice(top["ocsp"], _OCSP_REQUESTS, "ocsp request"),
        fingerprint=_string(top["fingerprint"], "fingerprint", empty=False),
        stored_at=_time(top["stored_at"]),
        trust=_string(top["trust"], "trust", empty=False),
    )


def _probe(value: object) -> ProbeResult:
    doc = _object(value, _PROBE_KEYS, "probe")
    seconds = doc["seconds"]
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        raise CodecError("probe seconds is not a duration")
    depth, failed_at = doc["depth"], doc["failed_at"]
    return ProbeResult(
        address=_string(doc["address"], "probe address", empty=False),
        port=_count(doc["port"], "probe port"),
        starttls=_bool(doc["starttls"], "starttls"),
        tls_version=_optional_string(doc["tls_version"], "tls_version"),
        dane=_enum(DaneVerdict, doc["dane"], "dane verdict"),
        depth=None if depth is None else _count(depth, "depth"),
        ocsp=_enum(OcspState, doc["ocsp"], "ocsp state"),
        reason=_string(doc["reason"], "probe reason"),
        ocsp_reason=_string(doc["ocsp_reason"], "ocsp_reason"),
        ocsp_url=_optional_string(doc["ocsp_url"], "ocsp_url"),
        must_staple=_bool(doc["must_staple"], "must_staple"),
        failed_at=(None if failed_at is None
                   else _choice(failed_at, _STAGES, "failed_at")),  # type: ignore[arg-type]
        seconds=float(seconds),
        pkix=_enum(PkixVerdict, doc["pkix"], "pkix verdict"),
        pkix_reason=_string(doc["pkix_reason"], "pkix_reason"),
    )


def _choice(value: object, allowed: frozenset[str], what: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise CodecError(f"{what} {value!r} is unknown")
    return value


def _optional_string(value: object, what: str) -> str | None:
    return None if value is None else _string(value, what)
