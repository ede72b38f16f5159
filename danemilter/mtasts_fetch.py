"""MTA-STS discovery and policy fetch (RFC 8461 §3): the I/O edge.

TXT ``_mta-sts.DOMAIN`` through the configured resolver, then
``https://mta-sts.DOMAIN/.well-known/mta-sts.txt`` with PKIX validation (the system's
trust store, or ``ca_file`` for private roots), SNI, no redirects (§3.3), at most
64 KiB, within the caller's deadline. HTTP/1.0 is asked for, so the body is plain
octets up to the close (no chunked encoding to undo). Every failure is a named reason
in a :class:`FetchResult`, never an exception.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from enum import StrEnum

import dns.rdatatype
from dns.rdtypes.ANY.TXT import TXT

from danemilter.deadline import Deadline
from danemilter.mtasts import MAX_POLICY_OCTETS, StsError, StsPolicy, decode_policy, parse_record
from danemilter.resolver import Resolver

log = logging.getLogger(__name__)

_MAX_HEADER_OCTETS = 16 * 1024
_WELL_KNOWN = "/.well-known/mta-sts.txt"


class Discovery(StrEnum):
    """What the TXT lookup said."""

    FOUND = "found"
    ABSENT = "absent"
    INVALID = "invalid"
    TEMPFAIL = "tempfail"


@dataclass(frozen=True, slots=True)
class TxtResult:
    discovery: Discovery
    id: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class FetchResult:
    """A fetched policy, or why there is none (``policy`` None)."""

    policy: StsPolicy | None
    reason: str
    transient: bool = False  # a timeout or connection failure, not a broken policy


async def discover(resolver: Resolver, domain: str, deadline: Deadline) -> TxtResult:
    answer = await resolver.query(f"_mta-sts.{domain}", dns.rdatatype.TXT,
                                  deadline.remaining())
    if answer.failed:
        return TxtResult(Discovery.TEMPFAIL, None, f"TXT lookup failed: {answer.reason}")
    texts = ["".join(s.decode("ascii", "replace") for s in rdata.strings)
             for rdata in answer.records if isinstance(rdata, TXT)]
    try:
        record = parse_record(texts)
    except StsError as exc:
        return TxtResult(Discovery.INVALID, None, str(exc))
    if record is None:
        return TxtResult(Discovery.ABSENT, None, "no MTA-STS TXT record")
    return TxtResult(Discovery.FOUND, record.id, f"TXT id {record.id}")


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


async def fetch_policy(resolver: Resolver, domain: str, deadline: Deadline, *,
                       context: ssl.SSLContext, port: int = 443) -> FetchResult:
    """GET the policy of ``domain`` by ``deadline``."""
    host = f"mta-sts.{domain}"
    addresses = await _addresses(resolver, host, deadline)
    if not addresses:
        return FetchResult(None, f"{host} has no address", transient=True)
    last = "no address answered"
    for address in addresses:
        try:
            return await asyncio.wait_for(_get(address, port, host, context),
                                          deadline.remaining())
        except TimeoutError:
            return FetchResult(None, f"no policy from {host} within the deadline",
                               transient=True)
        except ssl.SSLCertVerificationError as exc:
            return FetchResult(None, f"{host}: certificate not valid: "
                               f"{exc.verify_message or exc.reason}")
        except (OSError, ssl.SSLError) as exc:
            last = f"{host} [{address}]: {exc.strerror or exc}"
    return FetchResult(None, last, transient=True)


async def _addresses(resolver: Resolver, host: str, deadline: Deadline) -> list[str]:
    # DNSSEC is not required here (RFC 8461 §2): the HTTPS certificate authenticates.
    answers = await asyncio.gather(
        resolver.query(host, dns.rdatatype.A, deadline.remaining()),
        resolver.query(host, dns.rdatatype.AAAA, deadline.remaining()))
    return [r.to_text() for answer in answers if not answer.failed for r in answer.records
            if r.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)]


async def _get(address: str, port: int, host: str, context: ssl.SSLContext) -> FetchResult:
    reader, writer = await asyncio.open_connection(address, port, ssl=context,
                                                   server_hostname=host)
    try:
        writer.write(f"GET {_WELL_KNOWN} HTTP/1.0\r\nHost: {host}\r\n"
                     "User-Agent: danemilter\r\nAccept: text/plain\r\n\r\n".encode("ascii"))
        await writer.drain()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            return FetchResult(None, f"{host}: response headers too long")
        except asyncio.IncompleteReadError:
            return FetchResult(None, f"{host}: connection closed before the response",
                               transient=True)
        if len(head) > _MAX_HEADER_OCTETS:
            return FetchResult(None, f"{host}: response headers too long")
        status, headers = _parse_head(head)
        if status is None:
            return FetchResult(None, f"{host}: not an HTTP response")
        if 300 <= status < 400:
            # §3.3: "HTTP 3xx redirects MUST NOT be followed".
            return FetchResult(None, f"{host}: HTTP {status} redirect (not followed)")
        if status != 200:
            return FetchResult(None, f"{host}: HTTP {status}", transient=status >= 500)
        body = await reader.read(MAX_POLICY_OCTETS + 1)
        while len(body) <= MAX_POLICY_OCTETS:
            more = await reader.read(MAX_POLICY_OCTETS + 1 - len(body))
            if not more:
                break
            body += more
        try:
            policy = decode_policy(body, headers.get("content-type"))
        except StsError as exc:
            return FetchResult(None, f"{host}: {exc}")
        return FetchResult(policy, f"policy from {host}: mode {policy.mode}")
    finally:
        writer.close()


def _parse_head(head: bytes) -> tuple[int | None, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return None, {}
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers.setdefault(name.strip().lower(), value.strip())
    return int(parts[1]), headers
