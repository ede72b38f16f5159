"""Shared set-up for the benchmarks: bench zones, timing helpers, the figures table."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from danemilter.config.model import Settings
from tests.support.dnsbed import Zone
from tests.support.milterproc import InetMilterProcess, MilterProcess
from tests.support.postfix import wait_for

BENCH_ZONE = "bench.test"
# Below bench.test: every name matches a wildcard MX, so any number of distinct DANE
# domains exist without a zone record each (the memory benchmark needs 100,000+).
WILD_LABEL = "wild"
SHARED_LABEL = "shared"
WIDE_LABEL = "wide"
# danemilter's milter transports, and the sockets the MTA reaches a milter on.
TRANSPORTS = ("asyncio", "libmilter")
SOCKET_KINDS = ("tcp", "unix")


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


def danemilter_process(transport: str, kind: str, resolver_port: int | None, *,
                       log_level: str = "info", extra: str = "") -> MilterProcess:
    """``danemilter run`` (not started) through ``transport`` on a TCP port of 127.0.0.1
    (``kind`` "tcp") or a unix socket, ``dane: try`` for every domain; ``extra`` is more
    configuration (YAML, top level)."""
    process = (InetMilterProcess if kind == "tcp" else MilterProcess)("", log_level)
    resolver = ("" if resolver_port is None else
                f"resolver: {{address: 127.0.0.1, port: {resolver_port}, timeout: 2}}\n")
    # The test bed's resolver serves only its own zones (no root): the start-up self-check
    # of the resolver, where this danemilter has one, would refuse it.
    fields = getattr(Settings, "__dataclass_fields__", {})
    check = "resolver_check: off\n" if "resolver_check" in fields else ""
    process.write_config(f"transport: {transport}\n{resolver}{check}"
                         f"policy:\n  default: {{dane: try}}\n{extra}")
    return process


def transport_named(process: MilterProcess, transport: str) -> None:
    """Wait until the started daemon logged that it serves through ``transport`` (its log
    lines are written by a thread of their own, behind the socket's readiness)."""
    wait_for(lambda: f"(transport {transport}" in process.log(), 10,
             f"danemilter's 'listening ... (transport {transport}' line")


def add_noop_arguments(parser: argparse.ArgumentParser) -> None:
    """The options both no-op milters take besides where they listen."""
    parser.add_argument("--add-header", metavar="VALUE",
                        help="insert 'X-DANE-Status: VALUE' (at index 1) at end of every "
                        "message")
    parser.add_argument("--check", action="store_true",
                        help="compare the negotiation with danemilter's and exit")


def check_report(program: str, problems: Sequence[str], agreement: str) -> int:
    """A no-op milter's ``--check`` output (one line a difference) and exit status."""
    for problem in problems:
        print(f"{program}: {problem}")
    if not problems:
        print(f"{program}: {agreement}")
    return 1 if problems else 0


def served_variants() -> tuple[list[tuple[str, str]], list[str]]:
    """The (transport, socket kind) pairs this danemilter accepts, and a line for each it
    refuses (``danemilter check-config``: libmilter may be refused on TCP, where any
    local process could reach it)."""
    served, refused = [], []
    for transport in TRANSPORTS:
        for kind in SOCKET_KINDS:
            process = danemilter_process(transport, kind, None)
            try:
                done = subprocess.run([sys.executable, "-m", "danemilter", "check-config",
                                       str(process.config_path)], capture_output=True,
                                      text=True, check=False)
            finally:
                process.stop()
            if done.returncode == 0:
                served.append((transport, kind))
            else:
                why = (done.stdout + done.stderr).strip().splitlines()[-1:]
                refused.append(f"not measured: {transport} on {kind}, refused by "
                               f"check-config: {' '.join(why)}")
    return served, refused
