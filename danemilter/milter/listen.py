"""Listening sockets from a ``listen`` spec: ``unix:/path``, ``inet:PORT@HOST``,
``inet6:PORT@HOST`` (libmilter's syntax, as in Postfix's and Sendmail's docs), or
``systemd`` (socket activation, sd_listen_fds(3)).

A unix socket that a live process still serves is never taken over: a second daemon
on the same path is refused with the PID of the first (SO_PEERCRED) where the kernel
tells it. A failed bind says why in one line.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import socket
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from danemilter.config.model import SYSTEMD_LISTEN
from danemilter.errors import ListenError

_BACKLOG = 1024
_SD_LISTEN_FDS_START = 3


@dataclass(frozen=True, slots=True)
class ListenSpec:
    kind: str  # "unix", "inet", "inet6" or "systemd"
    path: Path | None = None
    host: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, spec: str) -> ListenSpec:
        if spec == SYSTEMD_LISTEN:
            return cls("systemd")
        scheme, _, rest = spec.partition(":")
        if scheme in ("unix", "local"):
            if not rest.startswith("/"):
                raise ListenError(f"listen {spec!r}: a unix socket needs an absolute path")
            return cls("unix", path=Path(rest))
        if scheme in ("inet", "inet6"):
            port_text, _, host = rest.partition("@")
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise ListenError(f"listen {spec!r}: bad port {port_text!r}")
            default = "::" if scheme == "inet6" else "0.0.0.0"
            return cls(scheme, host=(host.strip("[]") or default), port=int(port_text))
        raise ListenError(f"listen {spec!r}: not unix:/PATH, inet:PORT@HOST, "
                          "inet6:PORT@HOST or systemd")


def unix_socket_owner(path: Path) -> int | None:
    """The PID serving the unix socket at ``path``; 0 when one serves it but the kernel
    does not say who; None when nobody does (no socket, or a stale one)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return None
        try:
            creds = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                     struct.calcsize("3i"))
            pid: int = struct.unpack("3i", creds)[0]
        except OSError:
            return 0
        return pid


def claim_unix_path(path: Path) -> None:
    """Make ``path`` free for our socket, or say why it cannot be."""
    if not path.parent.is_dir():
        raise ListenError(f"socket directory {path.parent} does not exist")
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ListenError(f"{path} exists and is not a socket; not replacing it")
    owner = unix_socket_owner(path)
    if owner is not None:
        who = f"PID {owner}" if owner else "another process"
        raise ListenError(f"{path} is already served by {who}")
    try:
        path.unlink()  # stale: left by a daemon that died
    except OSError as exc:
        raise ListenError(f"cannot remove the stale socket {path}: {exc.strerror}") from None


def _bind_error(what: str, exc: OSError) -> ListenError:
    reasons = {errno.EADDRINUSE: "address in use", errno.EACCES: "permission denied",
               errno.EADDRNOTAVAIL: "address not available on this host",
               errno.ENOENT: "no such directory"}
    why = reasons.get(exc.errno or 0) or exc.strerror or str(exc)
    return ListenError(f"cannot listen on {what}: {why}")


