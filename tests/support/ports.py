"""Fresh loopback ports for test daemons."""

from __future__ import annotations

import os
import socket

_ATTEMPTS = 50


def unix_socket_accepts(path: str | os.PathLike[str]) -> bool:
    """Whether a daemon is accepting connections on the unix socket at ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(os.fspath(path))
        except OSError:
            return False
    return True


def tcp_accepts(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a daemon is accepting TCP connections on ``host``:``port``."""
    try:
        socket.create_connection((host, port), timeout=0.5).close()
    except OSError:
        return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel just handed out, free for both TCP and UDP at the time."""
    for _ in range(_ATTEMPTS):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError(f"no port on {host} free for both UDP and TCP")
