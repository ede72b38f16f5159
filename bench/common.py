"""Shared set-up for the benchmarks: a bench zone of many DANE domains, timing helpers."""

from __future__ import annotations

import hashlib
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.dnsbed import Zone

BENCH_ZONE = "bench.test"


def bench_domains(count: int) -> list[str]:
    return [f"d{i}.{BENCH_ZONE}" for i in range(count)]


def bench_zone(count: int, hosts_per_domain: int = 2) -> Zone:
    """``count`` signed domains, each with ``hosts_per_domain`` MX hosts carrying DANE-EE."""
    records: list[str] = []
    for i in range(count):
        for h in range(hosts_per_domain):
            host = f"mx{h}.d{i}"
            digest = hashlib.sha256(f"{host}.{BENCH_ZONE}".encode()).hexdigest()
            records += [f"d{i} MX {10 * (h + 1)} {host}",
                        f"{host} A 127.0.{(i >> 8) & 255}.{(i & 255) or 1}",
                        f"_25._tcp.{host} TLSA 3 1 1 {digest}"]
    return Zone(BENCH_ZONE, records=tuple(records))


def quantile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=1000, method="inclusive")[int(q * 1000) - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"
