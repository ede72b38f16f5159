"""STARTTLS probes of MX hosts: connect, EHLO, STARTTLS, handshake, read chain and staple.

I/O at the edge: this module talks SMTP and TLS and hands what it saw to the pure
``danemilter.judge``. OpenSSL never decides a handshake (``VERIFY_NONE``): the chain is
judged against the host's TLSA records with SMTP semantics, the staple by the OCSP rules.
For hosts without DANE, OpenSSL's own chain verification (against ``ca_file`` or the
system's store, noted by the verify callback) is what the MTA-STS PKIX verdict takes,
so that it is the chain check Postfix's ``secure`` level makes.

Deadlines. Each probe has one overall deadline. The plain-text SMTP part uses socket
timeouts, checked again after every read. The TLS handshake runs on a non-blocking
descriptor: each ``do_handshake`` consumes what has arrived and returns WANT_READ, and
the loop waits with ``select`` for at most the time left. (A blocking socket with
``SO_RCVTIMEO`` bounds each read, not the handshake: a server trickling its records a
byte a second kept OpenSSL reading inside one call for as long as it liked.)

Probes refuse loopback, private, link-local, multicast, unspecified and reserved
addresses unless ``allow_private`` (DESIGN.md: config key ``probe.allow_private``): an MX
record can point anywhere, and a verification helper must not become a way to reach
internal services.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import select
import socket
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from OpenSSL import SSL

# pyOpenSSL's binding of the OpenSSL it links (private, but pyOpenSSL's own X509 errors
# take their texts from it too): X509_verify_cert_error_string.
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

from danemilter.deadline import Deadline
from danemilter.files import file_version
from danemilter.judge import (
    DaneVerdict,
    OcspState,
    judge,
    judge_pkix,
    reference_names,
)
from danemilter.probe_result import (
    SYSTEM_TRUST,
    DomainProbe,
    OcspRequest,
    ProbeResult,
    Stage,
    dane_relevant,
    domain_verdict,
    private_address_reason,
    staple_wanted,
)
from danemilter.status import DomainStatus, HostState, HostStatus

__all__ = ["DomainProbe", "OcspRequest", "ProbeResult", "Stage", "private_address_reason",
           "probe_domain", "probe_domains", "probe_host"]

log = logging.getLogger(__name__)

_MAX_REPLY_OCTETS = 64 * 1024
# Below this, a TLS handshake cannot complete anyway.
MIN_PROBE_TIME = 0.05
_MAX_REPLY_LINES = 200
_QUIT_WAIT = 1.0
_RECV_SIZE = 4096
# Opportunistic SMTP TLS takes what the server offers (RFC 7435); authentication comes
# from DANE, not from cipher strength. Anonymous suites would hide the certificate.
_CIPHERS = b"ALL:!aNULL:!eNULL:@SECLEVEL=0"


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


def _wait(sock: socket.socket, deadline: float, *, readable: bool) -> None:
    """Until ``sock`` can be read (or written), at most until ``deadline``."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise _Failure(Stage.HANDSHAKE, "timed out in the TLS handshake")
    # poll, not select: descriptors above FD_SETSIZE (1024) are normal under a high
    # LimitNOFILE.
    poller = select.poll()
    poller.register(sock, select.POLLIN if readable else select.POLLOUT)
    if not poller.poll(left * 1000):
        raise _Failure(Stage.HANDSHAKE, "timed out in the TLS handshake")


@dataclass(frozen=True, slots=True)
class _Handshake:
    chain: tuple[x509.Certificate, ...]
    version: str
    staple: bytes | None
    chain_error: str | None


class _Findings:
    """What OpenSSL's callbacks saw during one handshake (the connection's app data)."""

    __slots__ = ("chain_error", "staples")

    def __init__(self) -> None:
        self.staples: list[bytes] = []
        self.chain_error: str | None = None


def _note_staple(conn: SSL.Connection, data: bytes, _userdata: Any) -> bool:
    conn.get_app_data().staples.append(bytes(data))
    return True  # judged later; never abort the handshake here


def _note_chain_error(conn: SSL.Connection, cert: Any, errnum: int, depth: int,
                      ok: int) -> bool:
    # Postfix's verify callback does the same: note the first complaint, go on, and
    # decide after the handshake. Returning True keeps OpenSSL building the path.
    findings: _Findings = conn.get_app_data()
    if not ok and findings.chain_error is None:
        findings.chain_error = f"{_verify_error(errnum)} (depth {depth})"
    return True


