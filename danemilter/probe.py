"""STARTTLS probes of MX hosts: connect, EHLO, STARTTLS, handshake, read chain and staple.

I/O at the edge: this module talks SMTP and TLS and hands what it saw to the pure
``danemilter.judge``. OpenSSL's own verifier is never used (``VERIFY_NONE``): the chain is
judged against the host's TLSA records with SMTP semantics, the staple by the OCSP rules.

Deadlines. Each probe has one overall deadline. The plain-text SMTP part uses socket
timeouts. The TLS handshake needs a *blocking* socket for pyOpenSSL's OCSP client
callback (a Python socket timeout puts the descriptor in non-blocking mode and the
handshake then fails with WantReadError), so for the TLS part the socket is blocking
with kernel-level ``SO_RCVTIMEO``/``SO_SNDTIMEO`` set to the time left: a stalled read
returns EAGAIN, OpenSSL reports WANT_READ and the loop checks the deadline.

Probes refuse loopback, private, link-local, multicast, unspecified and reserved
addresses unless ``allow_private`` (DESIGN.md: config key ``probe.allow_private``): an MX
record can point anywhere, and a verification helper must not become a way to reach
internal services.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from cryptography import x509
from OpenSSL import SSL

from danemilter.dane import DomainState, DomainStatus, HostState, HostStatus
from danemilter.judge import (
    DaneVerdict,
    OcspState,
    judge,
    reference_names,
    wants_staple,
)

log = logging.getLogger(__name__)

OcspRequest = Literal["auto", "always", "never"]
Stage = Literal["not-probed", "connect", "banner", "ehlo", "starttls", "handshake"]

_MAX_REPLY_OCTETS = 64 * 1024
_MAX_REPLY_LINES = 200
_QUIT_WAIT = 1.0
_RECV_SIZE = 4096
# Opportunistic SMTP TLS takes what the server offers (RFC 7435); authentication comes
# from DANE, not from cipher strength. Anonymous suites would hide the certificate.
_CIPHERS = b"ALL:!aNULL:!eNULL:@SECLEVEL=0"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What one STARTTLS probe of one address found (the ``probes`` JSON objects).

    ``failed_at`` names the step that went wrong (``None`` when a handshake completed).
    ``dane``: ``verified``/``mismatch`` for a DANE host whose chain was judged,
    ``failed`` for a DANE host whose chain could not be obtained, ``not-applicable``
    for a host without usable TLSA records.
    """

    address: str
    port: int
    starttls: bool
    tls_version: str | None
    dane: DaneVerdict
    depth: int | None
    ocsp: OcspState
    reason: str
    ocsp_reason: str = ""
    ocsp_url: str | None = None
    must_staple: bool = False
    failed_at: Stage | None = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "port": self.port,
            "starttls": self.starttls,
            "tls_version": self.tls_version,
            "dane": self.dane,
            "depth": self.depth,
            "ocsp": self.ocsp,
            "reason": self.reason,
            "ocsp_reason": self.ocsp_reason,
            "ocsp_url": self.ocsp_url,
            "must_staple": self.must_staple,
            "failed_at": self.failed_at,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True, slots=True)
class DomainProbe:
    """A domain's DNS status (``dane-mismatch`` when a probe showed one) and its probes.

    ``probes[i]`` belongs to ``status.hosts[i]``; hosts that were not probed (failed
    lookups, no addresses) have an empty tuple.
    """

    status: DomainStatus
    probes: tuple[tuple[ProbeResult, ...], ...]

    def to_json(self) -> dict[str, Any]:
        document = self.status.to_json()
        for host, probes in zip(document["hosts"], self.probes, strict=True):
            host["probes"] = [p.to_json() for p in probes]
        return document


# ----------------------------------------------------------------- pure helpers


