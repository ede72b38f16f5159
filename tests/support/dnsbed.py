"""A real DNSSEC test bed: nsd (authoritative) + unbound (validating) on loopback.

Zones are described declaratively (:class:`Zone`, :class:`PostSignEdit`) and built in a
temporary directory: one ECDSAP256SHA256 CSK per signed zone (``ldns-keygen -k``),
``ldns-signzone`` (NSEC, or NSEC3 with ``-n`` and RFC 9276 parameters), DS records
(``ldns-key2ds -n -2``) placed into the closest enclosing zone, which is signed after its
children.  The top zone (``test.`` by default) is the trust anchor of unbound.

* signed zone: DS in the parent, answers validate (AD bit);
* ``signed=False``: delegation without DS, answers are insecure (no AD bit);
* ``edits``: the signed zone file is changed after signing, so the edited RRset no longer
  matches its RRSIG and unbound answers SERVFAIL with extended DNS error 6 (DNSSEC Bogus).

Both daemons run in the foreground as children of this process (no daemonizing, chroot or
user switch), each in its own process group; readiness is decided by real DNS queries
with a bounded deadline, never by sleeping.

Usage::

    with DnssecTestBed(zones) as bed:
        answer = bed.query("mx.example.test", "A")
        ...  # resolver at bed.resolver_address:bed.resolver_port
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype

from tests.support.ports import free_port

__all__ = [
    "DnsBedError",
    "DnssecTestBed",
    "PostSignEdit",
    "Zone",
    "free_port",
]

LOOPBACK = "127.0.0.1"
NS_NAME = "ns.test."
DEFAULT_TTL = 300
NEGATIVE_TTL = 60
READY_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
REQUIRED_TOOLS = ("nsd", "unbound", "ldns-keygen", "ldns-signzone", "ldns-key2ds")


# nsd's main process does not reap its server child when it shuts down, and PID 1 of a
# container often reaps nothing: each stop would leave a zombie.  nsd therefore runs under
# this small parent, a child subreaper (prctl PR_SET_CHILD_SUBREAPER) that forwards
# SIGTERM/SIGINT to nsd and reaps every descendant before it exits.
_REAPER = r"""
import ctypes, os, signal, subprocess, sys
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)
child = subprocess.Popen(sys.argv[1:])
for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, lambda n, f: child.poll() is None and child.send_signal(n))
status = child.wait()
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
sys.exit(status if status >= 0 else 128 - status)
"""


class DnsBedError(RuntimeError):
    """The bed could not be built or a daemon did not come up."""


@dataclass(frozen=True)
class PostSignEdit:
    """Change one record of a signed zone after signing, so its RRset becomes bogus.

    ``owner`` is absolute (trailing dot) or relative to the zone ("@" for the apex);
    ``old`` and ``new`` are rdata in presentation format.  Exactly one record of the
    signed zone must match ``owner``/``rtype``/``old`` (rdata compared semantically).
    """

    owner: str
    rtype: str
    old: str
    new: str


@dataclass(frozen=True)
class Zone:
    """One zone of the bed.

    ``name``: zone name ("secure.test", trailing dot optional).
    ``records``: presentation-format lines; owners relative to the zone unless they end
    in a dot, ``$TTL`` is 300.  SOA and apex NS are added; delegations (NS, and DS for
    signed children) are added for every other zone of the bed directly below this one.
    ``signed``: sign and put a DS into the parent; False: unsigned delegation without DS.
    ``nsec3``: authenticated denial with NSEC3 (iterations 0, empty salt, no opt-out).
    ``edits``: changes applied to the signed zone text (requires ``signed``).
    """

    name: str
    records: tuple[str, ...] = ()
    signed: bool = True
    nsec3: bool = False
    edits: tuple[PostSignEdit, ...] = ()

    def __post_init__(self) -> None:
        if self.edits and not self.signed:
            raise ValueError(f"zone {self.name}: post-signing edits need a signed zone")
        if self.nsec3 and not self.signed:
            raise ValueError(f"zone {self.name}: nsec3 needs a signed zone")

    @property
    def origin(self) -> dns.name.Name:
        return dns.name.from_text(self.name)


class _Daemon:
    """A foreground child process in its own process group, output to a log file."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT)
        # nsd forks workers into the same (own) process group; make sure none outlive it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


