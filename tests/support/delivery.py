"""A world for delivery tests (real-peers.md recipe 3): a signed zone whose MX hosts all
point at one STARTTLS receiving server, TLSA records made at test time from that
server's key (or deliberately wrong), the DNSSEC bed resolving it, a DNS relay on port
53 of a spare 127.53.x.y address for MTAs that resolve through glibc, and a private
Postfix that delivers through it from a private mount namespace (its own resolv.conf
bind-mounted over /etc/resolv.conf; the host's stays untouched).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType

from tests.support.dnsbed import DnssecTestBed, Zone
from tests.support.dnsrelay import DnsRelay
from tests.support.milterproc import MilterProcess
from tests.support.postfix import PrivatePostfix, _accepts, wait_for
from tests.support.posttlsfinger import start_relay
from tests.support.probe_world import spki_sha256
from tests.support.receiver import Received, ReceivingServer

ZONE = "deliver.test"
# name -> whether it publishes TLSA: "match" (the receiver's key), "mismatch", or None.
DOMAINS: dict[str, str | None] = {
    "good": "match",
    "bad": "mismatch",
    "badreq": "mismatch",
    "plain": None,
    "opp": None,
    "defer": None,
    "reject": None,
}
# The MTA resolves through the bed, and its "smtp" port is the receiver's (a private
# /etc/services): port 25 may belong to a mail server running beside the tests.
MOUNT_AND_RUN = ('mount --bind "$1" /etc/resolv.conf && mount --bind "$2" /etc/services '
                 '&& shift 2 && exec "$@"')


def domain(name: str) -> str:
    return f"{name}.{ZONE}"


def message(marker: str) -> str:
    return (f"From: alice@client.test\r\nTo: someone\r\nSubject: {marker}\r\n"
            f"Message-ID: <{marker}@client.test>\r\n\r\nbody of {marker}\r\n")


def wait_for_line(read: Callable[[], str], fragments: Sequence[str], timeout: float,
                  what: str) -> str:
    """The first line of ``read()`` holding every fragment (waits for it)."""
    found: list[str] = []

    def present() -> bool:
        for line in read().splitlines():
            if all(f in line for f in fragments):
                found.append(line)
                return True
        return False

    wait_for(present, timeout, f"{what} line with {tuple(fragments)}", interval=0.05)
    return found[0]


class DeliveryWorld:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="dm-delivery-"))
        self.root.chmod(0o755)
        self.receiver: ReceivingServer | None = None
        self.bed: DnssecTestBed | None = None
        self.relay: DnsRelay | None = None

    def __enter__(self) -> DeliveryWorld:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        self.receiver = ReceivingServer.on_spare_address(self.root / "receiver")
        match = spki_sha256(self.receiver.issued.cert)
        records = []
        for name, tlsa in DOMAINS.items():
            records += [f"{name} MX 10 mx.{name}", f"mx.{name} A {self.receiver.address}"]
            if tlsa is not None:
                digest = match if tlsa == "match" else "00" * 32
                # Port 25 for danemilter (RFC 7672 asks there), the receiver's port for
                # the MTAs, which ask at the port they connect to.
                for port in (25, self.receiver.port):
                    records.append(f"_{port}._tcp.mx.{name} TLSA 3 1 1 {digest}")
        self.serve(Zone(ZONE, records=tuple(records)))

    def serve(self, zone: Zone) -> None:
        """``zone`` on the DNSSEC bed, and the MTAs' resolv.conf and "smtp" port pointed
        at it and at the receiver (which must be running)."""
        assert self.receiver is not None
        self.bed = DnssecTestBed([zone])
        self.bed.start()
        self.relay = start_relay((self.bed.resolver_address, self.bed.resolver_port))
        # trust-ad: glibc passes the AD bit on only then (Exim needs it; Postfix sets
        # RES_TRUSTAD itself).
        self.resolv_conf.write_text(f"nameserver {self.relay.listen}\n"
                                    "options edns0 trust-ad\n")
        services = Path("/etc/services").read_text()
        self.services.write_text(re.sub(r"(?m)^smtp\s+25/tcp.*$",
                                        f"smtp\t\t{self.receiver.port}/tcp\tmail", services))

    @property
    def resolv_conf(self) -> Path:
        return self.root / "resolv.conf"

    @property
    def services(self) -> Path:
        return self.root / "services"

    def in_namespace(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run in a private mount namespace that resolves through the bed."""
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", MOUNT_AND_RUN,
                "sh", str(self.resolv_conf), str(self.services), *argv]

    @contextlib.contextmanager
    def daemon(self, policy: str) -> Iterator[MilterProcess]:
        """``danemilter run`` resolving through the bed; ``policy``'s ``{address}`` and
        ``{port}`` are the bed's resolver. Its policy socket is ``root/policy.sock``."""
        assert self.bed is not None
        milter = MilterProcess(policy.format(address=self.bed.resolver_address,
                                             port=self.bed.resolver_port))
        milter.start()
        try:
            yield milter
        finally:
            assert milter.stop() == 0

    def received(self, recipient: str) -> Received:
        """The one message the receiver got for ``recipient`` (waits for it)."""
        assert self.receiver is not None
        receiver = self.receiver
        wait_for(lambda: bool(receiver.for_recipient(recipient)), 10,
                 f"the message for {recipient} at the receiver")
        [received] = receiver.for_recipient(recipient)
        return received

    def stop(self) -> None:
        if self.relay is not None:
            self.relay.stop()
        if self.bed is not None:
            self.bed.stop()
        if self.receiver is not None:
            self.receiver.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class DeliveringPostfix(PrivatePostfix):
    """A private Postfix whose smtpd has danemilter as its milter and whose smtp client
    delivers by MX with DANE through the world's DNS, asking danemilter's policy socket
    (``smtp_tls_policy_maps``)."""

    def __init__(self, world: DeliveryWorld, milter: str, policy_map: str,
                 extra: Sequence[str] = ()) -> None:
        settings = [
            "relayhost=",
            "smtp_dns_support_level=dnssec",
            "smtp_host_lookup=dns",
            "smtp_tls_security_level=dane",
            f"smtp_tls_policy_maps={policy_map}",
            "smtp_tls_loglevel=1",
            "smtp_address_preference=ipv4",
            "smtp_connect_timeout=5s",
            # Postfix 3.6+ knows smtp=25 itself (known_tcp_ports), not from /etc/services.
            f"smtp_tcp_port={world.receiver.port if world.receiver else 25}",
            "maximal_backoff_time=3600s",
            "minimal_backoff_time=3600s",
            *extra,
        ]
        super().__init__(milter, 0, settings)
        self.world = world

    def start(self) -> None:
        self.configure()
        # A main.cf younger than ~1 s makes every postfix command wait ~2 s.
        past = time.time() - 10
        os.utime(self.config / "main.cf", (past, past))
        self.process = subprocess.Popen(
            self.world.in_namespace(["postfix", "-c", str(self.config), "start-fg"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: _accepts(self.port), 20, "postfix smtpd")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for_log(self, *fragments: str, timeout: float = 30) -> str:
        return wait_for_line(self.log_text, fragments, timeout, "postfix log")
