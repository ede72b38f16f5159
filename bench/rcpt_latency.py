"""Added latency per RCPT: a private Postfix with danemilter vs one without, same run.

Usage (as root, after ./scripts/test has installed everything):
    .venv/bin/python bench/rcpt_latency.py [--cold 200] [--warm 1000]

"cold": every RCPT names a domain nobody has asked about (the resolver's cache and the
milter's are both cold). "warm": the same domain again and again, so after the first
RCPT every one is answered from danemilter's in-process cache. Added latency is the
difference of the quantiles (danemilter's minus the plain instance's), not a quantile
of differences: the two instances answer different RCPTs.
"""

from __future__ import annotations

import argparse
import smtplib
import time
from collections.abc import Sequence

from common import Figure, bench_domains, bench_zone, ms, quantile

from tests.support.dnsbed import DnssecTestBed
from tests.support.milterproc import MilterProcess
from tests.support.postfix import PrivatePostfix, SmtpSink


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
    domains = bench_domains(cold_count * 2 + 1)
    bed = DnssecTestBed([bench_zone(len(domains))])
    sink = SmtpSink()
    milter = MilterProcess("", log_level="info")  # the default level
    plain = with_milter = None
    try:
        bed.start()
        sink.start()
        milter.write_config(
            f"resolver: {{address: 127.0.0.1, port: {bed.resolver_port}, timeout: 2}}\n"
            "policy:\n  default: {dane: try}\n")
        milter.start()
        with_milter = PrivatePostfix(milter.postfix_address, sink.port)
        plain = PrivatePostfix("", sink.port)
        with_milter.start()
        plain.start()
        warm_domain = domains[-1]
        rcpt_times(with_milter.port, [f"w@{warm_domain}"] * 10)  # warm everything up
        rcpt_times(plain.port, [f"w@{warm_domain}"] * 10)
        base_warm = rcpt_times(plain.port, [f"w@{warm_domain}"] * warm_count)
        warm = rcpt_times(with_milter.port, [f"w@{warm_domain}"] * warm_count)
        base_cold = rcpt_times(plain.port, [f"c@{d}" for d in domains[:cold_count]])
        cold = rcpt_times(with_milter.port,
                          [f"c@{d}" for d in domains[cold_count : 2 * cold_count]])
    finally:
        for instance in (with_milter, plain):
            if instance is not None:
                instance.stop()
        milter.stop()
        sink.stop()
        bed.stop()
    lines = [f"RCPT latency, {warm_count} warm and {cold_count} cold recipients "
             "(Postfix 3.7 smtpd, danemilter on a unix socket, unbound + nsd on loopback)",
             f"{'cache':<6} {'q':<4} {'no milter':>12} {'danemilter':>12} {'added':>12} "
             f"{'ratio':>6}"]
    figures = []
    for name, base, measured in (("warm", base_warm, warm), ("cold", base_cold, cold)):
        for q in (0.5, 0.99):
            b, m = quantile(base, q), quantile(measured, q)
            label = f"p{int(q * 100)}"
            lines.append(f"{name:<6} {label:<4} {ms(b):>12} {ms(m):>12} {ms(m - b):>12} "
                         f"{m / b:>6.1f}")
            target, met = "", None
            if name == "warm" and label == "p99":
                target, met = "added <= 1 ms", m - b <= 0.001
            figures.append(Figure("2 RCPT latency", f"{name} {label} (added {ms(m - b)})",
                                  ms(m), ms(b), m / b, target, met))
    return figures, lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cold", type=int, default=200)
    parser.add_argument("--warm", type=int, default=1000)
    args = parser.parse_args(argv)
    _, lines = measure(args.cold, args.warm)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