class DnssecTestBed:
    """nsd serving ``zones`` and a validating unbound whose trust anchor is the top zone.

    Attributes after :meth:`start`: ``resolver_address``, ``resolver_port`` (unbound),
    ``nsd_port``, ``trust_anchor`` (DS of the top zone), ``startup_seconds`` (whole
    start, keys and signing included) and ``timings`` (per phase), ``directory``.
    """

    def __init__(
        self,
        zones: Iterable[Zone],
        *,
        ready_timeout: float = READY_TIMEOUT,
        keep_directory: bool = False,
    ) -> None:
        zone_list = list(zones)
        if not any(z.origin == dns.name.from_text("test") for z in zone_list):
            zone_list.insert(0, Zone("test"))
        names = [z.origin for z in zone_list]
        if len(set(names)) != len(names):
            raise ValueError("duplicate zone names")
        tops = [z for z in zone_list if self._parent_of(z.origin, names) is None]
        if len(tops) != 1 or not tops[0].signed:
            raise ValueError("the zones must form one tree under a signed top zone")
        self.zones: tuple[Zone, ...] = tuple(zone_list)
        self.top: Zone = tops[0]
        self.ready_timeout = ready_timeout
        self.keep_directory = keep_directory
        self.resolver_address = LOOPBACK
        self.resolver_port = 0
        self.nsd_port = 0
        self.trust_anchor = ""
        self.startup_seconds = 0.0
        self.timings: dict[str, float] = {}
        self.directory = Path()
        self._nsd: _Daemon | None = None
        self._served_files: dict[dns.name.Name, Path] = {}
        self._unbound: _Daemon | None = None

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self) -> DnssecTestBed:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
        if missing:
            raise DnsBedError(f"missing tools: {', '.join(missing)} (see notes/test-infra.md)")
        began = time.monotonic()
        self.directory = Path(tempfile.mkdtemp(prefix="dnsbed-"))
        try:
            self._build_zones()
            self.timings["zones"] = time.monotonic() - began
            self._start_nsd()
            self.timings["nsd"] = time.monotonic() - began - self.timings["zones"]
            self.resolver_port = free_port()
            self._write_unbound_conf()
            mark = time.monotonic()
            self.start_resolver()
            self.timings["unbound"] = time.monotonic() - mark
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began

    def stop(self) -> None:
        for daemon in (self._unbound, self._nsd):
            if daemon is not None:
                daemon.stop()
        self._unbound = self._nsd = None
        if self.directory != Path() and not self.keep_directory:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = Path()

    def stop_resolver(self) -> None:
        """Stop unbound only; nsd keeps running.  :meth:`start_resolver` reuses the port."""
        if self._unbound is not None:
            self._unbound.stop()

    def start_resolver(self) -> float:
        """(Re)start unbound on the same port and wait until it validates; returns seconds."""
        if self._unbound is not None and self._unbound.running:
            return 0.0
        began = time.monotonic()
        self._unbound = _Daemon(
            "unbound",
            ["unbound", "-d", "-c", str(self.directory / "unbound.conf")],
            self.directory / "unbound.log",
        )
        self._unbound.start()
        try:
            self._wait_ready(self._unbound, self.resolver_port, self._resolver_ready)
        except BaseException:
            self._unbound.stop()
            raise
        return time.monotonic() - began

    @property
    def resolver_running(self) -> bool:
        return self._unbound is not None and self._unbound.running

    def resolver_log(self) -> str:
        return self._unbound.log_tail(200) if self._unbound else ""

    def nsd_log(self) -> str:
        return self._nsd.log_tail(200) if self._nsd else ""

    # ------------------------------------------------------------------ queries
    def query(
        self,
        name: str,
        rdtype: str | dns.rdatatype.RdataType,
        *,
        server: str = "resolver",
        dnssec: bool = True,
        cd: bool = False,
        tcp: bool = False,
        timeout: float = 3.0,
    ) -> dns.message.Message:
        """One query to unbound (``server="resolver"``) or nsd (``server="nsd"``).

        With ``dnssec`` the DO bit is set (EDNS0, 1232-octet payload); ``cd`` sets
        Checking Disabled (unbound then returns bogus data instead of SERVFAIL).
        Raises dns.exception.Timeout when the server does not answer.
        """
        if server not in ("resolver", "nsd"):
            raise ValueError(f"unknown server {server!r}")
        port = self.resolver_port if server == "resolver" else self.nsd_port
        return dns_query(
            LOOPBACK, port, name, rdtype, dnssec=dnssec, cd=cd, tcp=tcp, timeout=timeout
        )

    def query_wire(
        self,
        name: str,
        rdtype: str | dns.rdatatype.RdataType,
        *,
        server: str = "resolver",
        timeout: float = 3.0,
    ) -> bytes:
        """The raw UDP reply (DO bit set) to one query, unparsed.

        For answers dnspython refuses to parse: it rejects a whole message that holds a
        TLSA record whose digest length does not fit its matching type (FormError).
        """
        if server not in ("resolver", "nsd"):
            raise ValueError(f"unknown server {server!r}")
        port = self.resolver_port if server == "resolver" else self.nsd_port
        request = dns.message.make_query(name, rdtype, use_edns=0, want_dnssec=True, payload=1232)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            sock.connect((LOOPBACK, port))
            query = request.to_wire()
            sock.send(query)
            deadline = time.monotonic() + timeout
            while True:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                try:
                    wire = sock.recv(65535)
                except TimeoutError:
                    raise dns.exception.Timeout(timeout=timeout) from None  # type: ignore[no-untyped-call]
                if wire[:2] == query[:2]:  # same query ID
                    return wire

    # ------------------------------------------------------------- zone building
    @staticmethod
    def _parent_of(name: dns.name.Name, names: Sequence[dns.name.Name]) -> dns.name.Name | None:
        candidates = [n for n in names if n != name and name.is_subdomain(n)]
        return max(candidates, key=len, default=None)

    def _children_of(self, zone: Zone) -> list[Zone]:
        names = [z.origin for z in self.zones]
        return [z for z in self.zones if self._parent_of(z.origin, names) == zone.origin]

    def _build_zones(self) -> None:
        # Deepest zones first: a parent needs the DS of its signed children.
        ds_records: dict[dns.name.Name, list[str]] = {}
        now = int(time.time())
        inception, expiration = now - 3600, now + 30 * 86400
        for zone in sorted(self.zones, key=lambda z: len(z.origin), reverse=True):
            origin = zone.origin.to_text()
            lines = [
                f"$ORIGIN {origin}",
                f"$TTL {DEFAULT_TTL}",
                f"@ IN SOA {NS_NAME} hostmaster.test. 1 3600 600 86400 {NEGATIVE_TTL}",
                f"@ IN NS {NS_NAME}",
            ]
            if zone.origin == dns.name.from_text("test"):
                lines.append(f"{NS_NAME} IN A {LOOPBACK}")
            lines.extend(zone.records)
            for child in self._children_of(zone):
                lines.append(f"{child.origin.to_text()} IN NS {NS_NAME}")
                lines.extend(ds_records.get(child.origin, []))
            unsigned = self.directory / f"{origin}zone"
            unsigned.write_text("\n".join(lines) + "\n")
            served = unsigned
            if zone.signed:
                key = self._run(
                    ["ldns-keygen", "-a", "ECDSAP256SHA256", "-k", "-r", "/dev/urandom", origin]
                ).strip()
                ds = self._run(["ldns-key2ds", "-n", "-2", f"{key}.key"]).strip()
                ds_records[zone.origin] = [ds]
                if zone is self.top:
                    self.trust_anchor = ds
                served = self.directory / f"{origin}zone.signed"
                argv = ["ldns-signzone", "-i", str(inception), "-e", str(expiration)]
                if zone.nsec3:
                    argv += ["-n", "-t", "0"]
                argv += ["-f", str(served), "-o", origin, str(unsigned), key]
                self._run(argv)
                if zone.edits:
                    served.write_text(_apply_edits(zone, served.read_text()))
            self._served_files[zone.origin] = served

    def _run(self, argv: Sequence[str]) -> str:
        done = subprocess.run(
            argv, cwd=self.directory, capture_output=True, text=True, timeout=30, check=False
        )
        if done.returncode != 0:
            raise DnsBedError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr}")
        return done.stdout

    # --------------------------------------------------------------------- nsd
    def _start_nsd(self) -> None:
        last_error: Exception | None = None
        nsd_conf = str(self.directory / "nsd.conf")
        for _ in range(3):  # a port picked free can be taken before nsd binds it
            self.nsd_port = free_port()
            self._write_nsd_conf()
            self._nsd = _Daemon(
                "nsd",
                [sys.executable, "-c", _REAPER, "nsd", "-d", "-c", nsd_conf],
                self.directory / "nsd.log",
            )
            self._nsd.start()
            try:
                self._wait_ready(self._nsd, self.nsd_port, self._nsd_ready)
                return
            except DnsBedError as exc:
                last_error = exc
                self._nsd.stop()
        raise DnsBedError(f"nsd did not start: {last_error}")

    def _write_nsd_conf(self) -> None:
        d = self.directory
        conf = [
            "server:",
            f"  ip-address: {LOOPBACK}",
            f"  port: {self.nsd_port}",
            "  do-ip6: no",
            "  server-count: 1",
            "  reuseport: no",
            '  username: ""',
            '  chroot: ""',
            '  database: ""',
            f'  zonesdir: "{d}"',
            f'  pidfile: "{d}/nsd.pid"',
            f'  xfrdfile: "{d}/xfrd.state"',
            f'  xfrdir: "{d}"',
            f'  zonelistfile: "{d}/zone.list"',
            "  verbosity: 1",
            "  hide-version: yes",
            # Response rate limiting (on by default) drops answers to the one resolver
            # that asks everything in a burst; unbound then retries after ~400 ms.
            "  rrl-ratelimit: 0",
            "remote-control:",
            "  control-enable: no",
        ]
        for zone in self.zones:
            conf += [
                "zone:",
                f'  name: "{zone.origin.to_text()}"',
                f'  zonefile: "{self._served_files[zone.origin]}"',
            ]
        (d / "nsd.conf").write_text("\n".join(conf) + "\n")

    def _nsd_ready(self, timeout: float) -> bool:
        # Ready when every zone is loaded: an authoritative SOA answer for each.
        for zone in self.zones:
            reply = dns_query(
                LOOPBACK, self.nsd_port, zone.name, "SOA", dnssec=False, timeout=timeout
            )
            if reply.rcode() != dns.rcode.NOERROR or not reply.flags & dns.flags.AA:
                return False
        return True

    # ------------------------------------------------------------------ unbound
    def _write_unbound_conf(self) -> None:
        d = self.directory
        conf = [
            "server:",
            f"  interface: {LOOPBACK}",
            f"  port: {self.resolver_port}",
            "  do-ip4: yes",
            "  do-ip6: no",
            "  do-udp: yes",
            "  do-tcp: yes",
            "  do-daemonize: no",
            '  username: ""',
            '  chroot: ""',
            f'  directory: "{d}"',
            '  pidfile: ""',
            '  logfile: ""',
            "  use-syslog: no",
            "  log-time-ascii: yes",
            "  verbosity: 1",
            "  val-log-level: 2",
            "  log-servfail: yes",
            "  num-threads: 1",
            "  so-reuseport: no",
            "  access-control: 127.0.0.0/8 allow",
            '  module-config: "validator iterator"',
            "  do-not-query-localhost: no",
            '  local-zone: "test." nodefault',
            f'  trust-anchor: "{self.trust_anchor}"',
            "  trust-anchor-signaling: no",
            "  root-key-sentinel: no",
            "  harden-dnssec-stripped: yes",
            "  val-permissive-mode: no",
            "  ede: yes",
            "  cache-max-ttl: 10",
            "  cache-max-negative-ttl: 5",
            "  val-bogus-ttl: 5",
            "  infra-host-ttl: 30",
            "  prefetch: no",
            "  serve-expired: no",
            "remote-control:",
            "  control-enable: no",
        ]
        for zone in self.zones:
            conf += [
                "stub-zone:",
                f'  name: "{zone.origin.to_text()}"',
                f"  stub-addr: {LOOPBACK}@{self.nsd_port}",
            ]
        (d / "unbound.conf").write_text("\n".join(conf) + "\n")

    def _resolver_ready(self, timeout: float) -> bool:
        # Ready when it validates: the top zone's SOA comes back with the AD bit.
        reply = dns_query(LOOPBACK, self.resolver_port, self.top.name, "SOA", timeout=timeout)
        return reply.rcode() == dns.rcode.NOERROR and bool(reply.flags & dns.flags.AD)

    # ----------------------------------------------------------------- readiness
    def _wait_ready(self, daemon: _Daemon, port: int, probe: Callable[[float], bool]) -> None:
        # Each attempt waits for its query's answer (up to a timeout that grows from 20 ms
        # to 0.5 s): a daemon not yet listening costs one short wait, never a busy loop.
        deadline = time.monotonic() + self.ready_timeout
        last: object = None
        attempt_timeout = 0.02
        while time.monotonic() < deadline:
            if not daemon.running:
                raise DnsBedError(
                    f"{daemon.name} exited during start-up (port {port}):\n{daemon.log_tail()}"
                )
            try:
                if probe(attempt_timeout):
                    return
                last = "not ready"
            except (OSError, dns.exception.DNSException) as exc:
                last = exc
            attempt_timeout = min(attempt_timeout * 2, 0.5)
        raise DnsBedError(
            f"{daemon.name} not ready after {self.ready_timeout:.0f} s ({last}):\n"
            f"{daemon.log_tail()}"
        )


