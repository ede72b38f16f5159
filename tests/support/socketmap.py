"""A Postfix-style socketmap client (socketmap_table(5)) and an Exim-style line client for
the policy socket, speaking the wire bytes themselves (no code of danemilter's)."""

from __future__ import annotations

import socket
from pathlib import Path
from types import TracebackType

_TIMEOUT = 10.0


class SocketmapClient:
    """One connection, many requests, as Postfix's dict_sockmap keeps it."""

    def __init__(self, path: Path | str, timeout: float = _TIMEOUT) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self._buffer = b""

    def __enter__(self) -> SocketmapClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def query(self, key: str, name: str = "dane") -> str:
        request = f"{name} {key}".encode()
        self.send(b"%d:%s," % (len(request), request))
        return self.reply()

    def reply(self) -> str:
        while True:
            length, colon, rest = self._buffer.partition(b":")
            if colon:
                if not length.isdigit():
                    raise AssertionError(f"bad reply {self._buffer[:60]!r}")
                size = int(length)
                if len(rest) > size:
                    if rest[size:size + 1] != b",":
                        raise AssertionError(f"reply not ended by ',': {self._buffer[:80]!r}")
                    self._buffer = rest[size + 1:]
                    return rest[:size].decode()
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed by the server ({self._buffer[:60]!r} pending)")
            self._buffer += chunk

    def closed_by_server(self) -> bool:
        """Whether the server closes this connection (EOF) without sending anything."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


def line_query(path: Path | str, line: bytes, timeout: float = _TIMEOUT) -> bytes:
    """What Exim's ${readsocket} does: connect, write, half-close, read until EOF."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(line)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received
