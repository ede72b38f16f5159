"""A second unbound in front of the DNSSEC bed's nsd, with validation off.

``module-config: "iterator"``: it resolves the bed's zones as the validating one does,
but sets no AD bit and passes bogus data through: the resolver a self-check must
refuse. Started as a foreground child with its own configuration, ready when it
answers the top zone's SOA.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from types import TracebackType

import dns.rcode

from tests.support.dnsbed import LOOPBACK, DnsBedError, DnssecTestBed, _Daemon, dns_query
from tests.support.ports import free_port
from tests.support.postfix import wait_for

_READY_TIMEOUT = 15.0


class NonValidatingResolver:
    def __init__(self, bed: DnssecTestBed) -> None:
        self.bed = bed
        self.address = LOOPBACK
        self.port = 0
        self.directory = Path()
        self._daemon: _Daemon | None = None

    def __enter__(self) -> NonValidatingResolver:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="plain-unbound-"))
        self.port = free_port()
        conf = (self.bed.directory / "unbound.conf").read_text()
        conf = conf.replace('module-config: "validator iterator"', 'module-config: "iterator"')
        conf = re.sub(r"(?m)^  port: \d+$", f"  port: {self.port}", conf)
        conf = re.sub(r'(?m)^  directory: ".*"$', f'  directory: "{self.directory}"', conf)
        conf = re.sub(r"(?m)^  trust-anchor: .*$", "", conf)
        if 'module-config: "iterator"' not in conf or f"port: {self.port}" not in conf:
            raise DnsBedError("the bed's unbound.conf changed shape: cannot derive one")
        path = self.directory / "unbound.conf"
        path.write_text(conf)
        self._daemon = _Daemon("unbound (no validation)", ["unbound", "-d", "-c", str(path)],
                               self.directory / "unbound.log")
        self._daemon.start()
        wait_for(self._ready, _READY_TIMEOUT, "the non-validating unbound")

    def _ready(self) -> bool:
        assert self._daemon is not None
        if not self._daemon.running:
            raise DnsBedError(f"unbound exited: {self._daemon.log_tail()}")
        try:
            reply = dns_query(self.address, self.port, self.bed.top.name, "SOA", timeout=0.5)
        except Exception:
            return False
        return reply.rcode() == dns.rcode.NOERROR

    def stop(self) -> None:
        if self._daemon is not None:
            self._daemon.stop()
            self._daemon = None
