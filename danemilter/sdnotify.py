"""systemd's notify protocol (sd_notify(3)), written out: one datagram per message.

A datagram of ``KEY=VALUE`` lines to the unix socket named by ``$NOTIFY_SOCKET`` (a
path, or ``@name`` for the abstract namespace). Without that variable (not started by
systemd with Type=notify) every call does nothing. A failed send is logged once and
never raised: the daemon must not stop because its supervisor went away.

Our own and not the ``systemd`` Python bindings: the protocol is one ``sendto``, and the
bindings need libsystemd and a C build on every machine that runs the tests.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


def socket_address(env: Mapping[str, str]) -> str | None:
    """The socket address in ``$NOTIFY_SOCKET``, or None when there is none we can use."""
    name = env.get("NOTIFY_SOCKET", "")
    if name.startswith("@"):
        return "\0" + name[1:]  # abstract namespace (Linux)
    if name.startswith("/"):
        return name
    if name:
        log.warning("NOTIFY_SOCKET %r is neither a path nor @abstract: not notifying", name)
    return None


def watchdog_interval(env: Mapping[str, str], pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of ``$WATCHDOG_USEC`` (as sd_watchdog_enabled(3)
    advises), or None when no watchdog is asked of this process."""
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and owner != str(pid if pid is not None else os.getpid()):
        return None
    return int(usec) / 2 / 1_000_000


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.address = socket_address(os.environ if env is None else env)
        self._sock: socket.socket | None = None
        self._failed = False
        if self.address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, **fields: str | int) -> bool:
        """Send ``KEY=VALUE`` lines (keyword names upper-cased); True when sent."""
        if self._sock is None or self.address is None:
            return False
        message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        try:
            self._sock.sendto(message.encode(), socket.MSG_NOSIGNAL, self.address)
        except OSError as exc:
            if not self._failed:
                log.warning("cannot notify systemd at %s: %s", self.address.lstrip("\0"),
                            exc.strerror or exc)
                self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send(ready=1, status=status) if status else self.send(ready=1)

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd (>= 253) tell this reload from an older one.
        return self.send(reloading=1, monotonic_usec=time.monotonic_ns() // 1000)

    def stopping(self) -> bool:
        return self.send(stopping=1)

    def watchdog(self) -> bool:
        return self.send(watchdog=1)

    def status(self, text: str) -> bool:
        return self.send(status=text)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