def private_address_reason(address: str) -> str | None:
    """Why ``address`` must not be probed without ``allow_private``; None when it may be.

    IPv4-mapped and 6to4/Teredo-embedded IPv4 addresses are judged by the IPv4 address
    they carry, so ``::ffff:10.0.0.1`` is as private as ``10.0.0.1``.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # the connection goes to the IPv4 address
            return private_address_reason(str(ip.ipv4_mapped))
        embedded = ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None:
            inner = private_address_reason(str(embedded))
            if inner is not None:
                return inner
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("not globally routable", not ip.is_global),
    )
    for kind, hit in checks:
        if hit:
            return kind
    return None


def dane_relevant(host: HostStatus) -> bool:
    """Whether a host is probed at all: it would be used for delivery (RFC 7672 §2.2)."""
    return host.deliverable


def domain_verdict(status: DomainStatus,
                   probes: Sequence[Sequence[ProbeResult]]) -> DomainStatus:
    """``dane-mismatch`` when a DANE host's certificate matches none of its TLSA records.

    Delivery to that host would fail (RFC 7672 §2.2: authenticated TLS is required),
    so the domain is reported as broken even when other hosts verify.
    """
    if status.status not in (DomainState.DANE, DomainState.PARTIAL):
        return status
    for host, results in zip(status.hosts, probes, strict=True):
        if host.tlsa_state is not HostState.DANE:
            continue
        for result in results:
            if result.dane == DaneVerdict.MISMATCH:
                return replace(
                    status,
                    status=DomainState.DANE_MISMATCH,
                    reason=f"{host.name} [{result.address}] presents a certificate that "
                           f"matches none of its TLSA records: {result.reason}",
                )
    return status


def staple_wanted(host: HostStatus, policy: OcspRequest) -> bool:
    if policy == "always":
        return True
    if policy == "never":
        return False
    records = host.records if host.tlsa_state is HostState.DANE else ()
    return wants_staple(records)


# ------------------------------------------------------------------ the session


class _Failure(Exception):
    def __init__(self, stage: Stage, reason: str) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason


class _Session:
    """The plain-text SMTP part of a probe, bounded by ``deadline`` (monotonic)."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buffer = b""

    def remaining(self, stage: Stage, what: str) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _Failure(stage, f"timed out {what}")
        return left

    def send(self, line: str, stage: Stage) -> None:
        verb = line.split(maxsplit=1)[0]
        self.sock.settimeout(self.remaining(stage, f"sending {verb}"))
        try:
            self.sock.sendall(line.encode("ascii") + b"\r\n")
        except TimeoutError:
            raise _Failure(stage, f"timed out sending {verb}") from None
        except OSError as exc:
            raise _Failure(stage, f"sending {verb} failed: {exc}") from None

    def reply(self, stage: Stage, what: str) -> tuple[int, list[str]]:
        """One (possibly multi-line) reply: its code and its text lines."""
        lines: list[str] = []
        code = 0
        while True:
            while b"\n" not in self.buffer:
                if len(self.buffer) > _MAX_REPLY_OCTETS:
                    raise _Failure(stage, f"{what}: reply line too long")
                self.sock.settimeout(self.remaining(stage, f"waiting for {what}"))
                try:
                    data = self.sock.recv(_RECV_SIZE)
                except TimeoutError:
                    raise _Failure(stage, f"timed out waiting for {what}") from None
                except OSError as exc:
                    raise _Failure(stage, f"reading {what} failed: {exc}") from None
                if not data:
                    raise _Failure(stage, f"connection closed by the server before {what}")
                self.buffer += data
            raw, _, self.buffer = self.buffer.partition(b"\n")
            line = raw.rstrip(b"\r").decode("utf-8", "replace")
            if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in ("", " ", "-"):
                raise _Failure(stage, f"{what}: malformed reply line {line[:80]!r}")
            if lines and int(line[:3]) != code:
                raise _Failure(stage, f"{what}: inconsistent reply codes")
            code = int(line[:3])
            lines.append(line[4:])
            if len(lines) > _MAX_REPLY_LINES:
                raise _Failure(stage, f"{what}: reply has too many lines")
            if line[3:4] != "-":
                return code, lines

    def quit(self) -> None:
        """Best effort: say goodbye without letting a slow server hold the probe."""
        try:
            self.sock.settimeout(max(0.01, min(_QUIT_WAIT, self.deadline - time.monotonic())))
            self.sock.sendall(b"QUIT\r\n")
        except OSError:
            pass


