"""Exim 4.96 for real delivering MTA-STS enforce domains (RFC 8461 §4.1, §4.2, §5) with
the shipped packaging/exim/ fragments and ``danemilter run``'s policy socket.

A signed zone publishes ``_mta-sts`` TXT records, a real HTTPS server (a test CA) serves
the policies, and every MX host is one STARTTLS receiver that picks its certificate by
SNI. The rule is ``dane: try, tls: authenticated``: RCPT accepts the enforce domains,
and what Exim's delivery does must keep that promise:

* an MX host the policy names, with a CA-issued certificate for its name: delivered,
  verified (``CV=yes``), with the host name as SNI;
* a certificate for another name, or from a CA Exim does not trust: deferred, never
  delivered, never bounced;
* two MX hosts, the preferred one outside the patterns (its name would match the
  pattern's regex if Exim's ``${extract}`` lost a backslash): delivered to the other;
* no MX host inside the patterns: deferred by the router, never bounced;
* a DANE domain whose policy names none of its hosts: delivered by DANE;
* an enforce domain and an opportunistic one sharing an MX host in one message: each
  delivered under its own policy (one domain per connection);
* a transport whose socketmap request goes unanswered (the routers got theirs), or
  whose socket is gone: PKIX still required (fails closed).

All MX hosts share one address, so ignoring a host can only have been by its name.
"""

from __future__ import annotations

import socket
import socketserver
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.delivery import DeliveryWorld, message
from tests.support.dnsbed import Zone
from tests.support.exim import PrivateExim, running
from tests.support.milterproc import MilterProcess
from tests.support.pki import Issued, make_ca, make_leaf
from tests.support.probe_world import spki_sha256
from tests.support.receiver import ReceivingServer
from tests.support.sts_server import Served, StsServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

ZONE = "eximsts.test"


def name(label: str) -> str:
    return f"{label}.{ZONE}"


def policy(*mx: str) -> bytes:
    lines = ["version: STSv1", "mode: enforce", *(f"mx: {m}" for m in mx), "max_age: 86400"]
    return ("\r\n".join(lines) + "\r\n").encode()


# domain label -> (its MX hosts as (preference, host label), its policy's mx patterns)
DOMAINS: dict[str, tuple[tuple[tuple[int, str], ...], tuple[str, ...]]] = {
    "good": (((10, "mx.good"),), (name("mx.good"),)),
    "name": (((10, "mx.name"),), (name("mx.name"),)),
    "untrusted": (((10, "mx.untrusted"),), (name("mx.untrusted"),)),
    # mx-two matches "^[^.]+.two.eximsts.test$", the regex without its backslashes.
    "two": (((5, "mx-two"), (10, "mx1.two")), (f"*.{name('two')}",)),
    "outside": (((10, "mx.outside"),), (f"*.{name('elsewhere')}",)),
    "dane": (((10, "mx.dane"),), (f"*.{name('elsewhere')}",)),
    "shared": (((10, "mx.shared"),), (name("mx.shared"),)),
    "opp": (((10, "mx.shared"),), ()),
}
# What each MX host's certificate is wrong about; absent: nothing (CA-issued, its name).
# mx.dane has none of its own: the receiver's default key, which its TLSA record names.
WRONG = {"mx.name": "name", "mx.untrusted": "issuer"}

POLICY = """\
deadline: 8
resolver: {{address: {address}, port: {port}}}
mta_sts: {{port: {sts_port}, ca_file: {sts_ca}}}
policy:
  default: {{dane: try, tls: authenticated, on_fail: defer}}
  domains:
    # accepted with a tag although no MX host matches: delivery must still hold to it
    outside.eximsts.test: {{dane: try, tls: authenticated, on_fail: tag}}
    opp.eximsts.test: {{dane: try, tls: opportunistic}}
"""


