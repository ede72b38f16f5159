"""The resolver layer against misbehaving peers on loopback: it reports, it never crashes."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import dns.flags
import dns.message
import dns.rdatatype
import dns.rrset
import pytest

from danemilter.resolver import Answer, Resolver, ResolverSettings, Security

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

Reply = Callable[[dns.message.Message, bytes], bytes | None]


def _answer(query: dns.message.Message, tc: bool = False) -> bytes:
    msg = dns.message.make_response(query)
    msg.flags |= dns.flags.AD
    if tc:
        msg.flags |= dns.flags.TC
    else:
        msg.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A", "127.0.0.9"))
    return msg.to_wire()


class Peer:
    """A UDP+TCP DNS peer on a fresh loopback port whose replies a test chooses."""

    def __init__(self, udp_reply: Reply, tcp_reply: Reply | None = None) -> None:
        self.udp, self.tcp = self._bind_pair()
        self.port = self.udp.getsockname()[1]
        self.tcp.listen()
        self.udp_queries = 0
        self.tcp_queries = 0
        self._udp_reply = udp_reply
        self._tcp_reply = tcp_reply
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._serve_udp, daemon=True),
                         threading.Thread(target=self._serve_tcp, daemon=True)]

    @staticmethod
    def _bind_pair(attempts: int = 50) -> tuple[socket.socket, socket.socket]:
        """UDP and TCP sockets on the same fresh port: the kernel's UDP port may be taken
        for TCP on a busy machine, so another port is tried until both bind."""
        for _ in range(attempts):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind(("127.0.0.1", 0))
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind(("127.0.0.1", udp.getsockname()[1]))
            except OSError:
                udp.close()
                tcp.close()
                continue
            return udp, tcp
        raise RuntimeError("no loopback port free for both UDP and TCP")

    def _serve_udp(self) -> None:
        self.udp.settimeout(0.1)
        while not self._stop.is_set():
            try:
                wire, peer = self.udp.recvfrom(65535)
            except TimeoutError:
                continue
            self.udp_queries += 1
            reply = self._udp_reply(dns.message.from_wire(wire), wire)
            if reply is not None:
                self.udp.sendto(reply, peer)

    def _serve_tcp(self) -> None:
        self.tcp.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.tcp.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                length = struct.unpack("!H", conn.recv(2))[0]
                wire = b""
                while len(wire) < length:
                    wire += conn.recv(length - len(wire))
                self.tcp_queries += 1
                if self._tcp_reply is not None:
                    reply = self._tcp_reply(dns.message.from_wire(wire), wire)
                    if reply is not None:
                        conn.sendall(struct.pack("!H", len(reply)) + reply)


@contextmanager
def peer(udp_reply: Reply, tcp_reply: Reply | None = None) -> Iterator[Peer]:
    server = Peer(udp_reply, tcp_reply)
    for thread in server._threads:
        thread.start()
    try:
        yield server
    finally:
        server._stop.set()
        for thread in server._threads:
            thread.join()
        server.udp.close()
        server.tcp.close()


def ask(port: int, timeout: float = 1.0, count: int = 1) -> tuple[list[Answer], Resolver]:
    resolver = Resolver(ResolverSettings("127.0.0.1", port, timeout))

    async def run() -> list[Answer]:
        return list(await asyncio.gather(
            *(resolver.query("mx.example.test", dns.rdatatype.A) for _ in range(count))))

    return asyncio.run(run()), resolver


def test_garbage_reply_is_indeterminate() -> None:
    with peer(lambda q, wire: wire[:2] + b"\xff" * 9) as server:
        (answer,), _ = ask(server.port)
    assert answer.security is Security.INDETERMINATE
    assert "bad answer" in answer.reason


def test_silent_peer_times_out_within_budget() -> None:
    with peer(lambda q, wire: None) as server:
        started = time.monotonic()
        (answer,), _ = ask(server.port, timeout=0.5)
        elapsed = time.monotonic() - started
    assert answer.security is Security.INDETERMINATE
    assert "no answer" in answer.reason
    assert 0.4 < elapsed < 2.0


def test_reply_with_wrong_id_is_not_accepted() -> None:
    def wrong_id(query: dns.message.Message, wire: bytes) -> bytes:
        reply = bytearray(_answer(query))
        reply[0] ^= 0xFF
        return bytes(reply)

    with peer(wrong_id) as server:
        (answer,), _ = ask(server.port, timeout=0.5)
    assert answer.failed
    assert answer.records == ()


def test_truncated_reply_is_retried_over_tcp() -> None:
    with peer(lambda q, wire: _answer(q, tc=True), lambda q, wire: _answer(q)) as server:
        (answer,), resolver = ask(server.port)
        tcp_queries = server.tcp_queries
    assert answer.security is Security.SECURE
    assert [r.to_text() for r in answer.records] == ["127.0.0.9"]
    assert tcp_queries == 1
    assert resolver.queries_sent == 2


def test_concurrent_identical_questions_share_one_query() -> None:
    with peer(lambda q, wire: _answer(q)) as server:
        answers, resolver = ask(server.port, count=20)
        udp_queries = server.udp_queries
    assert len(answers) == 20
    assert all(a.secure for a in answers)
    assert udp_queries == 1
    assert resolver.queries_sent == 1