def dns_query(
    address: str,
    port: int,
    name: str,
    rdtype: str | dns.rdatatype.RdataType,
    *,
    dnssec: bool = True,
    cd: bool = False,
    tcp: bool = False,
    timeout: float = 3.0,
) -> dns.message.Message:
    """A single recursive query (RD set) with EDNS0; DO bit when ``dnssec``, CD when ``cd``."""
    request = dns.message.make_query(
        name, rdtype, use_edns=0, want_dnssec=dnssec, payload=1232
    )
    if cd:
        request.flags |= dns.flags.CD
    if tcp:
        return dns.query.tcp(request, address, port=port, timeout=timeout)
    reply = dns.query.udp(request, address, port=port, timeout=timeout)
    if reply.flags & dns.flags.TC:
        reply = dns.query.tcp(request, address, port=port, timeout=timeout)
    return reply


IN = dns.rdataclass.IN


def _apply_edits(zone: Zone, text: str) -> str:
    lines = text.splitlines()
    for edit in zone.edits:
        owner = dns.name.from_text(edit.owner, origin=zone.origin)
        rtype = dns.rdatatype.from_text(edit.rtype)
        old, new = (
            dns.rdata.from_text(IN, rtype, text, origin=zone.origin, relativize=False)
            for text in (edit.old, edit.new)
        )
        hits = []
        for index, line in enumerate(lines):
            fields = line.split(None, 4)
            if len(fields) < 5 or line.lstrip().startswith(";"):
                continue
            if fields[3].upper() != edit.rtype.upper():
                continue
            if dns.name.from_text(fields[0]) != owner:
                continue
            rdata_text = fields[4].split(";", 1)[0]
            current = dns.rdata.from_text(IN, rtype, rdata_text)
            if current == old:
                hits.append(index)
        if len(hits) != 1:
            raise DnsBedError(
                f"zone {zone.name}: edit {edit} matched {len(hits)} records, expected 1"
            )
        fields = lines[hits[0]].split(None, 4)
        lines[hits[0]] = "\t".join([*fields[:4], new.to_text()])
    return "\n".join(lines) + "\n"
