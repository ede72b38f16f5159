"""``danemilter verify``: the outbound-verification helper.

DNS evaluation (RFC 7672) for every domain, then, unless ``--dns-only``, a STARTTLS
probe of every address of every usable MX host (``danemilter.probe``), judged against
the TLSA records and the OCSP rules. Output: text (one line per probed address), JSON
(DESIGN.md contract) or a monitoring-plugin line and exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from danemilter import config
from danemilter.dane import DomainEvaluator, DomainState, DomainStatus
from danemilter.errors import DanemilterError, UsageError
from danemilter.names import normalize_domain
from danemilter.probe import DomainProbe, ProbeResult, probe_domains
from danemilter.resolver import Resolver, ResolverSettings

_DEFAULT_DEADLINE = 5.0
_CONCURRENCY = 32
_PROBE_CONCURRENCY = 16
_DEFAULT_RESOLVER = "127.0.0.1:53"

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
    parser.add_argument("--resolver", metavar="HOST[:PORT]", default=None,
                        help="validating resolver to ask (default: the --config file's "
                        f"resolver, else {_DEFAULT_RESOLVER})")
    parser.add_argument("--timeout", type=float, default=_DEFAULT_DEADLINE, metavar="S",
                        help="deadline for each domain's DNS and for each TLS probe, "
                        "in seconds (default: %(default)s)")
    parser.add_argument("--config", metavar="FILE",
                        help="policy file to take the resolver from")
    parser.add_argument("--port", type=int, default=25, metavar="N",
                        help="SMTP port to probe (default: %(default)s)")
    parser.add_argument("--allow-private", action="store_true",
                        help="let probes reach loopback, private and link-local addresses")
    parser.add_argument("--concurrency", type=int, default=_PROBE_CONCURRENCY, metavar="N",
                        help="probes running at once (default: %(default)s)")
    parser.add_argument("--ocsp", choices=("auto", "always", "never"), default="auto",
                        help="request OCSP staples: auto = only where usage is 0 or 4, "
                        "as Exim does (default: %(default)s)")
    parser.add_argument("--helo", metavar="NAME", default=None,
                        help="EHLO name (default: this host's name)")
    parser.set_defaults(handler=_verify)


def _verify(args: argparse.Namespace) -> int:
    if not args.nagios:
        return _run(args)
    try:
        return _run(args)
    except DanemilterError as exc:
        print(f"DANE UNKNOWN - {' '.join(str(exc).split())}")
        return 3


def _run(args: argparse.Namespace) -> int:
    if not args.timeout > 0:
        raise UsageError("verify: --timeout must be positive")
    if not 0 < args.port < 65536:
        raise UsageError("verify: --port must be 1-65535")
    if args.concurrency < 1:
        raise UsageError("verify: --concurrency must be at least 1")
    domains = [normalize_domain(d) for d in args.domains]
    settings = _resolver_settings(args)
    statuses = asyncio.run(evaluate_all(domains, settings, args.timeout))
    if not args.dns_only:
        probed = probe_domains(
            statuses, port=args.port, timeout=args.timeout, now=datetime.now(UTC),
            helo=args.helo or socket.gethostname() or "localhost",
            allow_private=args.allow_private, concurrency=args.concurrency, ocsp=args.ocsp,
        )
        return _report_probes(args, probed)
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


def _resolver_settings(args: argparse.Namespace) -> ResolverSettings:
    timeout = min(3.0, args.timeout)
    if args.resolver is not None:
        return ResolverSettings.from_spec(args.resolver, timeout=timeout)
    if args.config is not None:
        configured = config.load(args.config).resolver
        return ResolverSettings(configured.address, configured.port,
                                min(configured.timeout, timeout))
    return ResolverSettings.from_spec(_DEFAULT_RESOLVER, timeout=timeout)


def _report_probes(args: argparse.Namespace, probed: Sequence[DomainProbe]) -> int:
    if args.json:
        json.dump([p.to_json() for p in probed], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if args.nagios:
        verdicts = [nagios_verdict(p) for p in probed]
        code = max(c for c, _ in verdicts)
        summary = ", ".join(f"{p.status.domain}={p.status.status}" + (f" ({why})" if why else "")
                            for p, (_, why) in zip(probed, verdicts, strict=True))
        print(f"DANE {_NAGIOS_WORD[code]} - {summary}")
        return code
    for probe in probed:
        sys.stdout.write(describe_probe(probe))
    return 0


def nagios_verdict(probe: DomainProbe) -> tuple[int, str]:
    """Monitoring code for one probed domain and what raised it above the DNS status.

    2: DNS status critical (none, tempfail, ...), a TLSA mismatch, a DANE host that could
    not be checked, a revoked or invalid staple, or a must-staple certificate without a
    good staple. 1: partial DANE, a stale staple, or no staple for a certificate that
    names an OCSP responder (DESIGN.md: reported, not enforced).
    """
    code = _NAGIOS_CODE[probe.status.status]
    notes: list[str] = []
    for host, results in zip(probe.status.hosts, probe.probes, strict=True):
        for result in results:
            where = f"{host.name} [{result.address}]"
            level, what = _probe_level(result)
            if level:
                notes.append(f"{where} {what}")
                code = max(code, level)
    return code, "; ".join(notes)


def _probe_level(result: ProbeResult) -> tuple[int, str]:
    if result.dane == "mismatch":
        return 2, "TLSA mismatch"
    if result.dane == "failed":
        return 2, f"not checked: {result.reason}"
    if result.failed_at is not None:
        return 1, f"no TLS: {result.reason}"
    if result.ocsp in ("revoked", "invalid"):
        return 2, f"OCSP {result.ocsp}"
    if result.ocsp in ("stale", "absent") and (result.must_staple or result.ocsp_url):
        return (2 if result.must_staple else 1), f"OCSP {result.ocsp}"
    return 0, ""


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


def describe_probe(probe: DomainProbe) -> str:
    """Human-readable report: the domain, each MX host, one line per probed address."""
    status = probe.status
    mx = "MX secure" if status.mx_secure else "MX insecure"
    lines = [f"{status.domain}: {status.status} (usage {status.usage}, {mx}): {status.reason}"]
    for host, results in zip(status.hosts, probe.probes, strict=True):
        addresses = ", ".join(host.addresses) or "no addresses"
        lines.append(f"  {host.name} [{host.preference}] {addresses}: "
                     f"{host.tlsa_state}: {host.reason}")
        lines.extend(f"    TLSA {r.to_text()}" for r in host.records)
        lines.extend(f"    {_probe_line(result)}" for result in results)
    return "\n".join(lines) + "\n"


def _probe_line(result: ProbeResult) -> str:
    where = f"[{result.address}]:{result.port}"
    if result.failed_at is not None:
        dane = "DANE check failed" if result.dane == "failed" else "no TLS"
        return f"{where}: {dane} ({result.failed_at}): {result.reason}"
    if result.dane == "verified":
        dane = f"DANE verified at depth {result.depth}"
    elif result.dane == "mismatch":
        at = f" (matched depth {result.depth})" if result.depth is not None else ""
        dane = f"DANE MISMATCH{at}"
    else:
        dane = "TLS without DANE"
    ocsp = f"OCSP {result.ocsp}"
    if result.ocsp not in ("good", "not-requested"):
        ocsp += f" ({result.ocsp_reason})"
    extra = " [must-staple]" if result.must_staple else ""
    return f"{where}: {dane} over {result.tls_version}: {result.reason}; {ocsp}{extra}"