class StsDeliveryWorld(DeliveryWorld):
    """DeliveryWorld's receiver, bed and relay, with DOMAINS, their policies and
    per-SNI MX certificates."""

    def __init__(self) -> None:
        super().__init__()
        self.sts: StsServer | None = None

    def start(self) -> None:
        answers = {f"mta-sts.{name(label)}": Served(policy(*mx))
                   for label, (_, mx) in DOMAINS.items() if mx}
        self.sts = StsServer(answers)
        self.sts.start()
        stranger = make_ca("a CA Exim does not trust")
        hosts = sorted({host for hosts, _ in DOMAINS.values() for _, host in hosts})
        certificates: dict[str, list[Issued]] = {}
        for host in hosts:
            if host == "mx.dane":
                continue
            wrong = WRONG.get(host)
            leaf = make_leaf(stranger if wrong == "issuer" else self.sts.ca,
                             ["mx.someone-else.test" if wrong == "name" else name(host)])
            certificates[name(host)] = [leaf, stranger if wrong == "issuer" else self.sts.ca]
        self.receiver = ReceivingServer.on_spare_address(self.root / "receiver",
                                                         certificates)
        address = self.receiver.address
        records = [f"{host} A {address}" for host in hosts]
        for label, (mx_hosts, patterns) in DOMAINS.items():
            records += [f"{label} MX {pref} {host}" for pref, host in mx_hosts]
            if patterns:
                records += [f"mta-sts.{label} A 127.0.0.1",
                            f'_mta-sts.{label} TXT "v=STSv1; id={label}1"']
        digest = spki_sha256(self.receiver.issued.cert)
        records += [f"_{port}._tcp.mx.dane TLSA 3 1 1 {digest}"
                    for port in (25, self.receiver.port)]
        self.serve(Zone(ZONE, records=tuple(records)))

    def stop(self) -> None:
        if self.sts is not None:
            self.sts.stop()
        super().stop()


class RcptOnlySocket(socketserver.ThreadingUnixStreamServer):
    """A policy socket that passes Exim's ``rcpt`` lines on to the daemon's and closes
    every socketmap request unanswered: the routers get their answer, the transport
    gets none (the service died between the two)."""

    daemon_threads = True

    def __init__(self, path: Path, upstream: Path) -> None:
        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                request = self.rfile.read(2048)  # Exim shuts its side down after it
                if request.startswith(b"rcpt "):
                    self.wfile.write(ask(upstream, request))

        super().__init__(str(path), Handler)
        path.chmod(0o666)  # Exim's delivery runs as Debian-exim


