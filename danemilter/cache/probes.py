"""ProbeCache: TLS probe results of a domain's MX hosts in the shared cache.

Entries live in the same backend as domain statuses, under ``probe:DOMAIN``, with a
small in-process LRU in front. A probe result only holds for the DNS data it was
judged against: each entry carries a fingerprint of the MX hosts, their addresses
and TLSA records, and is a miss when the current status differs (a new TLSA record
or a new address is probed afresh, never judged by an old certificate). It also
holds only for the port and staple request it was taken with.

Lifetime: ``probe.cache_ttl``; a probe that could not complete (refused, timed out,
no STARTTLS) is kept only for the cache's ``tempfail_ttl``, so that a recovered
server is seen soon while a dead one does not cost a connection per recipient.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

from danemilter.cache.backend import CacheBackend, drop_unread, read_fresh, written_ahead
from danemilter.cache.codec import (
    CodecError,
    ProbeEntry,
    decode_probes,
    encode_probes,
)
from danemilter.cache.lru import ExpiringLru
from danemilter.cache.settings import CacheSettings
from danemilter.probe_result import SYSTEM_TRUST, DomainProbe, OcspRequest, domain_verdict
from danemilter.status import DomainStatus

log = logging.getLogger(__name__)

PROBE_PREFIX = "probe:"
# Stages that mean "the address was never asked" rather than "the server failed".
_NOT_A_FAILURE = frozenset({None, "not-probed"})


def probe_key(domain: str) -> str:
    return PROBE_PREFIX + domain


def fingerprint(status: DomainStatus) -> str:
    """A digest of the DNS data probes are judged against (hosts, addresses, TLSA)."""
    document = [status.domain, status.mx_secure, status.canonical, [
        [h.name, sorted(h.addresses), h.tlsa_state.value, h.tlsa_base,
         sorted(r.to_text() for r in h.records)]
        for h in status.hosts]]
    return hashlib.sha256(json.dumps(document).encode()).hexdigest()


def probe_lifetime(probe: DomainProbe, ttl: int, settings: CacheSettings) -> int:
    """Seconds ``probe`` may be cached under ``probe.cache_ttl`` = ``ttl``; 0 = not at all."""
    if ttl <= 0:
        return 0
    incomplete = any(result.failed_at not in _NOT_A_FAILURE
                     for host in probe.probes for result in host)
    if incomplete:
        return max(0, min(ttl, settings.tempfail_ttl, settings.max_ttl))
    return min(ttl, settings.max_ttl)


@dataclass(frozen=True, slots=True)
class _Held:
    entry: ProbeEntry
    expires_at: float


class ProbeCache:
    def __init__(self, backend: CacheBackend, settings: CacheSettings, *,
                 inspect: bool = False) -> None:
        self.backend = backend
        self.settings = settings
        # Only looking (``cache show``): a corrupt entry is reported, not deleted.
        self.inspect = inspect
        self._front: ExpiringLru[_Held] = ExpiringLru(settings.lru_entries,
                                                      lambda held: held.expires_at,
                                                      max_bytes=settings.memory_max_bytes)

    def get(self, status: DomainStatus, port: int, ocsp: OcspRequest,
            now: float, *, trust: str = SYSTEM_TRUST) -> DomainProbe | None:
        """The cached probe of ``status.domain`` if it is fresh and was taken under the
        same DNS data, port, staple request and trust store (``trust``, as
        probe.trust_label names it: its PKIX verdicts); its status is ``status`` as
        judged by those probes (``dane-mismatch`` when one showed a mismatch)."""
        held = self._front.get(status.domain, now)
        if held is None:
            found = self._backend_get(status.domain, now)
            if found is None:
                return None
            held, size = found
            self._front.put(status.domain, held, now=now, size=size)
        entry = held.entry
        if (entry.port != port or entry.ocsp != ocsp or entry.fingerprint != fingerprint(status)
                or entry.trust != trust or len(entry.probes) != len(status.hosts)):
            return None
        return DomainProbe(domain_verdict(status, entry.probes), entry.probes)

    def put(self, status: DomainStatus, probe: DomainProbe, port: int, ocsp: OcspRequest, *,
            ttl: int, now: float, trust: str = SYSTEM_TRUST) -> bool:
        """Keep ``probe`` (taken under ``status``, PKIX judged against the store that
        ``trust`` names); False when its lifetime is 0."""
        seconds = probe_lifetime(probe, ttl, self.settings)
        if seconds <= 0:
            return False
        entry = ProbeEntry(probe.probes, port, ocsp, fingerprint(status), now, trust)
        held = _Held(entry, now + seconds)
        value = encode_probes(entry.probes, port=port, ocsp=ocsp,
                              fingerprint=entry.fingerprint, stored_at=now,
                              trust=entry.trust)
        self._front.put(status.domain, held, now=now, size=len(value))
        self.backend.put(probe_key(status.domain), value, held.expires_at)
        return True

    def stored(self, domain: str, now: float) -> tuple[ProbeEntry, float] | None:
        """The fresh entry for ``domain`` and its expiry, whatever it was taken under
        (for ``danemilter cache show``)."""
        held = self._front.get(domain, now)
        if held is None:
            found = self._backend_get(domain, now)
            held = None if found is None else found[0]
        return None if held is None else (held.entry, held.expires_at)

    def forget(self, domain: str | None = None) -> None:
        """Drop in-process copies (the backend is purged by the status cache's purge)."""
        self._front.discard(domain)

    def _backend_get(self, domain: str, now: float) -> tuple[_Held, int] | None:
        key = probe_key(domain)
        found = read_fresh(self.backend, key, now, self.settings.max_ttl)
        if found is None:
            return None
        value, expires_at = found
        try:
            entry = decode_probes(value)
        except CodecError as exc:
            drop_unread(self.backend, key, exc, f"cached probe of {domain}",
                        inspect=self.inspect)
            return None
        if written_ahead(entry.stored_at, now, f"cached probe of {domain}"):
            return None
        return _Held(entry, expires_at), len(value)
