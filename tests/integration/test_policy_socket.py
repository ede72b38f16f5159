"""The policy socket of a running ``danemilter run`` (the same process and event loop as
the milter), spoken to as Postfix's socketmap client and Exim's ${readsocket} do: every
rule kind and domain status through the DNSSEC test bed, parent-domain keys, malformed
and oversize netstrings, many requests per connection, stalling clients and the
connection limit; bad input closes that connection only. ``danemilter policy-query``
against the same daemon."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from danemilter.config import Settings
from tests.support.dnsbed import DnssecTestBed
from tests.support.milterproc import MilterProcess
from tests.support.postfix import wait_for
from tests.support.socketmap import SocketmapClient, line_query

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

POLICY = """\
deadline: 2
limits: {{idle_timeout: 1, max_connections: 6}}
resolver: {{address: {address}, port: {port}, timeout: 1}}
skip_domains: [.hosting.test]
policy:
  default: {{dane: try}}
  domains:
    .nsec3.test: {{dane: require, on_fail: defer}}
    unusable.secure.test: {{dane: off}}
    both.secure.test: {{dane: require, on_fail: reject}}
"""


@pytest.fixture(scope="module")
def daemon(dns_bed: DnssecTestBed) -> Iterator[MilterProcess]:
    milter = MilterProcess(POLICY.format(address=dns_bed.resolver_address,
                                         port=dns_bed.resolver_port))
    milter.start()
    try:
        yield milter
    finally:
        assert milter.stop() == 0


def policy_socket(daemon: MilterProcess) -> str:
    return str(daemon.root / "policy.sock")


# Expected answers, from the rule and the status dns_cases.py gives each domain
# (docs/policy-socket.md: require -> dane-only; try -> dane-only when the domain is DANE,
# dane otherwise, TEMP while its status is unknown; off/skipped -> NOTFOUND).
TABLE: list[tuple[str, str]] = [
    ("ee.secure.test", "OK dane-only"),          # try, status dane
    ("ta.secure.test", "OK dane-only"),          # try, status dane (DANE-TA)
    ("insec-mx.insecure.test", "OK dane-only"),  # try, dane behind an insecure MX
    ("notlsa.secure.test", "OK dane"),           # try, none
    ("partial.secure.test", "OK dane"),          # try, partial
    ("plain.insecure.test", "OK dane"),          # try, insecure: none
    ("nullmx.secure.test", "OK dane"),           # Postfix bounces it itself
    ("badmx.secure.test", "TEMP"),               # try, tempfail (bogus MX)
    ("badtlsa.secure.test", "TEMP"),             # try, tempfail (bogus TLSA)
    ("notlsa.nsec3.test", "OK dane-only"),       # require (suffix rule), none: defers
    ("ee.nsec3.test", "OK dane-only"),           # require, dane
    ("both.secure.test", "OK dane-only"),        # require (exact rule), dane
    ("unusable.secure.test", "NOTFOUND "),       # dane: off
    ("srv1.hosting.test", "NOTFOUND "),          # skip_domains .hosting.test
    ("EE.Secure.Test.", "OK dane-only"),         # Postfix folds case; a trailing dot
    ("[mx.ee.secure.test]:25", "NOTFOUND "),     # a next hop, not a recipient domain
    ("[127.0.0.1]", "NOTFOUND "),
    # Parent-domain keys, asked by Postfix after NOTFOUND for a full domain:
    (".nsec3.test", "OK dane-only"),             # the suffix rule
    (".insecure.test", "OK dane"),               # default try
    (".secure.test", "NOTFOUND "),               # unusable.secure.test (off) is below it
    (".test", "NOTFOUND "),                      # so is .hosting.test (skipped)
    (".hosting.test", "NOTFOUND "),
]


def _matches(reply: str, expected: str) -> bool:
    return reply.startswith("TEMP ") if expected == "TEMP" else reply == expected


@pytest.mark.parametrize(("key", "expected"), TABLE, ids=[k for k, _ in TABLE])
def test_socketmap_answer(daemon: MilterProcess, key: str, expected: str) -> None:
    with SocketmapClient(policy_socket(daemon)) as client:
        reply = client.query(key)
    assert _matches(reply, expected), f"{key}: {reply!r}\n{daemon.log()[-2000:]}"


def test_many_requests_on_one_connection(daemon: MilterProcess) -> None:
    # As Postfix's smtp process keeps its connection: every key, three times, in order.
    with SocketmapClient(policy_socket(daemon)) as client:
        for _ in range(3):
            for key, expected in TABLE:
                reply = client.query(key)
                assert _matches(reply, expected), f"{key}: {reply!r}"
        # Pipelined: all requests written before any answer is read.
        keys = [k for k, _ in TABLE] * 4
        client.send(b"".join(b"%d:dane %s," % (len(k) + 5, k.encode()) for k in keys))
        for key in keys:
            assert _matches(client.reply(), dict(TABLE)[key]), key


def test_unknown_map_name_is_perm(daemon: MilterProcess) -> None:
    with SocketmapClient(policy_socket(daemon)) as client:
        reply = client.query("ee.secure.test", name="mta-sts")
        assert reply.startswith("PERM ")
        assert client.query("ee.secure.test") == "OK dane-only"  # the connection lives on


MALFORMED: list[tuple[str, bytes]] = [
    ("no-comma", b"19:dane ee.secure.test;"),
    ("letters-in-length", b"1x:dane ee.secure.test,"),
    ("oversize-length", b"99999999:"),
    ("length-over-limit", b"1025:" + b"a" * 1025 + b","),
    ("huge-length", b"4294967296:dane x,"),
    ("no-key", b"4:dane,"),
    ("nul", b"20:dane ee.se\0cure.test,"),
    ("not-utf-8", b"19:dane ee.s\xffcure.test,"),
    ("good-then-bad", b"19:dane ee.secure.test,x"),
    ("empty-netstring", b"0:,"),
]


@pytest.mark.parametrize("data", [d for _, d in MALFORMED], ids=[n for n, _ in MALFORMED])
def test_malformed_request_closes_that_connection_only(daemon: MilterProcess,
                                                       data: bytes) -> None:
    path = policy_socket(daemon)
    with SocketmapClient(path) as bystander, SocketmapClient(path) as bad:
        assert bystander.query("ee.secure.test") == "OK dane-only"
        bad.send(data)
        if data.startswith(b"19:dane ee.secure.test,"):
            assert bad.reply() == "OK dane-only"  # what came before the bad part counts
        started = time.monotonic()
        assert bad.closed_by_server()
        assert time.monotonic() - started < 0.9  # at once, not at the idle timeout
        assert bystander.query("notlsa.secure.test") == "OK dane"
    with SocketmapClient(path) as fresh:
        assert fresh.query("ee.secure.test") == "OK dane-only"


@pytest.mark.parametrize("partial", [b"", b"19:dane ee.sec", b"19"],
                         ids=["silent", "inside-netstring", "inside-length"])
def test_stalling_client_is_closed_at_the_idle_timeout(daemon: MilterProcess,
                                                       partial: bytes) -> None:
    path = policy_socket(daemon)
    with SocketmapClient(path) as staller, SocketmapClient(path) as other:
        staller.send(partial)
        started = time.monotonic()
        # Others are served while it stalls.
        assert other.query("ee.secure.test") == "OK dane-only"
        assert time.monotonic() - started < 0.5
        assert staller.closed_by_server()
        waited = time.monotonic() - started
        assert 0.8 < waited < 3.0, waited  # limits.idle_timeout: 1


def test_connection_limit(daemon: MilterProcess) -> None:
    path = policy_socket(daemon)
    clients = [SocketmapClient(path) for _ in range(6)]  # limits.max_connections: 6
    try:
        for client in clients:
            assert client.query("ee.secure.test") == "OK dane-only"
        with SocketmapClient(path) as extra:
            assert extra.closed_by_server()
        clients.pop().close()

        def served() -> bool:
            with SocketmapClient(path) as again:
                try:
                    return again.query("ee.secure.test") == "OK dane-only"
                except ConnectionError:
                    return False

        wait_for(served, 5, "a connection below the limit again")
    finally:
        for client in clients:
            client.close()
    # The daemon's log is written by a thread of its own: wait for the line.
    wait_for(lambda: "refused policy socket connection" in daemon.log(), 5,
             "the refusal in the log")


RCPT_LINES: list[tuple[bytes, bytes]] = [
    (b"rcpt ee.secure.test\n",
     b'action=accept status=dane tls=dane-only header_name=X-DANE-Status '
     b'header="ee.secure.test; status=dane; usage=8; ocsp=off; action=accept"\n'),
    (b"rcpt notlsa.secure.test\n",
     b'action=accept status=none tls=dane header_name=X-DANE-Status '
     b'header="notlsa.secure.test; status=none; usage=0; ocsp=off; action=accept"\n'),
    (b"rcpt notlsa.nsec3.test\n",
     b'action=defer status=none tls=dane-only code=450 xcode=4.7.4 text="Recipient domain '
     b'notlsa.nsec3.test cannot be reached with DANE (status none) and policy requires '
     b'it"\n'),
    # Under try a nonexistent domain is only tagged (issue 14); require refuses it.
    (b"rcpt nxdomain.secure.test\n",
     b'action=tag status=nxdomain tls=dane header_name=X-DANE-Status header="'
     b'nxdomain.secure.test; status=nxdomain; usage=0; ocsp=off; action=tag"\n'),
    (b"rcpt unusable.secure.test\n", b"action=accept status=skipped tls=none\n"),
    (b"rcpt srv1.hosting.test", b"action=accept status=skipped tls=none\n"),  # no newline
    (b"RCPT user@ee.secure.test\r\n",
     b'action=accept status=dane tls=dane-only header_name=X-DANE-Status '
     b'header="ee.secure.test; status=dane; usage=8; ocsp=off; action=accept"\n'),
    (b"rcpt [127.0.0.1]\n", b"action=accept status=skipped tls=none\n"),
    (b"helo x.test\n",
     b"action=error status=unknown tls=temp code=451 xcode=4.3.0 "
     b"text=\"unknown policy request 'helo'\"\n"),
]


@pytest.mark.parametrize(("line", "expected"), RCPT_LINES,
                         ids=[line.decode().split()[-1] for line, _ in RCPT_LINES])
def test_exim_rcpt_line(daemon: MilterProcess, line: bytes, expected: bytes) -> None:
    assert line_query(policy_socket(daemon), line) == expected


def test_bad_line_closes_without_an_answer(daemon: MilterProcess) -> None:
    assert line_query(policy_socket(daemon), b"rcpt\n") == b""
    assert line_query(policy_socket(daemon), b"rcpt " + b"a" * 2000) == b""
    wait_for(lambda: "policy socket connection:" in daemon.log(), 5, "the log line")


DANEMILTER = [sys.executable, "-m", "danemilter"]
# These daemons need no resolver (the bed validates test. only, not the root).
NO_RESOLVER_CHECK = ("resolver_check: off\n"
                     if "resolver_check" in Settings.__dataclass_fields__ else "")


@pytest.mark.parametrize(("args", "code", "out"), [
    (["ee.secure.test"], 0, "OK dane-only\n"),
    ([".insecure.test"], 0, "OK dane\n"),
    (["unusable.secure.test"], 1, "NOTFOUND \n"),
    (["badmx.secure.test"], 3, "TEMP "),
    (["ee.secure.test", "--socketmap", "other"], 3, "PERM "),
    (["notlsa.nsec3.test", "--rcpt"], 1, "action=defer status=none tls=dane-only code=450"),
    (["ee.secure.test", "--rcpt"], 0, "action=accept status=dane tls=dane-only"),
])
def test_policy_query_command(daemon: MilterProcess, args: list[str], code: int,
                              out: str) -> None:
    done = subprocess.run([*DANEMILTER, "policy-query", *args, "--socket",
                           policy_socket(daemon)], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == code, done.stderr
    assert done.stdout.startswith(out)


def test_policy_query_reads_the_socket_from_the_policy_file(daemon: MilterProcess) -> None:
    done = subprocess.run([*DANEMILTER, "policy-query", "ee.secure.test", "--config",
                           str(daemon.config_path)], capture_output=True, text=True,
                          timeout=30, check=False)
    assert (done.returncode, done.stdout) == (0, "OK dane-only\n"), done.stderr


@pytest.mark.parametrize(("args", "code", "err"), [
    (["x.test", "--socket", "/nonexistent/policy.sock"], 3, "No such file or directory"),
    (["two words"], 2, "not one domain"),
    (["x.test", "--socket", "tcp:1"], 2, "not unix:/PATH"),
])
def test_policy_query_errors(args: list[str], code: int, err: str) -> None:
    done = subprocess.run([*DANEMILTER, "policy-query", *args], capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == code
    assert err in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_policy_query_help_lists_exit_codes() -> None:
    done = subprocess.run([*DANEMILTER, "policy-query", "--help"], capture_output=True,
                          text=True, timeout=30, check=True)
    for line in ("0  OK", "1  NOTFOUND", "2  usage error", "3  TEMP or PERM"):
        assert line in done.stdout


def test_lookup_that_cannot_finish_answers_temp(tmp_path: object) -> None:
    # A resolver that never answers: a try domain's status cannot be known in time, so
    # TEMP (mail waits); a require domain needs no lookup: dane-only at once.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        milter = MilterProcess(
            f"deadline: 0.5\nresolver: {{address: 127.0.0.1, port: {port}, timeout: 5}}\n"
            "policy:\n  domains:\n    bank.test: {dane: require, on_fail: defer}\n")
        milter.start()
        try:
            path = milter.root / "policy.sock"
            wait_for(path.exists, 10, "the policy socket")
            with SocketmapClient(path) as client:
                started = time.monotonic()
                reply = client.query("slow.test")
                took = time.monotonic() - started
                assert reply.startswith("TEMP "), reply
                assert took < 2.0, took
                assert client.query("bank.test") == "OK dane-only"
                assert client.query(".test") == "OK dane"
            line = line_query(path, b"rcpt bank.test\n")
            assert line.startswith(b"action=defer status=tempfail tls=dane-only code=45")
        finally:
            assert milter.stop() == 0


def test_a_live_policy_socket_is_never_taken_over(daemon: MilterProcess,
                                                  tmp_path: object) -> None:
    from pathlib import Path

    root = Path(str(tmp_path))
    config = root / "second.yaml"
    config.write_text(f"listen: unix:{root}/milter.sock\n{NO_RESOLVER_CHECK}"
                      f"policy_socket: unix:{policy_socket(daemon)}\n")
    done = subprocess.run([*DANEMILTER, "run", "--config", str(config)], capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 2, done.stderr
    assert f"policy_socket: {policy_socket(daemon)} is already served by PID" in done.stderr
    with SocketmapClient(policy_socket(daemon)) as client:
        assert client.query("ee.secure.test") == "OK dane-only"


def test_libmilter_transport_refuses_an_explicit_policy_socket(tmp_path: object) -> None:
    from pathlib import Path

    root = Path(str(tmp_path))
    config = root / "lib.yaml"
    config.write_text(f"listen: unix:{root}/milter.sock\ntransport: libmilter\n"
                      f"{NO_RESOLVER_CHECK}"
                      f"policy_socket: unix:{root}/policy.sock\n")
    done = subprocess.run([*DANEMILTER, "run", "--config", str(config)], capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 2, done.stderr
    assert "policy_socket needs transport: asyncio" in done.stderr
