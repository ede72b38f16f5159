"""A receiving SMTP server with STARTTLS (Python's ssl, one thread per connection) that
stores every message: the MX host that Postfix or Exim delivers to in delivery tests.

It answers EHLO (offering STARTTLS), STARTTLS, MAIL, RCPT, DATA, RSET, NOOP and QUIT;
each message is kept with its envelope and whether it came over TLS. It binds
``address:port``: a fresh port on a spare 127.25.x.y address, never 25, which a mail
server running beside the tests (Postfix: inet_interfaces = all) holds on every
address. The MTAs under test reach it through a private /etc/services that names that
port "smtp" (tests/support/delivery.py).

Optionally it answers a TLS handshake by its SNI, as a host serving several MX names
would: ``certificates`` maps a name to the chain (leaf first) it presents for it; any
other name, or none, gets the default self-signed certificate. Each message records
the SNI of its connection.
"""

from __future__ import annotations

import contextlib
import email
import email.message
import email.policy
import random
import socket
import ssl
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tests.support import pki
from tests.support.ports import free_port

_IDLE = 30.0


@dataclass(frozen=True)
class Received:
    sender: str
    recipients: tuple[str, ...]
    tls: bool
    message: email.message.EmailMessage
    sni: str | None = None


class ReceivingServer:
    def __init__(self, address: str, directory: Path, port: int = 25,
                 certificates: Mapping[str, Sequence[pki.Issued]] | None = None) -> None:
        self.address = address
        self.port = port
        # Self-signed, as many MX certificates are: DANE-EE(3) ignores names and issuers.
        issued = pki.make_leaf(None, ["mx.receiver.test"], cn="mx.receiver.test")
        self.issued = issued
        directory.mkdir(parents=True, exist_ok=True)
        self.context = pki.server_context(directory, "cert", [issued])
        self.context.sni_callback = self._choose
        self._by_name = {name.lower(): pki.server_context(directory, f"sni-{index}", chain)
                         for index, (name, chain) in enumerate((certificates or {}).items())}
        # The SNI of each handshake under way, by its socket (read once it completes).
        self._sni: dict[int, str | None] = {}
        self.messages: list[Received] = []
        self.tls_connections = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    @classmethod
    def on_spare_address(cls, directory: Path,
                         certificates: Mapping[str, Sequence[pki.Issued]] | None = None
                         ) -> ReceivingServer:
        last: OSError | None = None
        for _ in range(20):
            address = f"127.25.{random.randint(1, 254)}.{random.randint(1, 254)}"
            server = cls(address, directory, port=free_port(address),
                         certificates=certificates)
            try:
                server.start()
            except OSError as exc:
                last = exc
                continue
            return server
        raise RuntimeError(f"no free 127.25.x.y address for the receiving server: {last}")

    def __enter__(self) -> ReceivingServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self.address, self.port))
        except OSError:
            listener.close()
            raise
        listener.listen(64)
        listener.settimeout(0.2)
        self._listener = listener
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _choose(self, sock: ssl.SSLObject | ssl.SSLSocket, name: str | None,
                _: ssl.SSLContext) -> None:
        with self._lock:
            self._sni[id(sock)] = name
        chosen = self._by_name.get((name or "").lower())
        if chosen is not None:
            sock.context = chosen

    def for_recipient(self, recipient: str) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if recipient in m.recipients]

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(_IDLE)
        with contextlib.suppress(OSError, ssl.SSLError), contextlib.closing(conn):
            self._session(conn)

    def _session(self, raw: socket.socket) -> None:
        conn: socket.socket = raw
        reader = conn.makefile("rb")
        tls = False
        sni: str | None = None
        sender, recipients = "", list[str]()

        def say(line: str) -> None:
            conn.sendall(line.encode() + b"\r\n")

        say("220 mx.receiver.test ESMTP")
        while not self._stop.is_set():
            line = reader.readline(4096)
            if not line:
                return
            command = line.decode("ascii", "replace").strip()
            verb = command[:4].upper()
            if verb in ("EHLO", "HELO"):
                say("250-mx.receiver.test" if not tls else "250 mx.receiver.test")
                if not tls:
                    say("250 STARTTLS")
            elif command.upper() == "STARTTLS" and not tls:
                say("220 2.0.0 go ahead")
                conn = self.context.wrap_socket(raw, server_side=True)
                reader = conn.makefile("rb")
                tls = True
                with self._lock:
                    self.tls_connections += 1
                    sni = self._sni.pop(id(conn), None)
            elif verb == "MAIL":
                sender, recipients = command.partition(":")[2].strip(" <>"), []
                say("250 2.1.0 ok")
            elif verb == "RCPT":
                recipients.append(command.partition(":")[2].strip(" <>").split(">")[0])
                say("250 2.1.5 ok")
            elif verb == "DATA":
                say("354 go ahead")
                body = bytearray()
                while (chunk := reader.readline(65536)) not in (b".\r\n", b".\n", b""):
                    body += chunk[1:] if chunk.startswith(b"..") else chunk
                parsed = email.message_from_bytes(bytes(body), policy=email.policy.default)
                assert isinstance(parsed, email.message.EmailMessage)
                with self._lock:
                    self.messages.append(Received(sender, tuple(recipients), tls, parsed,
                                                  sni))
                say("250 2.0.0 queued")
            elif verb in ("RSET", "NOOP"):
                say("250 2.0.0 ok")
            elif verb == "QUIT":
                say("221 2.0.0 bye")
                if isinstance(conn, ssl.SSLSocket):
                    with contextlib.suppress(OSError, ssl.SSLError):
                        conn.unwrap()
                return
            else:
                say("502 5.5.2 unknown command")
