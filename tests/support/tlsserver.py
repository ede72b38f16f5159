"""A small STARTTLS SMTP server for probe tests (pyOpenSSL, one thread per connection).

It presents a given chain (leaf first; whatever is passed is exactly what is sent), can
staple a given DER OCSP response (``set_ocsp_server_callback``), can leave STARTTLS out
of its EHLO reply, or can accept connections and never say anything (``silent``).
With ``stall_tls`` it answers STARTTLS and then never handshakes. It records the SNI
names clients sent and whether they asked for a staple.

    with SmtpTlsServer("127.0.0.101", port, chain=[leaf, ca], key=leaf_key) as server:
        ...
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from cryptography import x509
from OpenSSL import SSL

_IDLE = 10.0  # a client that says nothing for this long is dropped


class SmtpTlsServer:
    def __init__(
        self,
        address: str,
        port: int,
        *,
        chain: Sequence[x509.Certificate] = (),
        key: Any = None,
        staple: bytes | None = None,
        starttls: bool = True,
        silent: bool = False,
        stall_tls: bool = False,
        name: str = "mx.test",
    ) -> None:
        if starttls and not silent and (not chain or key is None):
            raise ValueError("a STARTTLS server needs a chain and a key")
        self.address = address
        self.port = port
        self.chain = list(chain)
        self.key = key
        self.staple = staple
        self.starttls = starttls
        self.silent = silent
        self.stall_tls = stall_tls
        self.name = name
        self.server_names: list[str | None] = []
        self.staple_requests = 0
        self.connections = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._open: list[socket.socket] = []

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self) -> SmtpTlsServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self.address, self.port))
            listener.listen(64)
        except OSError:
            listener.close()
            raise
        self._listener = listener  # listening once bind/listen returned: no readiness wait
        thread = threading.Thread(target=self._accept_loop, name=f"smtp-{self.address}",
                                  daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    # ------------------------------------------------------------------ serving
    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            ready, _, _ = select.select([self._listener], [], [], 0.1)
            if not ready:
                continue
            try:
                sock, _ = self._listener.accept()
            except OSError:
                continue
            with self._lock:
                self.connections += 1
                self._open.append(sock)
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, sock: socket.socket) -> None:
        try:
            if self.silent:
                self._stop.wait(_IDLE * 3)
                return
            self._dialogue(sock)
        except Exception as exc:  # a test server must not die silently
            with self._lock:
                self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock, contextlib.suppress(ValueError):
                self._open.remove(sock)
            sock.close()

    def _dialogue(self, sock: socket.socket) -> None:
        sock.settimeout(_IDLE)
        sock.sendall(f"220 {self.name} ESMTP probe test server\r\n".encode())
        reader = sock.makefile("rb")
        while True:
            line = reader.readline(1000)
            if not line:
                return
            verb = line.strip().split(b" ", 1)[0].upper()
            if verb in (b"EHLO", b"HELO"):
                features = ["PIPELINING", "8BITMIME"]
                if self.starttls:
                    features.append("STARTTLS")
                lines = [self.name, *features]
                reply = "".join(f"250-{item}\r\n" for item in lines[:-1]) + f"250 {lines[-1]}\r\n"
                sock.sendall(reply.encode())
            elif verb == b"STARTTLS" and self.starttls:
                sock.sendall(b"220 2.0.0 Ready to start TLS\r\n")
                if self.stall_tls:  # never start the handshake
                    self._stop.wait(_IDLE * 3)
                    return
                self._tls(sock)
                return
            elif verb == b"QUIT":
                sock.sendall(b"221 2.0.0 Bye\r\n")
                return
            else:
                sock.sendall(b"502 5.5.2 Not implemented\r\n")

    def _tls(self, sock: socket.socket) -> None:
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.use_certificate(self.chain[0])
        context.use_privatekey(self.key)
        for extra in self.chain[1:]:
            context.add_extra_chain_cert(extra)

        def servername(conn: SSL.Connection) -> None:
            name = conn.get_servername()
            with self._lock:
                self.server_names.append(name.decode() if name else None)

        context.set_tlsext_servername_callback(servername)
        if self.staple is not None:
            staple = self.staple

            def give_staple(_conn: SSL.Connection, _data: Any) -> bytes:
                with self._lock:
                    self.staple_requests += 1
                return staple

            context.set_ocsp_server_callback(give_staple)
        conn = SSL.Connection(context, sock)
        conn.set_accept_state()
        # Blocking socket with a kernel receive timeout (pyOpenSSL's OCSP callbacks
        # need a blocking socket); WantRead after the timeout ends the session.
        sock.settimeout(None)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", int(_IDLE), 0))
        deadline = time.monotonic() + _IDLE
        while True:
            try:
                conn.do_handshake()
                break
            except SSL.WantReadError:
                if time.monotonic() > deadline or self._stop.is_set():
                    return
            except SSL.Error:
                return  # the client gave up (a probe is allowed to)
        buffer = b""
        while True:
            while b"\n" not in buffer:
                try:
                    data = conn.recv(1000)
                except (SSL.Error, OSError):
                    return
                if not data:
                    return
                buffer += data
            line, _, buffer = buffer.partition(b"\n")
            verb = line.strip().split(b" ", 1)[0].upper()
            try:
                if verb == b"QUIT":
                    conn.sendall(b"221 2.0.0 Bye\r\n")
                    conn.shutdown()
                    return
                if verb in (b"EHLO", b"HELO"):
                    conn.sendall(f"250-{self.name}\r\n250 8BITMIME\r\n".encode())
                else:
                    conn.sendall(b"502 5.5.2 Not implemented\r\n")
            except (SSL.Error, OSError):
                return
