"""``danemilter ocsp fetch`` against a real ``openssl ocsp`` responder.

The responder binds every interface and spins on a client that sends nothing
(../shared/notes/test-infra.md), so it only ever runs inside a private network
namespace (``unshare -n``, loopback brought up), and the fetch commands run in that
same namespace: each test writes a shell script that brings ``lo`` up, starts the
responder, waits for it with ``ss -ltn``, runs the fetches, and exits (which ends the
namespace and everything in it). The filesystem is shared, so the test reads the
results and the staple file directly.
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.x509 import ocsp as x509_ocsp

from tests.support.ocsp_pki import DAY, HOUR, Party, SingleSpec, build_response, issue, make_ca
from tests.support.ocsp_pki import utcnow as _utcnow

# Needs root, unshare, ip, ss and openssl: scripts/install-system-deps installs them and
# CI runs as root. A missing tool fails these tests; it never skips them.
pytestmark = pytest.mark.integration

PORT = 8888  # a fresh network namespace per test: no port can be taken
REPO = Path(__file__).resolve().parents[2]
URL = f"http://127.0.0.1:{PORT}/"

GARBAGE_SERVER = """
import http.server, sys
class Junk(http.server.BaseHTTPRequestHandler):
    def do_GET(self): self._junk()
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._junk()
    def _junk(self):
        body = b"\\x30\\x82\\xff\\xff this is not an OCSP response"
        self.send_response(int(sys.argv[2]))
        self.send_header("Content-Type", "application/ocsp-response")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Junk).serve_forever()
