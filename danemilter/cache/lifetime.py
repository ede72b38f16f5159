"""How long a domain status may be cached (pure: a status and settings in, seconds out).

``status.ttl`` is the minimum TTL of every RRset the status depends on, negative
answers counted with their RFC 2308 §5 TTL (min of the SOA TTL and SOA MINIMUM),
as computed by the evaluator. The rules, first match wins:

1. ``tempfail`` → ``tempfail_ttl``. The evaluator gives such a status TTL 0; caching
   it for a short retry interval keeps a failing domain from costing a full
   evaluation per recipient, and no longer than that so recovery is noticed soon.
2. Any host in state ``failed`` → ``tempfail_ttl``. Such a host's data was bogus or
   its lookup failed (RFC 7672 §2.1.1); the domain's verdict rests on that failure
   being temporary, so bogus data is never cached as if it were valid.
3. Negative answers are capped by ``negative_max_ttl`` (RFC 2308 §5 bounds how
   long a denial may be believed; ``nullmx`` is an explicit "no mail here" and is
   treated the same): ``nxdomain``, ``nullmx``, and ``none`` (no host has secure
   TLSA: secure denial or insecure data, so a newly published TLSA RRset is
   noticed within the cap). ``dane-mismatch`` (a probe's failure verdict) is capped
   the same way, so a certificate roll-over is re-checked soon.
4. Every other status: ``status.ttl`` clamped to [``min_ttl``, ``max_ttl``].

The clamp of rule 4 applies to rule 3 before its cap, and ``max_ttl`` bounds every
rule. A result of 0 means "do not cache".
"""

from __future__ import annotations

from danemilter.cache.settings import CacheSettings
from danemilter.status import DomainState, DomainStatus, HostState

NEGATIVE_STATES = frozenset({DomainState.NXDOMAIN, DomainState.NULLMX, DomainState.NONE,
                             DomainState.DANE_MISMATCH})


def is_transient(status: DomainStatus) -> bool:
    """Rules 1 and 2: the status rests on a failure that may pass (tempfail, bogus data)."""
    return status.status is DomainState.TEMPFAIL or any(
        host.tlsa_state is HostState.FAILED for host in status.hosts)


def lifetime(status: DomainStatus, settings: CacheSettings) -> int:
    """Seconds ``status`` may be cached; 0 = do not cache (rules in the module docstring)."""
    if is_transient(status):
        return max(0, min(settings.tempfail_ttl, settings.max_ttl))
    clamped = min(max(status.ttl, settings.min_ttl, 0), settings.max_ttl)
    if status.status in NEGATIVE_STATES:
        return min(clamped, settings.negative_max_ttl)
    return clamped
