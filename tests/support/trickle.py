"""A STARTTLS server whose TLS handshake is real but trickles: every octet it sends
after STARTTLS leaves ``interval`` seconds after the previous one (issue 16 item 3).

The handshake is done by pyOpenSSL over memory BIOs, so the client sees a genuine
ServerHello, certificate and Finished, only slowly; the plain-text SMTP part is prompt.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType
from typing import Any

from cryptography import x509
from OpenSSL import SSL


class TricklingTlsServer:
    def __init__(self, address: str, port: int, *, leaf: x509.Certificate, key: Any,
                 interval: float = 1.0) -> None:
        self.address = address
        self.port = port
        self.interval = interval
        self.context = SSL.Context(SSL.TLS_SERVER_METHOD)
        self.context.use_certificate(leaf)  # type: ignore[arg-type]
        self.context.use_privatekey(key)
        self.handshakes_started = 0
        self._stop = threading.Event()
        self._listener = socket.create_server((address, port))
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> TricklingTlsServer:
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _accept(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError, SSL.Error), conn:
            conn.settimeout(30)
            reader = conn.makefile("rb")
            conn.sendall(b"220 trickle.test ESMTP\r\n")
            while not self._stop.is_set():
                line = reader.readline(1024).upper()
                if not line:
                    return
                if line.startswith((b"EHLO", b"HELO")):
                    conn.sendall(b"250-trickle.test\r\n250 STARTTLS\r\n")
                elif line.startswith(b"STARTTLS"):
                    conn.sendall(b"220 go ahead\r\n")
                    self._trickle_handshake(conn)
                    return
                else:
                    conn.sendall(b"502 no\r\n")

    def _trickle_handshake(self, conn: socket.socket) -> None:
        tls = SSL.Connection(self.context, None)
        tls.set_accept_state()
        self.handshakes_started += 1
        while not self._stop.is_set():
            data = conn.recv(65536)
            if not data:
                return
            tls.bio_write(data)
            with contextlib.suppress(SSL.WantReadError):
                tls.do_handshake()
            with contextlib.suppress(SSL.WantReadError):
                pending = tls.bio_read(65536)
                for octet in pending:
                    if self._stop.wait(self.interval):
                        return
                    conn.sendall(bytes([octet]))