class _Contexts:
    """One TLS client context per trust store: loading a CA bundle costs ~7 ms, which
    every probe would otherwise pay. Contexts are configured once, then only used; a CA
    file that changed (size or mtime) gets a new one, so new roots count at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._contexts: dict[str | None, _TrustStore] = {}

    def get(self, ca_file: str | None) -> _TrustStore:
        version = file_version(ca_file)
        with self._lock:
            found = self._contexts.get(ca_file)
            if found is None or found.version != version:
                found = self._contexts[ca_file] = _TrustStore(
                    version, *_make_context(ca_file), _content_label(ca_file))
            return found


@dataclass(frozen=True, slots=True)
class _TrustStore:
    version: object
    context: SSL.Context
    problem: str | None  # why the store is unusable; None: usable
    label: str


def _content_label(ca_file: str | None) -> str:
    # By content, not by path alone: a rewritten CA file changes PKIX verdicts, and
    # daemons sharing a Redis cache agree on a file that is the same everywhere.
    if ca_file is None:
        return SYSTEM_TRUST
    try:
        with open(ca_file, "rb") as pem:
            digest = hashlib.sha256(pem.read()).hexdigest()[:16]
    except OSError as exc:
        return f"{ca_file}@unreadable:{exc.errno}"
    return f"{ca_file}@sha256:{digest}"


def trust_label(ca_file: str | None) -> str:
    """The trust store PKIX verdicts are judged against, named by its content: a probe
    cached under another label is not used (ProbeCache)."""
    return _contexts.get(ca_file).label


def _make_context(ca_file: str | None) -> tuple[SSL.Context, str | None]:
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    # Judged by danemilter.judge, never by OpenSSL: VERIFY_NONE completes every
    # handshake, and the callback records OpenSSL's PKIX verdict for MTA-STS hosts.
    context.set_verify(SSL.VERIFY_NONE, _note_chain_error)
    context.set_cipher_list(_CIPHERS)
    context.set_ocsp_client_callback(_note_staple)
    problem = None
    try:
        if ca_file is None:
            context.set_default_verify_paths()
        else:
            context.load_verify_locations(ca_file)
    except SSL.Error as exc:
        problem = f"trust store {ca_file or 'of the system'} unusable: {_ssl_reason(exc)}"
        log.warning("TLS probes: %s; no MX certificate passes PKIX", problem)
    return context, problem


_contexts = _Contexts()


def _tls(sock: socket.socket, sni: str | None, request_staple: bool,
         deadline: float, ca_file: str | None) -> _Handshake:
    store = _contexts.get(ca_file)
    context, trust_problem = store.context, store.problem
    findings = _Findings()
    conn = SSL.Connection(context, sock)
    conn.set_app_data(findings)
    if sni:
        conn.set_tlsext_host_name(sni.encode("ascii"))
    if request_staple:
        conn.request_ocsp()
    conn.set_connect_state()
    sock.setblocking(False)
    try:
        while True:
            try:
                conn.do_handshake()
                break
            except SSL.WantReadError:
                _wait(sock, deadline, readable=True)
            except SSL.WantWriteError:
                _wait(sock, deadline, readable=False)
        chain = tuple(conn.get_peer_cert_chain(as_cryptography=True) or ())
        version = conn.get_protocol_version_name()
        staple = (findings.staples[-1] if findings.staples else b"") if request_staple \
            else None
        try:
            # Best effort, never waited for: the socket is non-blocking.
            conn.send(b"QUIT\r\n")
            conn.shutdown()
        except (SSL.Error, OSError):
            pass
        return _Handshake(chain, version, staple, trust_problem or findings.chain_error)
    except SSL.SysCallError as exc:
        raise _Failure(Stage.HANDSHAKE, f"TLS handshake failed: connection error {exc.args}") \
            from None
    except SSL.Error as exc:
        raise _Failure(Stage.HANDSHAKE, f"TLS handshake failed: {_ssl_reason(exc)}") from None


def _verify_error(errnum: int) -> str:
    """OpenSSL's own text for X509_V_ERR ``errnum``, as Postfix logs it. Texts change
    between OpenSSL versions (3.5 says "unsuitable certificate purpose" where 3.0 says
    "unsupported"), so they come from the library that did the verification."""
    try:
        text = _ffi.string(_lib.X509_verify_cert_error_string(errnum))
    except (AttributeError, TypeError):  # a binding without it: the number still says
        return f"certificate verification error {errnum}"
    return text.decode("ascii", "replace") if isinstance(text, bytes) else str(text)


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
    deadline: float | None = None,
    ca_file: str | None = None,
) -> ProbeResult:
    """Probe ``address`` of MX ``host``; never raises for network trouble.

    ``names``: reference identifiers for DANE-TA (``judge.reference_names``).
    ``now``: the instant certificates and staples are judged at.
    ``ca_file``: the trust store for hosts without DANE (RFC 8461 §4.2), else the
    system's.
    ``timeout`` bounds this probe; ``deadline`` (monotonic), when given, bounds it too:
    a probe that waited in the pool past it does not start.
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
            return failed(Stage.NOT_PROBED, f"not probed: private address ({kind})")
    deadline = began + timeout if deadline is None else min(deadline, began + timeout)
    if deadline - began < MIN_PROBE_TIME:
        return failed(Stage.CONNECT, "not attempted: no time left in the deadline")
    try:
        try:
            sock = socket.create_connection((address, port), timeout=deadline - began)
        except TimeoutError:
            raise _Failure(Stage.CONNECT, f"timed out connecting to port {port}") from None
        except OSError as exc:
            raise _Failure(Stage.CONNECT, f"cannot connect to port {port}: "
                                      f"{exc.strerror or exc}") from None
        with sock:
            session = _Session(sock, deadline)
            code, lines = session.reply(Stage.BANNER, "the banner")
            if code != 220:
                session.quit()
                raise _Failure(Stage.BANNER, f"the server refused the session: {code} "
                                         f"{' '.join(lines)[:200]}")
            session.send(f"EHLO {helo}", Stage.EHLO)
            code, lines = session.reply(Stage.EHLO, "the EHLO reply")
            if code != 250:
                session.quit()
                raise _Failure(Stage.EHLO, f"EHLO refused: {code} {' '.join(lines)[:200]}")
            keywords = {line.split(" ", 1)[0].upper() for line in lines[1:]}
            if "STARTTLS" not in keywords:
                session.quit()
                raise _Failure(Stage.EHLO, "STARTTLS not offered"
                               + (": DANE requires TLS" if dane_host else ""))
            session.send("STARTTLS", Stage.STARTTLS)
            code, lines = session.reply(Stage.STARTTLS, "the STARTTLS reply")
            if code != 220:
                session.quit()
                raise _Failure(Stage.STARTTLS, f"STARTTLS refused: {code} {' '.join(lines)[:200]}")
            if session.buffer:
                # RFC 3207 §5 / CVE-2011-0411: plain text after 220 could be injected
                # into the TLS session's replies.
                raise _Failure(Stage.STARTTLS, "the server sent data after its STARTTLS reply")
            sni = host.tlsa_base or host.name
            shake = _tls(sock, sni, request_staple, deadline, ca_file)
    except _Failure as failure:
        return failed(failure.stage, failure.reason,
                      starttls=failure.stage in (Stage.STARTTLS, Stage.HANDSHAKE))

    verdict = judge(shake.chain, host.records if dane_host else (), names, shake.staple, now)
    pkix, pkix_reason = judge_pkix(shake.chain, shake.chain_error,
                                   None if dane_host else host.name)
    reason = verdict.dane_reason
    if verdict.dane == DaneVerdict.NOT_APPLICABLE:
        reason = f"TLS without DANE: {host.reason}"
    return ProbeResult(
        address=address, port=port, starttls=True, tls_version=shake.version,
        dane=verdict.dane, depth=verdict.depth, ocsp=verdict.ocsp, reason=reason,
        ocsp_reason=verdict.ocsp_reason, ocsp_url=verdict.ocsp_url,
        must_staple=verdict.must_staple, failed_at=None,
        seconds=time.monotonic() - began, pkix=pkix, pkix_reason=pkix_reason,
    )


