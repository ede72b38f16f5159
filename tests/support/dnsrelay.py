"""A DNS relay on port 53 of a spare loopback address, forwarding to the test bed's resolver.

glibc's stub resolver (used by Postfix's posttls-finger) can only talk to port 53, and
the bed's unbound listens on a random port. The relay passes UDP datagrams and TCP
messages through unchanged, so the AD bit of the validating resolver reaches the client.
Binding port 53 needs root (the test machines run as root).
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
from types import TracebackType

_TIMEOUT = 5.0


class DnsRelay:
    def __init__(self, listen: str, upstream: tuple[str, int], port: int = 53) -> None:
        self.listen = listen
        self.port = port
        self.upstream = upstream
        self._stop = threading.Event()
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> DnsRelay:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            udp.bind((self.listen, self.port))
            tcp.bind((self.listen, self.port))
            tcp.listen(32)
        except OSError:
            udp.close()
            tcp.close()
            raise
        self._udp, self._tcp = udp, tcp
        thread = threading.Thread(target=self._loop, daemon=True, name="dnsrelay")
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        for sock in (self._udp, self._tcp):
            if sock is not None:
                sock.close()

    def _loop(self) -> None:
        assert self._udp is not None and self._tcp is not None
        while not self._stop.is_set():
            ready, _, _ = select.select([self._udp, self._tcp], [], [], 0.1)
            for sock in ready:
                if sock is self._udp:
                    with contextlib.suppress(OSError):
                        query, client = self._udp.recvfrom(65535)
                        threading.Thread(target=self._udp_one, args=(query, client),
                                         daemon=True).start()
                else:
                    with contextlib.suppress(OSError):
                        conn, _ = self._tcp.accept()
                        threading.Thread(target=self._tcp_one, args=(conn,),
                                         daemon=True).start()

    def _udp_one(self, query: bytes, client: tuple[str, int]) -> None:
        assert self._udp is not None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
            up.settimeout(_TIMEOUT)
            try:
                up.sendto(query, self.upstream)
                answer = up.recv(65535)
                self._udp.sendto(answer, client)
            except OSError:
                return

    def _tcp_one(self, conn: socket.socket) -> None:
        with conn, socket.create_connection(self.upstream, timeout=_TIMEOUT) as up:
            conn.settimeout(_TIMEOUT)
            try:
                while True:
                    message = _read_message(conn)
                    if message is None:
                        return
                    up.sendall(struct.pack("!H", len(message)) + message)
                    answer = _read_message(up)
                    if answer is None:
                        return
                    conn.sendall(struct.pack("!H", len(answer)) + answer)
            except OSError:
                return


def _read_exactly(sock: socket.socket, count: int) -> bytes | None:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _read_message(sock: socket.socket) -> bytes | None:
    header = _read_exactly(sock, 2)
    if header is None:
        return None
    return _read_exactly(sock, struct.unpack("!H", header)[0])
