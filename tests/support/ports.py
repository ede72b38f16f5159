"""Fresh loopback ports for test daemons."""

from __future__ import annotations

import socket

_ATTEMPTS = 50


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
