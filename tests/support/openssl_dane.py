"""OpenSSL's own DANE verdict on a chain: ``openssl s_server`` presents it, ``openssl
s_client -dane_tlsa_domain -dane_tlsa_rrdata`` judges it.

This is the reference the differential suite (tests/conformance/test_differential_dane.py)
compares ``danemilter tlsa verify`` with: the same library code Postfix's smtp client
runs for ``smtp_tls_security_level = dane``. ``-dane_ee_no_namechecks`` is Postfix's
setting (DANE-EE ignores names, RFC 7672 §3.1.1); PKIX usages are left to the caller to
drop, as RFC 7672 §3.1.3 says an SMTP client must.

s_server is told to accept one connection (``-naccept 1``) and is waited for on its
``ACCEPT`` line, never by sleeping.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.support.ports import free_port

_READY_SECONDS = 10.0
_CLIENT_SECONDS = 20.0
_MATCHED = re.compile(r"^DANE TLSA (\d+) (\d+) (\d+) \S+ (?:matched TA certificate|"
                      r"matched EE certificate|signed the certificate) at depth (\d+)$", re.M)
_UNUSABLE = "warning: unusable TLSA rrdata"


@dataclass(frozen=True, slots=True)
class OpenSSLVerdict:
    verified: bool
    depth: int | None
    usable_records: int
    detail: str  # s_client's verification line (or why there was none)


def _pem(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _wait_accept(server: subprocess.Popen[bytes]) -> None:
    assert server.stdout is not None
    descriptor = server.stdout.fileno()
    deadline = time.monotonic() + _READY_SECONDS
    seen = b""
    # Raw reads: a buffered readline could swallow the ACCEPT line into its buffer
    # and leave select() waiting on an empty pipe.
    while b"\nACCEPT" not in b"\n" + seen and time.monotonic() < deadline:
        ready, _, _ = select.select([descriptor], [], [], deadline - time.monotonic())
        if not ready:
            break
        chunk = os.read(descriptor, 4096)
        if not chunk:
            break
        seen += chunk
    if b"\nACCEPT" not in b"\n" + seen:
        raise RuntimeError(f"openssl s_server did not start: {seen!r}")


def verdict(chain: Sequence[x509.Certificate], key_pem: bytes, records: Sequence[str],
            domain: str, directory: Path) -> OpenSSLVerdict:
    """What s_client says about ``chain`` (leaf first, sent as is) under ``records``."""
    if not records:
        # s_client refuses to run; Postfix: no TLSA records for SMTP, DANE does not apply.
        return OpenSSLVerdict(False, None, 0, "no records to give s_client")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "leaf.pem").write_bytes(_pem(chain[:1]))
    (directory / "leaf.key").write_bytes(key_pem)
    server_argv = ["openssl", "s_server", "-naccept", "1",
                   "-cert", str(directory / "leaf.pem"), "-key", str(directory / "leaf.key")]
    if len(chain) > 1:
        (directory / "chain.pem").write_bytes(_pem(chain[1:]))
        server_argv += ["-cert_chain", str(directory / "chain.pem")]
    for _attempt in range(5):
        port = free_port()
        server = subprocess.Popen(
            [*server_argv, "-accept", f"127.0.0.1:{port}"],
            # An open, silent stdin: at EOF s_server would drop the connection at once.
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        try:
            try:
                _wait_accept(server)
            except RuntimeError:
                if server.poll() is not None:
                    continue  # port taken meanwhile: another one
                raise
            return _client(port, records, domain)
        finally:
            with contextlib.suppress(ProcessLookupError):
                server.kill()
            server.wait(timeout=10)
            for stream in (server.stdin, server.stdout):
                if stream is not None:
                    stream.close()
    raise RuntimeError("openssl s_server could not bind a port")


def _client(port: int, records: Sequence[str], domain: str) -> OpenSSLVerdict:
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
            "-dane_tlsa_domain", domain, "-dane_ee_no_namechecks"]
    for record in records:
        argv += ["-dane_tlsa_rrdata", record]
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=_CLIENT_SECONDS, check=False)
    unusable = done.stderr.count(_UNUSABLE)
    usable = len(records) - unusable
    if "Failed to import any TLSA records" in done.stderr:
        return OpenSSLVerdict(False, None, 0, "no usable TLSA records")
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("Verification")), None)
    if line is None:
        raise RuntimeError(f"s_client gave no verification result: {done.stdout}{done.stderr}")
    matched = _MATCHED.search(done.stdout)
    verified = line == "Verification: OK"
    depth = int(matched.group(4)) if matched and verified else None
    return OpenSSLVerdict(verified, depth, usable, line)
