"""``danemilter verify``: the outbound-verification helper (DNS part)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

from danemilter.dane import DomainEvaluator, DomainState, DomainStatus
from danemilter.errors import UsageError
from danemilter.names import normalize_domain
from danemilter.resolver import Resolver, ResolverSettings

_DEFAULT_DEADLINE = 5.0
_CONCURRENCY = 32

# Monitoring plugin exit codes (OK, WARNING, CRITICAL); UNKNOWN (3) is for errors.
_NAGIOS_CODE = {
    DomainState.DANE: 0,
    DomainState.PARTIAL: 1,
    DomainState.UNUSABLE_TLSA: 1,
    DomainState.NONE: 2,
    DomainState.TEMPFAIL: 2,
    DomainState.NULLMX: 2,
    DomainState.NXDOMAIN: 2,
    DomainState.DANE_MISMATCH: 2,
}
_NAGIOS_WORD = ("OK", "WARNING", "CRITICAL", "UNKNOWN")


def register(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser(
        "verify",
        help="report whether domains can be reached with DANE",
        description="Evaluate recipient domains as the milter does (RFC 7672). Exit status: "
        "0 when every domain was evaluated (whatever its status), 2 on bad input; "
        "with --nagios, monitoring-plugin codes 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
    )
    parser.add_argument("domains", nargs="+", metavar="DOMAIN")
    parser.add_argument("--dns-only", action="store_true",
                        help="evaluate DNS only (MX, addresses, TLSA); no TLS connections")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print a JSON array")
    output.add_argument("--nagios", action="store_true",
                        help="one summary line and a monitoring-plugin exit code")
    parser.add_argument("--resolver", metavar="HOST[:PORT]", default="127.0.0.1:53",
                        help="validating resolver to ask (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=_DEFAULT_DEADLINE, metavar="S",
                        help="deadline for each domain in seconds (default: %(default)s)")
    parser.set_defaults(handler=_verify)


def _verify(args: argparse.Namespace) -> int:
    if not args.dns_only:
        raise UsageError("verify: TLS probing is not available yet; use --dns-only")
    if not args.timeout > 0:
        raise UsageError("verify: --timeout must be positive")
    domains = [normalize_domain(d) for d in args.domains]
    settings = ResolverSettings.from_spec(args.resolver, timeout=min(3.0, args.timeout))
    statuses = asyncio.run(evaluate_all(domains, settings, args.timeout))
    if args.json:
        json.dump([s.to_json() for s in statuses], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if args.nagios:
        code = max(_NAGIOS_CODE[s.status] for s in statuses)
        summary = ", ".join(f"{s.domain}={s.status}" for s in statuses)
        print(f"DANE {_NAGIOS_WORD[code]} - {summary}")
        return code
    for status in statuses:
        sys.stdout.write(describe(status))
    return 0


async def evaluate_all(
    domains: Sequence[str], settings: ResolverSettings, deadline: float
) -> list[DomainStatus]:
    evaluator = DomainEvaluator(Resolver(settings))
    limit = asyncio.Semaphore(_CONCURRENCY)

    async def one(domain: str) -> DomainStatus:
        async with limit:
            return await evaluator.evaluate(domain, deadline)

    return list(await asyncio.gather(*(one(d) for d in domains)))


def describe(status: DomainStatus) -> str:
    """Human-readable report: one line for the domain, one per MX host."""
    mx = "MX secure" if status.mx_secure else "MX insecure"
    lines = [f"{status.domain}: {status.status} (usage {status.usage}, {mx}): {status.reason}"]
    for host in status.hosts:
        addresses = ", ".join(host.addresses) or "no addresses"
        lines.append(f"  {host.name} [{host.preference}] {addresses}: "
                     f"{host.tlsa_state}: {host.reason}")
        lines.extend(f"    TLSA {r.to_text()}" for r in host.records)
    return "\n".join(lines) + "\n"
