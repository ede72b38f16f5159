"""DomainStatus <-> bytes for the shared cache: versioned JSON, decoded strictly.

An entry is ``{"v": 1, "stored_at": UNIX_TIME, "status": {...}}``. The status is
written field by field from the dataclasses (not from ``to_json()``, whose shape
belongs to the command-line contract) and includes the TTLs. Anything that does
not decode to exactly this shape raises :class:`CodecError`; the cache turns that
into a miss.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, TypeVar

from danemilter.dane import DomainState, DomainStatus, HostState, HostStatus
from danemilter.errors import InputError
from danemilter.tlsa import TLSARecord

VERSION = 1
_MAX_BYTES = 1 << 20

E = TypeVar("E", DomainState, HostState)


class CodecError(ValueError):
    """A cache entry that is not a well-formed entry of this version."""


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
    if not isinstance(data, bytes | bytearray | memoryview) or len(data) > _MAX_BYTES:
        raise CodecError("not a cache entry")
    try:
        document = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CodecError(f"not JSON: {exc}") from None
    top = _object(document, {"v", "stored_at", "status"}, "entry")
    if top["v"] != VERSION or isinstance(top["v"], bool):
        raise CodecError(f"unsupported entry version {top['v']!r}")
    stored_at = top["stored_at"]
    if (isinstance(stored_at, bool) or not isinstance(stored_at, int | float)
            or not math.isfinite(stored_at) or stored_at < 0):
        raise CodecError("stored_at is not a time")
    return Entry(_status(top["status"]), float(stored_at))


def _status(value: object) -> DomainStatus:
    doc = _object(value, {"domain", "status", "usage", "mx_secure", "reason", "ttl", "hosts"},
                  "status")
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
