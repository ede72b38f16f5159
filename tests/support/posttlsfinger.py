"""Postfix's posttls-finger as an independent DANE peer, pointed at the DNSSEC test bed.

posttls-finger resolves through glibc, which reads /etc/resolv.conf and can only use port
53. Each run therefore happens in a private mount namespace (``unshare -m``) where a
generated resolv.conf (``nameserver <relay>``, ``options trust-ad`` so glibc passes the AD
bit on) is bind-mounted over /etc/resolv.conf; a :class:`DnsRelay` on ``<relay>:53``
forwards to the bed's unbound. The host's own resolver configuration is never touched.

With a ``domain:port`` destination posttls-finger looks up the MX, connects to each MX
host on ``port`` and asks for TLSA at ``_port._tcp.<host>`` (Postfix uses the
destination port in the TLSA owner), so fixture zones publish the same TLSA RRset at
``_25._tcp`` and ``_<port>._tcp``.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.dnsrelay import DnsRelay

_MOUNT_AND_RUN = 'mount --bind "$1" /etc/resolv.conf && shift && exec "$@"'


@dataclass(frozen=True)
class FingerResult:
    returncode: int
    output: str
    seconds: float

    @property
    def verdict(self) -> str:
        """verified | untrusted | no-tls (posttls-finger's own words, reduced)."""
        if "Verified TLS connection established" in self.output:
            return "verified"
        if "Untrusted TLS connection established" in self.output:
            return "untrusted"
        return "no-tls"


def start_relay(upstream: tuple[str, int]) -> DnsRelay:
    """A relay on port 53 of a random 127.53.x.y address not in use by another run."""
    last: OSError | None = None
    for _ in range(20):
        address = f"127.53.{random.randint(1, 254)}.{random.randint(1, 254)}"
        relay = DnsRelay(address, upstream)
        try:
            relay.start()
        except OSError as exc:
            last = exc
            continue
        return relay
    raise RuntimeError(f"no free 127.53.x.y:53 for the DNS relay: {last}")


class PosttlsFinger:
    def __init__(self, directory: Path, relay_address: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        (directory / "main.cf").write_text(
            "compatibility_level = 3.6\n"
            "smtp_dns_support_level = dnssec\n"
            "smtp_host_lookup = dns\n"
            "inet_protocols = ipv4\n"
            "maillog_file = /dev/stdout\n"
        )
        _cooled(directory / "main.cf")
        self.resolv_conf = directory / "resolv.conf"
        self.resolv_conf.write_text(f"nameserver {relay_address}\noptions trust-ad\n")

    def command(self, destination: str, *, level: str = "dane", timeout: int = 5,
                verbose: bool = False) -> list[str]:
        # -v: only verbose output says 'no usable TLSA records found, resorting to "secure"'.
        return [
            "unshare", "-m", "--propagation", "private", "sh", "-c", _MOUNT_AND_RUN, "sh",
            str(self.resolv_conf), "posttls-finger", "-c", *(["-v"] if verbose else []),
            "-t", str(timeout), "-T", str(timeout), "-l", level, destination,
        ]

    def env(self) -> dict[str, str]:
        return {**os.environ, "MAIL_CONFIG": str(self.directory)}

    def run(self, destination: str, *, level: str = "dane", timeout: int = 5,
            verbose: bool = False) -> FingerResult:
        return _finger(self.command(destination, level=level, timeout=timeout,
                                    verbose=verbose), self.env(), timeout)


def _cooled(main_cf: Path) -> None:
    # Postfix rereads a configuration file, 0.3 s at a time, until its mtime is over a
    # second older than the read began ("pausing to let ... cool down"): a run right
    # after the file was written would wait up to 2 s.
    old = time.time() - 60
    os.utime(main_cf, (old, old))


def _finger(argv: list[str], env: dict[str, str], timeout: int) -> FingerResult:
    began = time.monotonic()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc = subprocess.run(argv, env=env, capture_output=True, text=True,
                              timeout=timeout * 4 + 10, check=False)
        return FingerResult(proc.returncode, proc.stdout + proc.stderr,
                            time.monotonic() - began)
    return FingerResult(-1, "posttls-finger did not finish", time.monotonic() - began)


class DirectFinger:
    """posttls-finger to an ``[address]:port`` destination: no DNS lookup, so neither a
    namespace nor a relay. One instance serves many runs, each with its own trust store
    (``-F``, the whole store: tls_append_default_CA stays ``no``) and its own match names
    (posttls-finger(1): the arguments after the destination replace the level's default
    name checks)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        main_cf = directory / "main.cf"
        main_cf.write_text(
            "compatibility_level = 3.6\n"
            "inet_protocols = ipv4\n"
            "tls_append_default_CA = no\n"
            "maillog_file = /dev/stdout\n"
        )
        _cooled(main_cf)

    def env(self) -> dict[str, str]:
        return {**os.environ, "MAIL_CONFIG": str(self.directory)}

    def run(self, address: str, port: int, match: Sequence[str], *, ca_file: Path,
            level: str = "secure", timeout: int = 5) -> FingerResult:
        argv = ["posttls-finger", "-c", "-F", str(ca_file), "-t", str(timeout),
                "-T", str(timeout), "-l", level, f"[{address}]:{port}", *match]
        return _finger(argv, self.env(), timeout)