"""


@dataclass(frozen=True)
class Env:
    dir: Path
    ca: Party
    leaf: Party
    responder: Party
    cert: Path
    issuer: Path
    out: Path

    def fetch_args(self, *extra: str) -> list[str]:
        return ["--cert", str(self.cert), "--issuer", str(self.issuer), "--out",
                str(self.out), "--timeout", "5", *extra]


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str


def _index_line(party: Party, flag: str, revoked: str = "") -> str:
    expiry = party.cert.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
    subject = "/CN=" + party.cert.subject.rfc4514_string().removeprefix("CN=")
    return f"{flag}\t{expiry}\t{revoked}\t{party.cert.serial_number:X}\tunknown\t{subject}\n"


@pytest.fixture
def env(tmp_path: Path) -> Env:
    now = _utcnow()
    ca = make_ca(now, "Fetch Test CA")
    leaf = issue(ca, now, "mx.example.test", ocsp_url=URL)
    responder = issue(ca, now, "Fetch Test Responder", ocsp_signing=True)
    ca.write(tmp_path, "ca")
    leaf.write(tmp_path, "leaf")
    responder.write(tmp_path, "responder")
    staple_dir = tmp_path / "staples"
    staple_dir.mkdir()
    return Env(tmp_path, ca, leaf, responder, tmp_path / "leaf.pem", tmp_path / "ca.pem",
               staple_dir / "mx.ocsp.der")


def _write_index(env: Env, status: str) -> Path:
    index = env.dir / "index.txt"
    other = issue(env.ca, _utcnow(), "other.example.test")
    lines = [_index_line(other, "V")]
    if status == "good":
        lines.append(_index_line(env.leaf, "V"))
    elif status == "revoked":
        when = (_utcnow() - DAY).strftime("%y%m%d%H%M%SZ")
        lines.append(_index_line(env.leaf, "R", f"{when},keyCompromise"))
    # "unknown": the leaf is simply not in the index.
    index.write_text("".join(lines))
    return index


def _openssl_responder(env: Env, status: str, *, signer: Party | None = None,
                       no_certs: bool = False, days: int = 1) -> list[str]:
    signer = signer or env.responder
    cert_path, key_path = signer.write(env.dir, "rsigner")
    command = ["openssl", "ocsp", "-index", str(_write_index(env, status)),
               "-port", str(PORT), "-CA", str(env.issuer), "-rsigner", str(cert_path),
               "-rkey", str(key_path), "-ndays", str(days)]
    if no_certs:
        command.append("-resp_no_certs")
    return command


def _in_netns(env: Env, server: list[str] | None, fetches: list[list[str]],
              *, timeout: float = 60) -> list[Run]:
    """Run ``server`` (if any) and then each fetch, all inside one new network namespace."""
    lines = ["set -u", "ip link set lo up"]
    if server is not None:
        lines += [
            f"{shlex.join(server)} >{env.dir}/server.log 2>&1 &",
            "server=$!",
            # Readiness by the socket table, never by connecting (see test-infra.md).
            f"timeout 10 sh -c 'until ss -ltn | grep -q \":{PORT} \"; do sleep 0.02; done'"
            " || { echo server did not start >&2; exit 99; }",
        ]
    for number, args in enumerate(fetches):
        command = [sys.executable, "-m", "danemilter", "-v", "ocsp", "fetch", *args]
        lines += [f"{shlex.join(command)} >{env.dir}/out.{number} 2>{env.dir}/err.{number}",
                  f"echo $? >{env.dir}/rc.{number}"]
    if server is not None:
        lines.append("kill $server")
    script = env.dir / "netns.sh"
    script.write_text("\n".join(lines) + "\n")
    done = subprocess.run(["unshare", "-n", "sh", str(script)], cwd=REPO, timeout=timeout,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return [Run(int((env.dir / f"rc.{n}").read_text()), (env.dir / f"out.{n}").read_text(),
                (env.dir / f"err.{n}").read_text()) for n in range(len(fetches))]


def _initial_staple(env: Env, signer: Party | None = None) -> bytes:
    """A good staple in place before the fetch (by default from the same responder); 0640."""
    now = _utcnow()
    signer = signer or env.responder
    der = build_response(SingleSpec(env.leaf.cert, env.ca.cert, this_update=now - HOUR,
                                    next_update=now + DAY), signer, include=(signer.cert,))
    env.out.write_bytes(der)
    os.chmod(env.out, 0o640)
    return der


def _check(env: Env) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "danemilter", "ocsp", "check", "--response", str(env.out),
         "--cert", str(env.cert), "--issuer", str(env.issuer), "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["auto", "post"])
def test_good_response_is_written(env: Env, method: str) -> None:
    (run,) = _in_netns(env, _openssl_responder(env, "good"),
                       [env.fetch_args("--method", method)])
    assert run.code == 0, run.stderr
    assert run.stdout.startswith(f"replaced {env.out}")
    # A one-certificate request is small enough for GET (RFC 5019), which the
    # openssl responder serves.
    assert f"DEBUG: {'GET' if method == 'auto' else 'POST'} {URL}" in run.stderr
    response = x509_ocsp.load_der_ocsp_response(env.out.read_bytes())
    assert response.certificate_status == x509_ocsp.OCSPCertStatus.GOOD
    assert response.certificates == [env.responder.cert]
    assert stat.S_IMODE(env.out.stat().st_mode) == 0o644
    assert '"status": "good"' in _check(env).stdout


@pytest.mark.timeout(60)
def test_replacement_keeps_mode(env: Env) -> None:
    old = _initial_staple(env)
    (run,) = _in_netns(env, _openssl_responder(env, "good"), [env.fetch_args()])
    assert run.code == 0, run.stderr
    assert run.stdout.startswith(f"replaced {env.out}")
    assert env.out.read_bytes() != old
    assert stat.S_IMODE(env.out.stat().st_mode) == 0o640


@pytest.mark.timeout(60)
def test_good_but_worse_response_keeps_the_current_staple(env: Env) -> None:
    # The current staple is signed by the CA itself (valid ten years); the responder's
    # certificate expires within a year, so the new proof is "signed by a certificate
    # that expires sooner" while the current one still has days to live.
    old = _initial_staple(env, signer=env.ca)
    (run,) = _in_netns(env, _openssl_responder(env, "good"), [env.fetch_args()])
    assert run.code == 0, run.stderr
    assert run.stdout.startswith(f"kept {env.out}")
    assert "signer certificate expires before" in run.stdout
    assert env.out.read_bytes() == old
    # Once the current staple is due for renewal, the new one wins after all.
    (run,) = _in_netns(env, _openssl_responder(env, "good"),
                       [env.fetch_args("--min-remaining", "2d")])
    assert run.code == 1  # the new one lives 1 day: less than the 2 days asked for
    assert "less than the minimum" in run.stderr
    (run,) = _in_netns(env, _openssl_responder(env, "good", days=3),
                       [env.fetch_args("--min-remaining", "2d")])
    assert run.code == 0, run.stderr
    assert run.stdout.startswith(f"replaced {env.out}")


@pytest.mark.timeout(60)
def test_omitted_signer_certificate_is_added(env: Env) -> None:
    signer_path = env.dir / "responder.pem"
    runs = _in_netns(env, _openssl_responder(env, "good", no_certs=True),
                     [env.fetch_args(), env.fetch_args("--signer", str(signer_path))])
    assert runs[0].code == 1
    assert "invalid (signer-not-found)" in runs[0].stderr
    assert runs[1].code == 0, runs[1].stderr
    response = x509_ocsp.load_der_ocsp_response(env.out.read_bytes())
    assert response.certificates == [env.responder.cert]
    # Clients that know nothing but the issuer can verify the staple.
    assert '"status": "good"' in _check(env).stdout


@pytest.mark.timeout(60)
@pytest.mark.parametrize("status", ["revoked", "unknown"])
def test_revoked_or_unknown_is_refused_and_the_old_file_kept(env: Env, status: str) -> None:
    old = _initial_staple(env)
    (run,) = _in_netns(env, _openssl_responder(env, status), [env.fetch_args()])
    assert run.code == 1
    assert f"the new response is {status}:" in run.stderr
    assert env.out.read_bytes() == old


@pytest.mark.timeout(60)
def test_responder_down_is_a_temporary_failure(env: Env) -> None:
    old = _initial_staple(env)
    (run,) = _in_netns(env, None, [env.fetch_args()])
    assert run.code == 3, run.stderr
    assert "refused" in run.stderr.lower() or "connect" in run.stderr.lower()
    assert env.out.read_bytes() == old


@pytest.mark.timeout(60)
def test_garbage_answer_is_refused(env: Env) -> None:
    old = _initial_staple(env)
    server = [sys.executable, "-c", GARBAGE_SERVER, str(PORT), "200"]
    (run,) = _in_netns(env, server, [env.fetch_args()])
    assert run.code == 1
    assert "invalid (malformed)" in run.stderr and "does not parse" in run.stderr
    assert env.out.read_bytes() == old


@pytest.mark.timeout(60)
def test_http_error_is_a_temporary_failure(env: Env) -> None:
    old = _initial_staple(env)
    server = [sys.executable, "-c", GARBAGE_SERVER, str(PORT), "503"]
    (run,) = _in_netns(env, server, [env.fetch_args()])
    assert run.code == 3
    assert "HTTP 503" in run.stderr
    # GET was refused, so POST was tried before giving up.
    assert "DEBUG: GET" in run.stderr and "DEBUG: POST" in run.stderr
    assert env.out.read_bytes() == old


@pytest.mark.timeout(60)
def test_signer_expiring_before_next_update_is_refused(env: Env) -> None:
    old = _initial_staple(env)
    now = _utcnow()
    short = issue(env.ca, now, "Short-lived Responder", ocsp_signing=True,
                  not_after=now + 12 * HOUR)
    (run,) = _in_netns(env, _openssl_responder(env, "good", signer=short, days=2),
                       [env.fetch_args()])
    assert run.code == 1
    assert "invalid (signer-validity)" in run.stderr
    assert env.out.read_bytes() == old


@pytest.mark.timeout(60)
def test_no_ocsp_url(env: Env) -> None:
    bare = issue(env.ca, _utcnow(), "bare.example.test")
    bare.write(env.dir, "bare")
    done = subprocess.run(
        [sys.executable, "-m", "danemilter", "ocsp", "fetch", "--cert",
         str(env.dir / "bare.pem"), "--issuer", str(env.issuer), "--out", str(env.out)],
        cwd=REPO, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 4
    assert "has no OCSP URL" in done.stderr and done.stderr.count("\n") == 1


@pytest.mark.timeout(120)
def test_readers_never_see_a_partial_file(env: Env) -> None:
    _initial_staple(env)
    stop = threading.Event()
    seen: set[bytes] = set()
    problems: list[str] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not stop.is_set() and reads < 1_000_000:
            data = env.out.read_bytes()
            reads += 1
            if data not in seen:
                try:
                    x509_ocsp.load_der_ocsp_response(data)
                except ValueError as exc:
                    problems.append(f"{len(data)} bytes: {exc}")
                seen.add(data)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        # Each fetch gets a freshly signed (ECDSA, so always different) response.
        runs = _in_netns(env, _openssl_responder(env, "good"),
                         [env.fetch_args() for _ in range(12)], timeout=100)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert [run.code for run in runs] == [0] * 12, [run.stderr for run in runs]
    assert sum(run.stdout.startswith("replaced") for run in runs) >= 6
    assert not problems
    assert reads > 100
    assert len(seen) >= 3
    assert '"status": "good"' in _check(env).stdout
    assert sorted(p.name for p in env.out.parent.iterdir()) == [env.out.name]
