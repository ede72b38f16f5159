"""A real HTTPS server on loopback serving MTA-STS policies per host name (SNI), with
certificates from a test CA made at test time.

Each served name maps to a :class:`Served` answer (status, content type, body, or a
redirect); names listed in ``wrong_cert`` get a certificate for another name. Python's
ssl server picks the certificate by SNI, as a real web server would.
"""

from __future__ import annotations

import http.server
import ssl
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from tests.support.pki import Issued, make_ca, make_leaf, server_context
from tests.support.ports import free_port


@dataclass(frozen=True)
class Served:
    body: bytes = b""
    status: int = 200
    content_type: str = "text/plain"
    location: str | None = None


class StsServer:
    def __init__(self, answers: dict[str, Served], wrong_cert: frozenset[str] = frozenset()
                 ) -> None:
        self.answers = dict(answers)
        self.wrong_cert = wrong_cert
        self.requests: list[str] = []
        self.directory = Path(tempfile.mkdtemp(prefix="dm-sts-"))
        self.ca = make_ca("danemilter test MTA-STS CA")
        self.ca_file = self.directory / "ca.pem"
        self.ca_file.write_bytes(self.ca.pem())
        self.port = free_port()
        self._contexts: dict[str, ssl.SSLContext] = {}
        good = [name for name in answers if name not in wrong_cert]
        self._default = self._context("good", make_leaf(self.ca, good or ["unused.test"]))
        self._wrong = self._context("wrong", make_leaf(self.ca, ["someone-else.test"]))
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        self._server.socket = self._default.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _context(self, label: str, leaf: Issued) -> ssl.SSLContext:
        context = server_context(self.directory, label, [leaf, self.ca])
        context.sni_callback = self._choose
        return context

    def _choose(self, sock: ssl.SSLObject | ssl.SSLSocket, name: str | None,
                _: ssl.SSLContext) -> None:
        if name in self.wrong_cert:
            sock.context = self._wrong

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                host = (self.headers.get("Host") or "").split(":")[0]
                server.requests.append(f"{host}{self.path}")
                answer = server.answers.get(host)
                if answer is None or self.path != "/.well-known/mta-sts.txt":
                    self.send_error(404)
                    return
                self.send_response(answer.status)
                if answer.location is not None:
                    self.send_header("Location", answer.location)
                self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, format: str, *args: object) -> None:
                return

        return Handler

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
