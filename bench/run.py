"""Run every benchmark and print one table of figures, each against its same-run baseline.

    .venv/bin/python bench/run.py            # the full run (about 20 minutes)
    .venv/bin/python bench/run.py --quick    # small counts, 30 s soak (about 3 minutes)
    .venv/bin/python bench/run.py --only throughput,latency --messages 500

Measurements (see each module's docstring for the method):
  throughput  bench/throughput.py             Postfix + smtp-source: none, no-op milters,
                                              danemilter asyncio/libmilter on TCP/unix
  latency     bench/rcpt_latency.py           added latency per RCPT, p50/p99, warm and cold,
                                              each transport and socket kind
  idle        bench/idle_connections.py       RSS and threads with 1,000 idle connections
  cold        bench/cold_eval.py              1,000 cold domains; parallel MX; coalescing
  verify      bench/verify_vs_posttls_finger.py   verify vs posttls-finger, 100 domains
  memory      bench/memory_soak.py            RSS with 100,000 cached domains; soak; reloads

Needs root and what ./scripts/test installs (nsd, unbound, ldns, postfix, redis-server).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cold_eval
import idle_connections
import memory_soak
import rcpt_latency
import throughput
import verify_vs_posttls_finger
from common import Figure, print_figures

MEASUREMENTS = ("throughput", "latency", "idle", "cold", "verify", "memory")


@dataclass(frozen=True)
class Counts:
    messages: int
    recipients: int
    sessions: int
    rounds: int
    warm_rcpts: int
    cold_rcpts: int
    cold_domains: int
    verify_domains: int
    memory_domains: int
    soak: float
    idle_connections: int


FULL = Counts(messages=2000, recipients=5, sessions=20, rounds=5, warm_rcpts=2000,
              cold_rcpts=500, cold_domains=1000, verify_domains=100,
              memory_domains=100_000, soak=600, idle_connections=1000)
QUICK = Counts(messages=300, recipients=5, sessions=20, rounds=1, warm_rcpts=300,
               cold_rcpts=100, cold_domains=200, verify_domains=30,
               memory_domains=20_000, soak=30, idle_connections=1000)


def machine() -> str:
    postfix = subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True,
                             text=True, check=False).stdout.strip()
    memory = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory = int(line.split()[1]) // 2**20
    release = ""
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("PRETTY_NAME="):
            release = line.split("=", 1)[1].strip('"')
    return (f"{os.cpu_count()} cores, {memory} GiB, {release}, Python "
            f"{platform.python_version()}, Postfix {postfix}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small counts and a 30 s soak, for trying things out")
    parser.add_argument("--only", default=",".join(MEASUREMENTS),
                        help=f"comma-separated subset of {','.join(MEASUREMENTS)}")
    parser.add_argument("--messages", type=int, help="smtp-source messages per run")
    parser.add_argument("--recipients", type=int, help="recipients per message")
    parser.add_argument("--sessions", type=int, help="parallel SMTP sessions")
    parser.add_argument("--rounds", type=int, help="alternating throughput rounds")
    parser.add_argument("--soak", type=float, help="soak seconds (0: no soak)")
    parser.add_argument("--memory-domains", type=int, help="domains cached for the RSS figure")
    parser.add_argument("--cold-domains", type=int, help="domains for the cold evaluation")
    parser.add_argument("--cold-throughput", action="store_true",
                        help="throughput also for cold domains (one smtp-source a message)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    counts = Counts(
        messages=args.messages or base.messages,
        recipients=args.recipients or base.recipients,
        sessions=args.sessions or base.sessions,
        rounds=args.rounds or base.rounds,
        warm_rcpts=base.warm_rcpts, cold_rcpts=base.cold_rcpts,
        cold_domains=args.cold_domains or base.cold_domains,
        verify_domains=base.verify_domains,
        memory_domains=args.memory_domains or base.memory_domains,
        soak=base.soak if args.soak is None else args.soak,
        idle_connections=base.idle_connections)
    chosen = [m.strip() for m in args.only.split(",") if m.strip()]
    unknown = sorted(set(chosen) - set(MEASUREMENTS))
    if unknown:
        parser.error(f"unknown measurement(s): {', '.join(unknown)}")

    runs: dict[str, Callable[[], tuple[list[Figure], list[str]]]] = {
        "throughput": lambda: throughput.measure(counts.messages, counts.recipients,
                                                 counts.sessions, counts.rounds,
                                                 args.cold_throughput),
        "latency": lambda: rcpt_latency.measure(counts.cold_rcpts, counts.warm_rcpts),
        "idle": lambda: idle_connections.measure(counts.idle_connections),
        "cold": lambda: cold_eval.measure(counts.cold_domains, 20, 50, 8, same=50, shared=20),
        "verify": lambda: verify_vs_posttls_finger.measure(counts.verify_domains, 16),
        "memory": lambda: memory_soak.measure(counts.memory_domains, counts.soak, ["sqlite"],
                                              300, reload_times=3),
    }
    began = time.monotonic()
    print(f"danemilter benchmarks, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
          f"{'quick' if args.quick else 'full'} run")
    print(f"machine: {machine()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}\n", flush=True)
    figures: list[Figure] = []
    for name in MEASUREMENTS:
        if name not in chosen:
            continue
        started = time.monotonic()
        print(f"== {name}", flush=True)
        found, lines = runs[name]()
        figures += found
        print("\n".join(lines))
        print(f"({name}: {time.monotonic() - started:.0f} s)\n", flush=True)
    print(f"== figures (total {time.monotonic() - began:.0f} s)")
    print_figures(figures, args.json)
    if args.quick and "throughput" in chosen:
        # One short round per variant: runs of one variant spread by up to 30 % here.
        print("\nquick run: the throughput ratios come from one round of "
              f"{counts.messages} messages and are within noise; judge targets on a full run")
    missed = [f for f in figures if f.met is False]
    if missed:
        print(f"\n{len(missed)} target(s) missed: " + "; ".join(f.what for f in missed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