def _set_kernel_timeouts(sock: socket.socket, seconds: float) -> None:
    """SO_RCVTIMEO/SO_SNDTIMEO on a blocking socket (see the module docstring)."""
    seconds = max(seconds, 0.001)
    whole = int(seconds)
    value = struct.pack("@ll", whole, int((seconds - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


@dataclass(frozen=True, slots=True)
class _Handshake:
    chain: tuple[x509.Certificate, ...]
    version: str
    staple: bytes | None


def _tls(sock: socket.socket, sni: str | None, request_staple: bool,
         deadline: float) -> _Handshake:
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_verify(SSL.VERIFY_NONE)  # judged by danemilter.judge, never by OpenSSL
    context.set_cipher_list(_CIPHERS)
    staples: list[bytes] = []

    def record_staple(_conn: SSL.Connection, data: bytes, _userdata: Any) -> bool:
        staples.append(bytes(data))
        return True  # judged later; never abort the handshake here

    if request_staple:
        context.set_ocsp_client_callback(record_staple)
    conn = SSL.Connection(context, sock)
    if sni:
        conn.set_tlsext_host_name(sni.encode("ascii"))
    if request_staple:
        conn.request_ocsp()
    conn.set_connect_state()
    sock.settimeout(None)
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Failure("handshake", "timed out in the TLS handshake")
            _set_kernel_timeouts(sock, left)
            try:
                conn.do_handshake()
                break
            except (SSL.WantReadError, SSL.WantWriteError):
                continue
        chain = tuple(conn.get_peer_cert_chain(as_cryptography=True) or ())
        version = conn.get_protocol_version_name()
        staple = (staples[-1] if staples else b"") if request_staple else None
        try:
            _set_kernel_timeouts(sock, max(0.01, min(_QUIT_WAIT, deadline - time.monotonic())))
            conn.sendall(b"QUIT\r\n")
            conn.shutdown()
        except (SSL.Error, OSError):
            pass
        return _Handshake(chain, version, staple)
    except SSL.SysCallError as exc:
        raise _Failure("handshake", f"TLS handshake failed: connection error {exc.args}") \
            from None
    except SSL.Error as exc:
        raise _Failure("handshake", f"TLS handshake failed: {_ssl_reason(exc)}") from None


def _ssl_reason(exc: SSL.Error) -> str:
    try:
        parts = [str(item[2]) for item in exc.args[0]]
    except (IndexError, TypeError):
        parts = []
    return "; ".join(parts) or str(exc) or exc.__class__.__name__


def probe_host(
    host: HostStatus,
    address: str,
    *,
    port: int = 25,
    names: Sequence[str],
    request_staple: bool,
    timeout: float,
    now: datetime,
    helo: str,
    allow_private: bool = False,
) -> ProbeResult:
    """Probe ``address`` of MX ``host``; never raises for network trouble.

    ``names``: reference identifiers for DANE-TA (``judge.reference_names``).
    ``now``: the instant certificates and staples are judged at.
    """
    began = time.monotonic()
    dane_host = bool(host.usable_records) and host.tlsa_state is HostState.DANE

    def failed(stage: Stage, reason: str, starttls: bool = False) -> ProbeResult:
        log.info("probe %s [%s]:%d failed at %s: %s", host.name, address, port, stage, reason)
        return ProbeResult(
            address=address, port=port, starttls=starttls, tls_version=None,
            dane=DaneVerdict.FAILED if dane_host else DaneVerdict.NOT_APPLICABLE, depth=None,
            ocsp=OcspState.NOT_REQUESTED if not request_staple else OcspState.ABSENT,
            reason=reason,
            ocsp_reason="no TLS session" if request_staple else "no staple requested",
            failed_at=stage, seconds=time.monotonic() - began,
        )

    if not allow_private:
        kind = private_address_reason(address)
        if kind is not None:
            return failed("not-probed", f"not probed: private address ({kind})")
    deadline = began + timeout
    try:
        try:
            sock = socket.create_connection((address, port), timeout=timeout)
        except TimeoutError:
            raise _Failure("connect", f"timed out connecting to port {port}") from None
        except OSError as exc:
            raise _Failure("connect", f"cannot connect to port {port}: "
                                      f"{exc.strerror or exc}") from None
        with sock:
            session = _Session(sock, deadline)
            code, lines = session.reply("banner", "the banner")
            if code != 220:
                session.quit()
                raise _Failure("banner", f"the server refused the session: {code} "
                                         f"{' '.join(lines)[:200]}")
            session.send(f"EHLO {helo}", "ehlo")
            code, lines = session.reply("ehlo", "the EHLO reply")
            if code != 250:
                session.quit()
                raise _Failure("ehlo", f"EHLO refused: {code} {' '.join(lines)[:200]}")
            keywords = {line.split(" ", 1)[0].upper() for line in lines[1:]}
            if "STARTTLS" not in keywords:
                session.quit()
                raise _Failure("ehlo", "STARTTLS not offered"
                               + (": DANE requires TLS" if dane_host else ""))
            session.send("STARTTLS", "starttls")
            code, lines = session.reply("starttls", "the STARTTLS reply")
            if code != 220:
                session.quit()
                raise _Failure("starttls", f"STARTTLS refused: {code} {' '.join(lines)[:200]}")
            if session.buffer:
                # RFC 3207 §5 / CVE-2011-0411: plain text after 220 could be injected
                # into the TLS session's replies.
                raise _Failure("starttls", "the server sent data after its STARTTLS reply")
            sni = host.tlsa_base or host.name
            shake = _tls(sock, sni, request_staple, deadline)
    except _Failure as failure:
        return failed(failure.stage, failure.reason,
                      starttls=failure.stage in ("starttls", "handshake"))

    verdict = judge(shake.chain, host.records if dane_host else (), names, shake.staple, now)
    reason = verdict.dane_reason
    if verdict.dane == DaneVerdict.NOT_APPLICABLE:
        reason = f"TLS without DANE: {host.reason}"
    return ProbeResult(
        address=address, port=port, starttls=True, tls_version=shake.version,
        dane=verdict.dane, depth=verdict.depth, ocsp=verdict.ocsp, reason=reason,
        ocsp_reason=verdict.ocsp_reason, ocsp_url=verdict.ocsp_url,
        must_staple=verdict.must_staple, failed_at=None,
        seconds=time.monotonic() - began,
    )


def probe_domains(
    statuses: Sequence[DomainStatus],
    *,
    port: int = 25,
    timeout: float,
    now: datetime,
    helo: str,
    allow_private: bool = False,
    concurrency: int = 16,
    ocsp: OcspRequest = "auto",
) -> list[DomainProbe]:
    """Probe every address of every deliverable host of ``statuses``, ``concurrency`` at
    a time (one thread each: the TLS handshake is blocking I/O in OpenSSL)."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    jobs: list[tuple[int, int, str]] = []
    for d, status in enumerate(statuses):
        for h, host in enumerate(status.hosts):
            if dane_relevant(host):
                jobs.extend((d, h, address) for address in host.addresses)
    results: dict[tuple[int, int], list[ProbeResult]] = {}
    if jobs:
        with ThreadPoolExecutor(max_workers=min(concurrency, len(jobs)),
                                thread_name_prefix="probe") as pool:
            futures = []
            for d, h, address in jobs:
                status = statuses[d]
                host = status.hosts[h]
                futures.append(((d, h), pool.submit(
                    probe_host, host, address, port=port,
                    names=reference_names(status.domain, status.mx_secure, host.name,
                                          host.tlsa_base, status.canonical),
                    request_staple=staple_wanted(host, ocsp), timeout=timeout, now=now,
                    helo=helo, allow_private=allow_private,
                )))
            for key, future in futures:
                results.setdefault(key, []).append(future.result())
    probed = []
    for d, status in enumerate(statuses):
        probes = tuple(tuple(results.get((d, h), ())) for h in range(len(status.hosts)))
        probed.append(DomainProbe(domain_verdict(status, probes), probes))
    return probed


def probe_domain(status: DomainStatus, **options: Any) -> DomainProbe:
    """One domain's probes; options as for :func:`probe_domains`."""
    return probe_domains([status], **options)[0]
