"""Shared set-up for the benchmarks: bench zones, timing helpers, the figures table."""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.dnsbed import Zone

BENCH_ZONE = "bench.test"
# Below bench.test: every name matches a wildcard MX, so any number of distinct DANE
# domains exist without a zone record each (the memory benchmark needs 100,000+).
WILD_LABEL = "wild"
SHARED_LABEL = "shared"
WIDE_LABEL = "wide"


def bench_domains(count: int, start: int = 0) -> list[str]:
    return [f"d{i}.{BENCH_ZONE}" for i in range(start, start + count)]


def wild_domains(count: int, start: int = 0) -> list[str]:
    return [f"w{i}.{WILD_LABEL}.{BENCH_ZONE}" for i in range(start, start + count)]


def shared_domains(count: int) -> list[str]:
    return [f"s{i}.{BENCH_ZONE}" for i in range(count)]


def wide_domain() -> str:
    return f"{WIDE_LABEL}.{BENCH_ZONE}"


def _host_records(host: str, i: int) -> list[str]:
    digest = hashlib.sha256(f"{host}.{BENCH_ZONE}".encode()).hexdigest()
    return [f"{host} A 127.0.{(i >> 8) & 255}.{(i & 255) or 1}",
            f"_25._tcp.{host} TLSA 3 1 1 {digest}"]


def bench_zone(count: int, hosts_per_domain: int = 2, *, shared: int = 0,
               wide_hosts: int = 0) -> Zone:
    """``count`` signed domains ``dN``, each with ``hosts_per_domain`` MX hosts of its own
    carrying DANE-EE; a wildcard MX under ``wild`` (two shared DANE hosts); ``shared``
    domains ``sN`` that all name the same two MX hosts; and, if ``wide_hosts``, one
    domain ``wide`` with that many MX hosts."""
    records: list[str] = []
    for i in range(count):
        for h in range(hosts_per_domain):
            host = f"mx{h}.d{i}"
            records += [f"d{i} MX {10 * (h + 1)} {host}", *_host_records(host, i)]
    for h in range(2):
        host = f"mx{h}.{WILD_LABEL}"
        records += [f"*.{WILD_LABEL} MX {10 * (h + 1)} {host}", *_host_records(host, h)]
        host = f"mx{h}.{SHARED_LABEL}"
        records += _host_records(host, h)
        records += [f"s{i} MX {10 * (h + 1)} {host}" for i in range(shared)]
    for h in range(wide_hosts):
        host = f"mx{h}.{WIDE_LABEL}"
        records += [f"{WIDE_LABEL} MX {10 * (h + 1)} {host}", *_host_records(host, h)]
    return Zone(BENCH_ZONE, records=tuple(records))


def quantile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=1000, method="inclusive")[int(q * 1000) - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc (VmRSS, in kB there)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass(frozen=True)
class Figure:
    """One row of the summary: a measured value against its baseline from the same run.

    ``ratio`` is measured / baseline unless the measurement defines it otherwise (then
    ``ratio_note`` says how); ``target`` is a human-readable bound on the ratio or the
    value, and ``met`` is None when there is no target.
    """

    measurement: str
    what: str
    value: str
    baseline: str
    ratio: float
    target: str = ""
    met: bool | None = None
    ratio_note: str = ""

    def line(self) -> str:
        """The figure as one line of a module's own output."""
        target = f", target {self.target}: {'met' if self.met else 'NOT met'}" \
            if self.target else ""
        return f"{self.what}: {self.value} vs {self.baseline}, ratio {self.ratio:.3g}{target}"


def print_report(figures: Sequence[Figure], lines: Sequence[str]) -> None:
    """A module's own output when run alone: its table lines, then one line a figure."""
    print("\n".join(lines))
    for figure in figures:
        print(figure.line())


def print_figures(figures: Sequence[Figure], out_json: str | None = None) -> None:
    headers = ("measurement", "what", "value", "baseline", "ratio", "target", "met")
    rows = [(f.measurement, f.what, f.value, f.baseline, f"{f.ratio:.3g}", f.target,
             "-" if f.met is None else ("yes" if f.met else "NO")) for f in figures]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line)
    print("-" * len(line))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    notes = [f"{f.what}: ratio = {f.ratio_note}" for f in figures if f.ratio_note]
    if notes:
        print()
        for note in notes:
            print(f"  {note}")
    if out_json:
        Path(out_json).write_text(json.dumps([asdict(f) for f in figures], indent=2) + "\n")


def cpu_count() -> int:
    return os.cpu_count() or 1
