"""Prometheus metrics: counted on the hot path with plain integers, exposed by
prometheus-client on a listener of their own (``metrics: {listen: 127.0.0.1:9425}``).

The RCPT path pays one dictionary increment per decision and nothing else: no lock, no
metric object, no label lookup (prometheus-client's own counters take a lock per
increment). The counters live in :data:`METRICS`, one per process; the cache counts its
hits itself (danemilter.cache.status), and the milter server its connections. At scrape
time, in prometheus-client's HTTP thread, :class:`_Collector` copies them into metric
families (a ``dict`` copy is atomic under the GIL, so the loop never waits for a scrape).
"""

from __future__ import annotations

import bisect
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from danemilter.errors import ListenError

if TYPE_CHECKING:
    from danemilter.config.model import MetricsSettings

log = logging.getLogger(__name__)

LOOKUP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PROBE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Histogram:
    """Bucket counts and a sum, written by one thread (the event loop)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> tuple[list[tuple[str, float]], float]:
        counts, total = list(self.counts), self.sum
        buckets, running = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), counts, strict=True):
            running += count
            buckets.append((bound, float(running)))
        return buckets, total


@dataclass
class CacheCounts:
    """Hits and misses per cache layer, of services a reload has replaced."""

    lru_hits: int = 0
    backend_hits: int = 0
    backend_misses: int = 0
    probe_hits: int = 0
    probe_misses: int = 0


@dataclass
class Metrics:
    decisions: Counter[tuple[str, str]] = field(default_factory=Counter)  # (action, status)
    lookup_seconds: Histogram = field(default_factory=lambda: Histogram(LOOKUP_BUCKETS))
    probe_seconds: Histogram = field(default_factory=lambda: Histogram(PROBE_BUCKETS))
    probe_outcomes: Counter[str] = field(default_factory=Counter)  # per probed address
    resolver_checks: Counter[str] = field(default_factory=Counter)  # by state
    resolver_state: str | None = None
    # Policy socket requests (danemilter.policymap.server), by protocol: socketmap | line.
    policy_queries: Counter[str] = field(default_factory=Counter)
    retired: CacheCounts = field(default_factory=CacheCounts)
    # Set by the daemon: what to read at scrape time (the current service, the servers).
    service: Callable[[], Any] | None = None
    connections: Any = None

    def resolver_checked(self, state: str) -> None:
        self.resolver_checks[state] += 1
        self.resolver_state = state

    def retire(self, service: Any) -> None:
        """Keep a replaced service's counts, so that the counters never go back."""
        counts = _cache_counts(service)
        for name in vars(counts):
            setattr(self.retired, name, getattr(self.retired, name) + getattr(counts, name))


METRICS = Metrics()


def _cache_counts(service: Any) -> CacheCounts:
    cache = service.cache
    return CacheCounts(lru_hits=cache.local_hits, backend_hits=cache.backend_hits,
                       backend_misses=cache.misses, probe_hits=service.probe_hits,
                       probe_misses=service.probe_misses)


class _Collector:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (  # noqa: PLC0415 - only a scrape needs them
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        m = self.metrics
        decisions = CounterMetricFamily("danemilter_decisions",
                                        "Recipient decisions, by action and domain status",
                                        labels=("action", "status"))
        for (action, status), count in dict(m.decisions).items():
            decisions.add_metric((action, status), count)
        yield decisions

        counts = CacheCounts(**vars(m.retired))
        if m.service is not None:
            live = _cache_counts(m.service())
            counts = CacheCounts(**{k: getattr(counts, k) + v for k, v in vars(live).items()})
        cache = CounterMetricFamily(
            "danemilter_cache_lookups", "Cache lookups by layer (lru: in-process; backend: "
            "SQLite/Redis/memory, asked after an LRU miss; probe: TLS probe results) and result",
            labels=("layer", "result"))
        cache.add_metric(("lru", "hit"), counts.lru_hits)
        cache.add_metric(("lru", "miss"), counts.backend_hits + counts.backend_misses)
        cache.add_metric(("backend", "hit"), counts.backend_hits)
        cache.add_metric(("backend", "miss"), counts.backend_misses)
        cache.add_metric(("probe", "hit"), counts.probe_hits)
        cache.add_metric(("probe", "miss"), counts.probe_misses)
        yield cache

        for name, text, histogram in (
                ("danemilter_lookup_seconds", "Time to a domain's status when the "
                 "in-process cache had none (backend, or DNS)", m.lookup_seconds),
                ("danemilter_probe_seconds", "Time for one domain's TLS probes",
                 m.probe_seconds)):
            buckets, total = histogram.cumulative()
            family = HistogramMetricFamily(name, text)
            family.add_metric((), buckets, total)
            yield family

        probes = CounterMetricFamily("danemilter_probes",
                                     "Probed MX addresses by DANE outcome", labels=("outcome",))
        for outcome, count in dict(m.probe_outcomes).items():
            probes.add_metric((outcome,), count)
        yield probes

        checks = CounterMetricFamily("danemilter_resolver_checks",
                                     "Resolver self-checks by outcome", labels=("state",))
        for state, count in dict(m.resolver_checks).items():
            checks.add_metric((state,), count)
        yield checks
        validating = GaugeMetricFamily(
            "danemilter_resolver_validating", "1 when the last resolver self-check passed "
            "(0: failed, statuses are resolver-not-validating under degrade; absent: off)")
        if m.resolver_state is not None:
            validating.add_metric((), 1.0 if m.resolver_state == "validating" else 0.0)
        yield validating

        queries = CounterMetricFamily("danemilter_policy_queries",
                                      "Policy socket requests by protocol (socketmap: "
                                      "Postfix's TLS policy; line: Exim's RCPT line)",
                                      labels=("protocol",))
        for protocol, count in dict(m.policy_queries).items():
            queries.add_metric((protocol,), count)
        yield queries

        if m.connections is not None:
            connections = m.connections
            yield GaugeMetricFamily("danemilter_milter_connections_open",
                                    "MTA connections open now", value=len(connections.open))
            yield CounterMetricFamily("danemilter_milter_connections_refused",
                                      "MTA connections refused at limits.max_connections",
                                      value=connections.refused)
            yield CounterMetricFamily("danemilter_milter_protocol_errors",
                                      "MTA connections closed for a protocol error",
                                      value=connections.protocol_errors)


class MetricsServer:
    """prometheus-client's HTTP server (a thread of its own) on the configured address."""

    def __init__(self, settings: MetricsSettings, metrics: Metrics = METRICS) -> None:
        from prometheus_client import CollectorRegistry, start_http_server  # noqa: PLC0415

        host, port = settings.address()
        if not settings.is_loopback:
            log.warning("metrics listen on %s, not loopback: anyone who can reach it reads "
                        "the recipient domains' statuses in aggregate", settings.listen)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(metrics))
        try:
            self._server, self._thread = start_http_server(port, host, registry=self.registry)
        except OSError as exc:
            raise ListenError(f"metrics: cannot listen on {settings.listen}: "
                              f"{exc.strerror or exc}") from None
        log.info("metrics on http://%s/metrics", settings.listen)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