def open_listener(spec: str, mode: int | None = None, group: str | None = None, *,
                  systemd: SystemdSockets | None = None) -> socket.socket:
    """A listening socket for ``spec`` (systemd: the milter's socket among those systemd
    passed, ``systemd`` when they were taken already)."""
    parsed = ListenSpec.parse(spec)
    if parsed.kind == "systemd":
        return (systemd or SystemdSockets.take()).milter()
    if parsed.kind == "unix":
        assert parsed.path is not None
        return _unix_socket(parsed.path, mode, group)
    assert parsed.host is not None and parsed.port is not None
    family = socket.AF_INET6 if parsed.kind == "inet6" else socket.AF_INET
    try:
        infos = socket.getaddrinfo(parsed.host, parsed.port, family, socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {spec}: {exc.strerror}") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # Restarts must not wait out TIME_WAIT; two live daemons still cannot share it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(infos[0][4])
        sock.listen(_BACKLOG)
    except OSError as exc:
        sock.close()
        raise _bind_error(spec, exc) from None
    sock.setblocking(False)
    return sock


def socket_gid(group: str | None) -> int | None:
    """The group id of ``socket_group`` (None: leave the group alone)."""
    if group is None:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ListenError(f"socket_group {group!r} does not exist") from None


def refuse_systemd_for_libmilter() -> None:
    """``transport: libmilter`` with ``listen: systemd``: always a ListenError, saying why.

    libmilter binds its own socket and cannot take one passed by systemd; a TCP socket
    would moreover expose it to every peer that can connect (docs/security.md), so the
    reason names the socket systemd passed.
    """
    passed = SystemdSockets.take().milter()  # systemd passed none: that is the line
    family = passed.family
    with contextlib.suppress(OSError):
        passed.detach()  # fd 3 stays systemd's
    if family != socket.AF_UNIX:
        raise ListenError("listen: systemd passed a TCP socket: transport: libmilter must "
                          "only be reachable through a unix socket (libmilter trusts its "
                          "peer; see docs/security.md)")
    raise ListenError("listen: systemd needs transport: asyncio (libmilter binds its own "
                      "socket: give it listen: unix:/PATH)")


def _unix_socket(path: Path, mode: int | None, group: str | None) -> socket.socket:
    gid = socket_gid(group)
    claim_unix_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The mode is set through the umask so the socket never exists with a wider one.
    old = os.umask(0o777 & ~mode) if mode is not None else None
    try:
        sock.bind(str(path))
        if gid is not None:
            os.chown(path, -1, gid)
        sock.listen(_BACKLOG)
    except OSError as exc:
        sock.close()
        raise _bind_error(f"unix:{path}", exc) from None
    finally:
        if old is not None:
            os.umask(old)
    sock.setblocking(False)
    return sock


# FileDescriptorName= of the shipped units (danemilter.socket, danemilter-policy.socket).
MILTER_FD_NAME = "milter"
POLICY_FD_NAME = "policy"


@dataclass(frozen=True, slots=True)
class SystemdSockets:
    """The listening sockets systemd passed (sd_listen_fds(3)), by FileDescriptorName."""

    sockets: tuple[tuple[str, socket.socket], ...]

    @classmethod
    def take(cls, setting: str = "listen") -> SystemdSockets:
        """The passed sockets; the environment that named them is cleared (not for our
        children). ListenError (naming ``setting``, which asked for them) when systemd
        passed none, or one that is not a stream."""
        pid, count = os.environ.get("LISTEN_PID", ""), os.environ.get("LISTEN_FDS", "")
        if pid != str(os.getpid()) or not count.isdigit() or int(count) < 1:
            raise ListenError(f"{setting}: systemd, but systemd passed no socket "
                              "(LISTEN_PID/LISTEN_FDS unset or for another process)")
        names = os.environ.get("LISTEN_FDNAMES", "").split(":")
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(name, None)
        passed: list[tuple[str, socket.socket]] = []
        for index in range(int(count)):
            sock = socket.socket(fileno=_SD_LISTEN_FDS_START + index)
            if sock.type != socket.SOCK_STREAM:
                for _, taken in [*passed, ("", sock)]:
                    with contextlib.suppress(OSError):
                        taken.detach()  # the descriptors stay systemd's
                raise ListenError(f"{setting}: systemd passed a socket that is not a "
                                  "stream socket")
            sock.setblocking(False)
            passed.append((names[index] if index < len(names) else "", sock))
        return cls(tuple(passed))

    def milter(self) -> socket.socket:
        """The milter's: the one socket passed, or the one named ``milter``."""
        named = dict(self.sockets)
        if len(self.sockets) == 1 and self.sockets[0][0] != POLICY_FD_NAME:
            return self.sockets[0][1]
        if MILTER_FD_NAME in named:
            return named[MILTER_FD_NAME]
        raise ListenError(f"listen: systemd passed {len(self.sockets)} socket(s) "
                          f"({self._names()}) and none is the milter's "
                          f"(FileDescriptorName={MILTER_FD_NAME})")

    def policy(self, *, required: bool) -> socket.socket | None:
        """The policy socket's, named ``policy``; None when systemd passed none and the
        configuration did not ask for it (ListenError when it did; the caller names the
        setting)."""
        found = dict(self.sockets).get(POLICY_FD_NAME)
        if found is None and required:
            raise ListenError(f"systemd passed no socket named {POLICY_FD_NAME} "
                              f"({self._names()}): enable danemilter-policy.socket")
        return found

    def _names(self) -> str:
        return ", ".join(name or "unnamed" for name, _ in self.sockets)
