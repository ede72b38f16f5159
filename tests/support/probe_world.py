"""Fixture domains with real STARTTLS servers behind the DNSSEC test bed.

Each :class:`Site` is one domain ``<label>.<zone>`` whose MX hosts point at loopback
addresses (127.0.4.x by default) where :class:`SmtpTlsServer` instances listen, all on
one fresh port (MX targets carry no port: ``verify --port N`` gives it). Certificates
and OCSP responses are generated at build time relative to the real clock, TLSA records
are computed from them, and only then is the bed started.

TLSA RRsets are published at ``_25._tcp.<mx>`` (what danemilter asks) and at
``_<port>._tcp.<mx>`` (what posttls-finger asks for a ``domain:port`` destination).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp

from tests.support import ocsp_pki, pki
from tests.support.dnsbed import DnssecTestBed, Zone
from tests.support.ports import free_port
from tests.support.tlsserver import SmtpTlsServer

DER = serialization.Encoding.DER


def spki_sha256(cert: x509.Certificate) -> str:
    spki = cert.public_key().public_bytes(DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def cert_sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(DER)).hexdigest()


@dataclass
class Server:
    """What one MX address serves; ``None`` chain with ``listen=False``: nothing listens."""

    chain: Sequence[x509.Certificate] = ()
    key: Any = None
    staple: bytes | None = None
    starttls: bool = True
    silent: bool = False
    stall_tls: bool = False
    listen: bool = True


@dataclass
class Host:
    name: str  # relative to the zone, e.g. "mx.ee"
    server: Server
    tlsa: tuple[str, ...]
    preference: int = 10
    address: str = ""  # assigned by the world


@dataclass
class Site:
    label: str
    hosts: list[Host]
    expect: dict[str, Any] = field(default_factory=dict)


class Pki:
    """One CA for DANE-TA sites (it also signs OCSP responses) and helpers."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)
        self.ca = pki.make_ca("danemilter probe test CA")
        self.ca_party = ocsp_pki.Party(self.ca.cert, self.ca.key)

    def ee(self, names: Sequence[str], *, expired: bool = False) -> pki.Issued:
        if expired:
            return pki.make_leaf(None, names, self.now - timedelta(days=60),
                                 self.now - timedelta(days=30))
        return pki.make_leaf(None, names)

    def ta_leaf(self, names: Sequence[str], *, expired: bool = False,
                ocsp_url: str | None = None) -> pki.Issued:
        if expired:
            return pki.make_leaf(self.ca, names, self.now - timedelta(days=60),
                                 self.now - timedelta(days=30), ocsp_url=ocsp_url)
        return pki.make_leaf(self.ca, names, ocsp_url=ocsp_url)

    def ta_record(self) -> str:
        return f"2 0 1 {cert_sha256(self.ca.cert)}"

    def ta_full_record(self) -> str:
        return f"2 0 0 {self.ca.cert.public_bytes(DER).hex()}"

    def staple(self, leaf: x509.Certificate, kind: str) -> bytes:
        now = ocsp_pki.utcnow()
        day = ocsp_pki.DAY
        if kind == "good":
            spec = ocsp_pki.SingleSpec(leaf, self.ca.cert, next_update=now + day)
            return ocsp_pki.build_response(spec, self.ca_party)
        if kind == "revoked":
            spec = ocsp_pki.SingleSpec(leaf, self.ca.cert, status=ocsp.OCSPCertStatus.REVOKED,
                                       next_update=now + day,
                                       revocation_reason=x509.ReasonFlags.key_compromise)
            return ocsp_pki.build_response(spec, self.ca_party)
        if kind == "stale":
            spec = ocsp_pki.SingleSpec(leaf, self.ca.cert, this_update=now - 10 * day,
                                       next_update=now - day)
            return ocsp_pki.build_response(spec, self.ca_party)
        if kind == "delegated-short":
            responder = ocsp_pki.issue(self.ca_party, now, "short-lived OCSP responder",
                                       ocsp_signing=True, not_after=now + day)
            spec = ocsp_pki.SingleSpec(leaf, self.ca.cert, next_update=now + 3 * day)
            return ocsp_pki.build_response(spec, responder, include=(responder.cert,))
        if kind == "badsig":
            return ocsp_pki.corrupt_signature(self.staple(leaf, "good"))
        raise ValueError(kind)


class World:
    """The bed plus one server per MX address; use as a context manager."""

    def __init__(self, sites: Sequence[Site], zone: str = "probe.test",
                 network: str = "127.0.4", first_octet: int = 1,
                 extra_records: Sequence[str] = ()) -> None:
        self.sites = list(sites)
        self.extra_records = list(extra_records)
        self.zone = zone
        self.port = free_port()
        self.servers: dict[str, SmtpTlsServer] = {}
        self.bed: DnssecTestBed | None = None
        octet = first_octet
        for site in self.sites:
            for host in site.hosts:
                third, fourth = divmod(octet, 250)
                base, _, net3 = network.rpartition(".")
                host.address = f"{base}.{int(net3) + third}.{fourth + 1}"
                octet += 1

    def domain(self, site: Site) -> str:
        return f"{site.label}.{self.zone}"

    def fqdn(self, host: Host) -> str:
        return f"{host.name}.{self.zone}"

    def zone_records(self) -> list[str]:
        lines: list[str] = list(self.extra_records)
        for site in self.sites:
            for host in site.hosts:
                lines.append(f"{site.label} MX {host.preference} {host.name}")
                lines.append(f"{host.name} A {host.address}")
                for record in host.tlsa:
                    lines.append(f"_25._tcp.{host.name} TLSA {record}")
                    lines.append(f"_{self.port}._tcp.{host.name} TLSA {record}")
        return lines

    def __enter__(self) -> World:
        with contextlib.ExitStack() as stack:
            for site in self.sites:
                for host in site.hosts:
                    spec = host.server
                    if not spec.listen:
                        continue
                    server = SmtpTlsServer(
                        host.address, self.port, chain=spec.chain, key=spec.key,
                        staple=spec.staple, starttls=spec.starttls, silent=spec.silent,
                        stall_tls=spec.stall_tls, name=self.fqdn(host),
                    )
                    server.start()
                    stack.callback(server.stop)
                    self.servers[host.address] = server
            self.bed = DnssecTestBed([Zone(self.zone, records=tuple(self.zone_records()))])
            self.bed.start()
            stack.callback(self.bed.stop)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    @property
    def resolver(self) -> str:
        assert self.bed is not None
        return f"{self.bed.resolver_address}:{self.bed.resolver_port}"


def retry_port(build: Callable[[], World], attempts: int = 5) -> Iterator[World]:
    """Enter a freshly built world, trying another port when one is taken meanwhile."""
    last: OSError | None = None
    for _ in range(attempts):
        world = build()
        try:
            world.__enter__()
        except OSError as exc:
            last = exc
            continue
        try:
            yield world
        finally:
            world.__exit__(None, None, None)
        return
    raise RuntimeError(f"could not bind the probe servers: {last}")