_Job = tuple[int, int, dict[str, Any]]


def _jobs(statuses: Sequence[DomainStatus], ocsp: OcspRequest) -> list[_Job]:
    """(domain index, host index, probe_host arguments) for every address to probe."""
    jobs: list[_Job] = []
    for d, status in enumerate(statuses):
        for h, host in enumerate(status.hosts):
            if not dane_relevant(host):
                continue
            names = reference_names(status.domain, status.mx_secure, host.name,
                                    host.tlsa_base, status.canonical)
            jobs.extend((d, h, {"host": host, "address": address, "names": names,
                                "request_staple": staple_wanted(host, ocsp)})
                        for address in host.addresses)
    return jobs


def _assemble(statuses: Sequence[DomainStatus],
              results: dict[tuple[int, int], list[ProbeResult]]) -> list[DomainProbe]:
    probed = []
    for d, status in enumerate(statuses):
        probes = tuple(tuple(results.get((d, h), ())) for h in range(len(status.hosts)))
        probed.append(DomainProbe(domain_verdict(status, probes), probes))
    return probed


class _ProcessPool:
    """The process's one pool of probe threads: ``probe.concurrency`` bounds the probes
    running at once in the process, whoever asks (DESIGN.md "service"). A new size
    replaces the pool; probes already running in the old one finish there."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._size = 0

    def get(self, concurrency: int) -> ThreadPoolExecutor:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        with self._lock:
            if self._pool is None or self._size != concurrency:
                if self._pool is not None:
                    self._pool.shutdown(wait=False)
                self._pool = ThreadPoolExecutor(max_workers=concurrency,
                                                thread_name_prefix="probe")
                self._size = concurrency
            return self._pool


probe_pool = _ProcessPool().get


def probe_domains(
    statuses: Sequence[DomainStatus],
    *,
    port: int = 25,
    timeout: float,
    now: datetime,
    helo: str,
    allow_private: bool = False,
    concurrency: int = 16,
    ocsp: OcspRequest = OcspRequest.AUTO,
    ca_file: str | None = None,
) -> list[DomainProbe]:
    """Probe every address of every deliverable host of ``statuses`` in the process's
    probe pool (one thread each: the TLS handshake is blocking I/O in OpenSSL), each
    probe bounded by ``timeout``."""
    pool = probe_pool(concurrency)
    futures = [((d, h), pool.submit(probe_host, port=port, timeout=timeout, now=now,
                                    helo=helo, allow_private=allow_private,
                                    ca_file=ca_file, **job))
               for d, h, job in _jobs(statuses, ocsp)]
    results: dict[tuple[int, int], list[ProbeResult]] = {}
    for key, future in futures:
        results.setdefault(key, []).append(future.result())
    return _assemble(statuses, results)


async def probe_within(status: DomainStatus, *, deadline: Deadline, port: int,
                       timeout: float, now: datetime, helo: str, allow_private: bool,
                       concurrency: int, ocsp: OcspRequest,
                       ca_file: str | None = None) -> DomainProbe:
    """Probe ``status``'s addresses in the process's pool, all of them together bounded by
    ``deadline``: an address whose probe has not ended by then (still queued behind
    other probes, or slow) counts as failed, and the answer comes in time anyway."""
    loop = asyncio.get_running_loop()
    pool = probe_pool(concurrency)
    end = deadline.sooner(timeout)
    jobs = _jobs([status], ocsp)
    futures = [loop.run_in_executor(pool, functools.partial(
        probe_host, port=port, timeout=timeout, now=now, helo=helo,
        allow_private=allow_private, deadline=end.at, ca_file=ca_file, **job))
        for _, _, job in jobs]
    if futures:
        await asyncio.wait(futures, timeout=end.remaining())
    results: dict[tuple[int, int], list[ProbeResult]] = {}
    for (d, h, job), future in zip(jobs, futures, strict=True):
        if future.done() and not future.cancelled() and future.exception() is None:
            result = future.result()
        else:
            future.cancel()  # a queued probe never starts; a running one ends by `end`
            result = _late(job, port, end)
        results.setdefault((d, h), []).append(result)
    return _assemble([status], results)[0]


def _late(job: dict[str, Any], port: int, end: Deadline) -> ProbeResult:
    host: HostStatus = job["host"]
    dane_host = bool(host.usable_records) and host.tlsa_state is HostState.DANE
    staple = job["request_staple"]
    return ProbeResult(
        address=job["address"], port=port, starttls=False, tls_version=None,
        dane=DaneVerdict.FAILED if dane_host else DaneVerdict.NOT_APPLICABLE, depth=None,
        ocsp=OcspState.ABSENT if staple else OcspState.NOT_REQUESTED,
        reason=f"no result within the deadline of {end.seconds:g} s",
        ocsp_reason="no TLS session" if staple else "no staple requested",
        failed_at=Stage.CONNECT, seconds=end.seconds)


def probe_domain(status: DomainStatus, **options: Any) -> DomainProbe:
    """One domain's probes; options as for :func:`probe_domains`."""
    return probe_domains([status], **options)[0]
