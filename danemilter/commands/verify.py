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
import logging
import os
import socket
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from danemilter import config
from danemilter.config.model import BackendName
from danemilter.deadline import Deadline
from danemilter.errors import DanemilterError, UsageError
from danemilter.judge import PkixVerdict
from danemilter.mtasts import StsState, StsStatus
from danemilter.names import normalize_domain
from danemilter.policy import sts_named_hosts, wants_sts
from danemilter.probe_result import DomainProbe, OcspRequest, ProbeResult
from danemilter.resolver import ResolverSettings
from danemilter.resolver_check import check_resolver
from danemilter.service import Service
from danemilter.status import DomainState, DomainStatus

_DEFAULT_DEADLINE = 5.0
_MAX_TIMEOUT = 3600.0  # every wait has a deadline: not inf, not nan
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
    DomainState.RESOLVER_NOT_VALIDATING: 2,
}
_NAGIOS_WORD = ("OK", "WARNING", "CRITICAL", "UNKNOWN")

log = logging.getLogger(__name__)


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
                        help="validating resolver to ask (default: the config's resolver, "
                        "127.0.0.1:53); another than the configured one bypasses the cache")
    parser.add_argument("--timeout", type=float, default=_DEFAULT_DEADLINE, metavar="S",
                        help="deadline for each domain's DNS and for each TLS probe, "
                        "in seconds (default: %(default)s)")
    parser.add_argument("--config", metavar="FILE",
                        help="policy file to take the resolver, cache and probe settings "
                        f"from (default: {config.DEFAULT_PATH} when it exists)")
    parser.add_argument("--fresh", action="store_true",
                        help="ignore cached statuses and probe results (fresh ones are "
                        "still stored)")
    parser.add_argument("--no-cache", action="store_true",
                        help="neither read nor write the shared cache")
    parser.add_argument("--port", type=int, default=None, metavar="N",
                        help="SMTP port to probe (default: the config's probe.port, 25)")
    parser.add_argument("--allow-private", action="store_true",
                        help="let probes reach loopback, private and link-local addresses "
                        "(also: probe.allow_private in the config)")
    parser.add_argument("--concurrency", type=int, default=None, metavar="N",
                        help="probes running at once (default: the config's "
                        "probe.concurrency, 16)")
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
    if not 0 < args.timeout <= _MAX_TIMEOUT:
        raise UsageError(f"verify: --timeout must be a number of seconds from 0 to "
                         f"{_MAX_TIMEOUT:g}")
    if args.port is not None and not 0 < args.port < 65536:
        raise UsageError("verify: --port must be 1-65535")
    if args.concurrency is not None and args.concurrency < 1:
        raise UsageError("verify: --concurrency must be at least 1")
    domains = [normalize_domain(d) for d in args.domains]
    settings = _settings(args)
    resolver = _resolver_settings(args, settings)
    cache = _shared_cache(args, settings, resolver) or config.CacheSettings(backend="memory")
    statuses, probed, sts = asyncio.run(_ask_service(args, settings, resolver, cache,
                                                     domains))
    if probed is not None:
        return _report_probes(args, probed, sts)
    if args.json:
        json.dump([_with_sts(s.to_json(), sts) for s in statuses], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if args.nagios:
        return _nagios([(DomainProbe(s, tuple(() for _ in s.hosts)), sts.get(s.domain))
                        for s in statuses])
    for status in statuses:
        sys.stdout.write(describe(status) + _describe_sts(sts.get(status.domain)))
    return 0


def _with_sts(document: dict[str, Any], sts: dict[str, StsStatus]) -> dict[str, Any]:
    """The domain's MTA-STS side beside its DANE status (null where DANE decides)."""
    found = sts.get(document["domain"])
    document["sts"] = None if found is None else found.to_json()
    return document


def _describe_sts(sts: StsStatus | None) -> str:
    return "" if sts is None else f"  MTA-STS: {sts.state}: {sts.reason}\n"


def _settings(args: argparse.Namespace) -> config.Settings:
    """The --config file, else the milter's installed policy file, else built-in defaults:
    the helper shares the milter's resolver, cache and probe settings."""
    if args.config is not None:
        return config.load(args.config)
    if os.access(config.DEFAULT_PATH, os.R_OK):
        return config.load(str(config.DEFAULT_PATH))
    return config.Settings()


def _resolver_settings(args: argparse.Namespace, settings: config.Settings) -> ResolverSettings:
    timeout = min(3.0, args.timeout)
    configured = settings.resolver
    if args.resolver is not None:
        named = ResolverSettings.from_spec(args.resolver, timeout=timeout)
        return replace(configured, address=named.address, port=named.port, timeout=timeout)
    return replace(configured, timeout=min(configured.timeout, timeout))


def _shared_cache(args: argparse.Namespace, settings: config.Settings,
                  resolver: ResolverSettings) -> config.CacheSettings | None:
    """The milter's cache, when what this run learns is what the milter would learn.

    Not with another resolver than the configured one (its answers are not the
    milter's), not with the memory backend (it lives inside the milter), and never by
    creating a cache file in a directory that belongs to someone else (root running
    ``verify`` must not leave a root-owned file the milter cannot write).
    """
    if args.no_cache:
        return None
    if (resolver.address, resolver.port) != (settings.resolver.address, settings.resolver.port):
        log.info("--resolver differs from the configured resolver: not using the cache")
        return None
    cache = settings.cache
    if cache.backend == BackendName.MEMORY:
        return None
    if cache.backend == BackendName.SQLITE and not Path(cache.path).exists():
        try:
            owner = Path(cache.path).parent.stat().st_uid
        except OSError:
            return None
        if owner != os.geteuid():
            return None
    return cache


async def _ask_service(args: argparse.Namespace, settings: config.Settings,
                       resolver: ResolverSettings, cache: config.CacheSettings,
                       domains: Sequence[str]
                       ) -> tuple[list[DomainStatus], list[DomainProbe] | None,
                                  dict[str, StsStatus]]:
    """Statuses of ``domains``, (unless --dns-only) their probes, and the MTA-STS side
    of those DANE does not decide, from the service the milter uses: the same cache,
    coalescing and probe pool."""
    service = Service(resolver, cache, settings.mta_sts)
    limit = asyncio.Semaphore(_CONCURRENCY)
    checking = None
    if settings.resolver_check.mode is not config.ResolverCheckMode.OFF:
        # Beside the lookups, not before them: a report costs no extra round trip.
        checking = asyncio.ensure_future(check_resolver(resolver, settings.resolver_check))

    async def one(domain: str) -> DomainStatus:
        async with limit:
            return await service.status(domain, Deadline.after(args.timeout),
                                        fresh=args.fresh)

    try:
        statuses = list(await asyncio.gather(*(one(d) for d in domains)))
        if checking is not None:
            check = await checking
            if not check.passed:
                print(f"danemilter: warning: {check.line()}; no domain can be status dane "
                      "with this resolver", file=sys.stderr)
        # As a rule requiring authenticated TLS would see it (RFC 8461 §2: DANE first).
        sts_rule = config.Rule(tls=config.TlsRequirement.AUTHENTICATED)
        wanted = [s.domain for s in statuses if wants_sts(s, sts_rule)]
        found = await asyncio.gather(*(service.sts(d, Deadline.after(args.timeout))
                                       for d in wanted))
        sts = dict(zip(wanted, found, strict=True))
        if args.dns_only:
            return statuses, None, sts
        probes = await service.probe_each(statuses, OcspRequest(args.ocsp),
                                          _probe_settings(args, settings), fresh=args.fresh)
        return statuses, probes, sts
    finally:
        if checking is not None:
            checking.cancel()
        await service.aclose()  # a refresh begun ahead of expiry has no one to wait for


def _probe_settings(args: argparse.Namespace, settings: config.Settings
                    ) -> config.ProbeSettings:
    probe = settings.probe
    helo = args.helo or (probe.helo if settings.source != config.BUILT_IN
                         else socket.gethostname() or "localhost")
    return replace(probe, port=args.port if args.port is not None else probe.port,
                   timeout=args.timeout, helo=helo,
                   allow_private=args.allow_private or probe.allow_private,
                   concurrency=args.concurrency or probe.concurrency)


def _report_probes(args: argparse.Namespace, probed: Sequence[DomainProbe],
                   sts: dict[str, StsStatus]) -> int:
    if args.json:
        json.dump([_with_sts(p.to_json(), sts) for p in probed], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if args.nagios:
        return _nagios([(p, sts.get(p.status.domain)) for p in probed])
    for probe in probed:
        sys.stdout.write(describe_probe(probe) + _describe_sts(sts.get(probe.status.domain)))
    return 0


def _nagios(domains: Sequence[tuple[DomainProbe, StsStatus | None]]) -> int:
    """One monitoring-plugin line for every domain, and the worst code as exit status."""
    verdicts = [nagios_verdict(probe, sts) for probe, sts in domains]
    code = max(c for c, _ in verdicts)
    summary = ", ".join(
        f"{probe.status.domain}={probe.status.status}"
        + (f" sts={sts.state}" if sts is not None else "") + (f" ({why})" if why else "")
        for (probe, sts), (_, why) in zip(domains, verdicts, strict=True))
    print(f"DANE {_NAGIOS_WORD[code]} - {summary}")
    return code


def nagios_verdict(probe: DomainProbe, sts: StsStatus | None = None) -> tuple[int, str]:
    """Monitoring code for one probed domain and what raised it above the DNS status.

    2: DNS status critical (none, tempfail, ...), a TLSA mismatch, a DANE host that could
    not be checked, a revoked or invalid staple, a must-staple certificate without a
    good staple, or (MTA-STS enforce, for a domain DANE does not decide) no MX host the
    policy names or a named one whose certificate fails PKIX: MTA-STS senders refuse
    to deliver there. 1: partial DANE, a stale staple, no staple for a certificate that
    names an OCSP responder (DESIGN.md: reported, not enforced), or an MTA-STS policy
    that is published but invalid or could not be fetched. The code stays DANE's
    otherwise: ``none`` with an enforce-mode policy is still CRITICAL for DANE.
    """
    status = probe.status
    code = _NAGIOS_CODE[status.status]
    notes: list[str] = []
    enforced = sts.policy if sts is not None and sts.enforced else None
    if sts is not None and sts.state in (StsState.INVALID, StsState.TEMPFAIL):
        code = max(code, 1)
        notes.append(f"MTA-STS {sts.state}: {sts.reason}")
    named: frozenset[int] = frozenset()
    if enforced is not None:
        governed, named = sts_named_hosts(status, enforced)
        if governed and not named:
            code = 2
            notes.append(f"no MX host matches the MTA-STS policy (mx: {', '.join(enforced.mx)})")
    for index, (host, results) in enumerate(zip(status.hosts, probe.probes, strict=True)):
        for result in results:
            where = f"{host.name} [{result.address}]"
            level, what = _probe_level(result)
            if index in named and result.pkix is PkixVerdict.FAILED:
                level, what = 2, f"MTA-STS certificate check failed: {result.pkix_reason}"
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
        lines.extend(f"    {probe_line(result)}" for result in results)
    return "\n".join(lines) + "\n"


def probe_line(result: ProbeResult) -> str:
    """One line on one probed address: where, the DANE verdict and why, the staple."""
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
    pkix = ""
    if result.pkix is PkixVerdict.VERIFIED:
        pkix = "; PKIX verified"
    elif result.pkix is PkixVerdict.FAILED:
        pkix = f"; PKIX FAILED ({result.pkix_reason})"
    ocsp = f"OCSP {result.ocsp}"
    if result.ocsp not in ("good", "not-requested"):
        ocsp += f" ({result.ocsp_reason})"
    extra = " [must-staple]" if result.must_staple else ""
    return f"{where}: {dane} over {result.tls_version}: {result.reason}{pkix}; {ocsp}{extra}"
