"""Added latency per RCPT: private Postfix instances with danemilter vs one without, same run.

Usage (as root, after ./scripts/test has installed everything):
    .venv/bin/python bench/rcpt_latency.py [--cold 200] [--warm 1000]

One Postfix instance without a milter and one in front of each danemilter variant:
transport asyncio (the default) and libmilter, each on a TCP port of 127.0.0.1 and on
a unix socket (``dane: try``, default log_level info). RCPT round trips are timed with
smtplib. "warm": the same domain again and again, so after the first RCPT every one is
answered from danemilter's in-process cache; the warm recipients go in chunks of 100,
each instance in turn, so that the machine's drift hits all of them alike. "cold":
every RCPT names a domain nobody has asked about (the resolver's cache and the
milter's are both cold). Added latency is the difference of the quantiles (the
variant's minus the plain instance's), not a quantile of differences: the instances
answer different RCPTs.
"""

from __future__ import annotations

import argparse
import smtplib
import time
from collections.abc import Sequence

from common import (
    Figure,
    bench_domains,
    bench_zone,
    danemilter_process,
    ms,
    print_report,
    quantile,
    served_variants,
    transport_named,
)

from tests.support.dnsbed import DnssecTestBed
from tests.support.milterproc import MilterProcess
from tests.support.postfix import PrivatePostfix, SmtpSink

_CHUNK = 100
_TARGET = 0.001


def rcpt_times(port: int, recipients: list[str]) -> list[float]:
    times = []
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.ehlo("bench.client")
        for n, rcpt in enumerate(recipients):
            if n % 50 == 0:
                client.rset()
                code, _ = client.mail("bench@client.test")
                assert code == 250
            started = time.perf_counter()
            code, reply = client.rcpt(rcpt)
            times.append(time.perf_counter() - started)
            assert code == 250, (rcpt, code, reply)
    return times


def measure(cold_count: int, warm_count: int) -> tuple[list[Figure], list[str]]:
    served, refused = served_variants()
    names = [f"{transport} {kind}" for transport, kind in served]
    domains = bench_domains(cold_count * (len(names) + 1) + 1)
    bed = DnssecTestBed([bench_zone(len(domains))])
    sink = SmtpSink()
    milters: dict[str, MilterProcess] = {}
    instances: dict[str, PrivatePostfix] = {}
    warm: dict[str, list[float]] = {}
    cold: dict[str, list[float]] = {}
    try:
        bed.start()
        sink.start()
        for name in names:
            transport, kind = name.split()
            milters[name] = danemilter_process(transport, kind, bed.resolver_port)
            milters[name].start()
            transport_named(milters[name], transport)
        for name, address in [("no milter", ""),
                              *((n, m.postfix_address) for n, m in milters.items())]:
            instances[name] = PrivatePostfix(address, sink.port)
            instances[name].start()
        warm_domain = domains[-1]
        for name, instance in instances.items():
            rcpt_times(instance.port, [f"w@{warm_domain}"] * 10)  # warm everything up
            warm[name] = []
        for _ in range(0, warm_count, _CHUNK):
            for name, instance in instances.items():
                warm[name] += rcpt_times(instance.port, [f"w@{warm_domain}"] * _CHUNK)
        for n, (name, instance) in enumerate(instances.items()):
            cold[name] = rcpt_times(instance.port, [
                f"c@{d}" for d in domains[n * cold_count : (n + 1) * cold_count]])
    finally:
        for instance in instances.values():
            instance.stop()
        for milter in milters.values():
            milter.stop()
        sink.stop()
        bed.stop()
    lines = [f"RCPT latency, {len(warm['no milter'])} warm and {cold_count} cold recipients "
             "per instance (Postfix 3.7 smtpd, unbound + nsd on loopback)",
             f"{'danemilter':<16} {'cache':<6} {'q':<4} {'no milter':>12} {'danemilter':>12} "
             f"{'added':>12} {'ratio':>6}"]
    figures = []
    for name in names:
        for cache, samples in (("warm", warm), ("cold", cold)):
            for q in (0.5, 0.99):
                b, m = quantile(samples["no milter"], q), quantile(samples[name], q)
                label = f"p{int(q * 100)}"
                lines.append(f"{name:<16} {cache:<6} {label:<4} {ms(b):>12} {ms(m):>12} "
                             f"{ms(m - b):>12} {m / b:>6.1f}")
                target, met = "", None
                if cache == "warm" and label == "p99" and name.startswith("asyncio"):
                    target, met = "added <= 1 ms", m - b <= _TARGET
                figures.append(Figure("2 RCPT latency", f"{name} {cache} {label} "
                                      f"(added {ms(m - b)})", ms(m), ms(b), m / b, target,
                                      met))
    return figures, lines + refused


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cold", type=int, default=200)
    parser.add_argument("--warm", type=int, default=1000)
    args = parser.parse_args(argv)
    figures, lines = measure(args.cold, args.warm)
    print_report(figures, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