def ask(path: Path, request: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(20)
        client.connect(str(path))
        client.sendall(request)
        client.shutdown(socket.SHUT_WR)
        answer = bytearray()
        while chunk := client.recv(4096):
            answer += chunk
        return bytes(answer)


@pytest.fixture(scope="module")
def world() -> Iterator[StsDeliveryWorld]:
    built = StsDeliveryWorld()
    with built:
        yield built


@pytest.fixture(scope="module")
def daemon(world: StsDeliveryWorld) -> Iterator[MilterProcess]:
    assert world.sts is not None
    text = POLICY.replace("{sts_port}", str(world.sts.port)).replace(
        "{sts_ca}", str(world.sts.ca_file))
    with world.daemon(text) as milter:
        yield milter


@pytest.fixture(scope="module")
def exim(world: StsDeliveryWorld, daemon: MilterProcess) -> Iterator[PrivateExim]:
    assert world.sts is not None
    with running(PrivateExim(daemon.root / "policy.sock", world.resolv_conf,
                             sts_ca=world.sts.ca_file)) as server:
        yield server


@pytest.fixture(scope="module")
def submitted(exim: PrivateExim) -> None:
    for label in ("good", "name", "untrusted", "two", "outside", "dane"):
        rcpts, data = exim.submit([f"u@{name(label)}"], message(label))
        assert data == 250, rcpts
    # One message, two domains on one MX host: Exim would batch them on one connection
    # under the first one's $domain.
    rcpts, data = exim.submit([f"u@{name('opp')}", f"u@{name('shared')}"], message("shared"))
    assert data == 250, rcpts


def test_enforce_domain_delivered_with_pkix_to_its_mx(
        world: StsDeliveryWorld, exim: PrivateExim, submitted: None) -> None:
    line = exim.wait_for_log(f"=> u@{name('good')}")
    assert "R=danemilter_sts T=danemilter_smtp" in line, line
    assert f"H={name('mx.good')}" in line, line
    assert "CV=yes" in line, line
    received = world.received(f"u@{name('good')}")
    assert received.tls
    assert received.sni == name("mx.good")


@pytest.mark.parametrize("label", ["name", "untrusted"])
def test_enforce_domain_with_a_failing_certificate_is_deferred(
        world: StsDeliveryWorld, exim: PrivateExim, submitted: None, label: str) -> None:
    line = exim.wait_for_log(f"== u@{name(label)}")
    assert "R=danemilter_sts T=danemilter_smtp defer" in line, line
    assert "certificate verification failed" in line, line
    assert world.receiver is not None
    assert world.receiver.for_recipient(f"u@{name(label)}") == []
    assert f"** u@{name(label)}" not in exim.mainlog()
    assert f"=> u@{name(label)}" not in exim.mainlog()


def test_only_mx_hosts_the_policy_names_are_used(
        world: StsDeliveryWorld, exim: PrivateExim, submitted: None) -> None:
    line = exim.wait_for_log(f"=> u@{name('two')}")
    assert f"H={name('mx1.two')}" in line, line
    assert "CV=yes" in line, line
    received = world.received(f"u@{name('two')}")
    assert received.sni == name("mx1.two")
    assert name("mx-two") not in exim.mainlog()


def test_no_mx_host_inside_the_patterns_is_deferred_not_bounced(
        world: StsDeliveryWorld, exim: PrivateExim, submitted: None) -> None:
    line = exim.wait_for_log(f"== u@{name('outside')}")
    assert "R=danemilter_sts_defer defer" in line, line
    assert f"no MX host of {name('outside')} matches its MTA-STS policy" in line, line
    assert f"** u@{name('outside')}" not in exim.mainlog()
    assert world.receiver is not None
    assert world.receiver.for_recipient(f"u@{name('outside')}") == []


def test_dane_domain_is_delivered_by_dane_whatever_its_policy(
        world: StsDeliveryWorld, exim: PrivateExim, submitted: None) -> None:
    line = exim.wait_for_log(f"=> u@{name('dane')}")
    assert "CV=dane" in line, line
    assert "R=danemilter_sts" not in line, line
    assert world.received(f"u@{name('dane')}").tls


def test_domains_sharing_an_mx_host_keep_their_own_policies(
        world: StsDeliveryWorld, exim: PrivateExim, submitted: None) -> None:
    secure = exim.wait_for_log(f"=> u@{name('shared')}")
    opportunistic = exim.wait_for_log(f"=> u@{name('opp')}")
    assert "CV=yes" in secure, secure
    # Not verified against the test CA: opp's delivery uses the system's roots.
    assert "CV=no" in opportunistic, opportunistic
    assert world.received(f"u@{name('shared')}").sni == name("mx.shared")



def test_transport_without_an_answer_still_requires_pkix(
        world: StsDeliveryWorld, daemon: MilterProcess, submitted: None) -> None:
    # The routers hear "tls=secure"; the transport's socketmap request is closed
    # unanswered. Fail open would deliver to the host with the wrong certificate.
    assert world.sts is not None
    proxy = RcptOnlySocket(world.root / "rcpt-only.sock", daemon.root / "policy.sock")
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        with running(PrivateExim(world.root / "rcpt-only.sock", world.resolv_conf,
                                 sts_ca=world.sts.ca_file)) as mute:
            rcpts, data = mute.submit([f"v@{name('name')}"], message("mute"))
            assert data == 250, rcpts
            line = mute.wait_for_log(f"== v@{name('name')}")
        assert "R=danemilter_sts T=danemilter_smtp defer" in line, line
        assert "certificate verification failed" in line, line
        assert world.receiver is not None
        assert world.receiver.for_recipient(f"v@{name('name')}") == []
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join(5)

def test_transport_condition_fails_closed_when_the_socket_is_missing(
        world: StsDeliveryWorld) -> None:
    # The shipped macros, as Exim expands them, with no socket at all: PKIX is required.
    down = PrivateExim(world.root / "nobody-here.sock", world.resolv_conf)
    down.configure()
    try:
        done = subprocess.run(down.command("-be", "${if DANEMILTER_PKIX {pkix}{none}}"),
                              capture_output=True, text=True, timeout=30, check=False)
        assert done.stdout.strip() == "pkix", done.stdout + done.stderr
    finally:
        down.stop()
