"""Hostile and broken MTAs against a real ``danemilter run`` (asyncio transport), on a TCP
port and on a unix socket, through a pure-Python MTA side (tests/support/mtaclient.py).

After every fuzz case the daemon must be alive, answer the next well-formed connection
correctly, and hold no more file descriptors or threads than before (nothing leaks). The
limits (max_packet, idle_timeout, max_connections) close exactly the connection they are
about, with one log line, and disturb no other.

The fuzz seed is printed (``-s`` shows it) and named in every failure; set
``DANEMILTER_FUZZ_SEED`` to replay one.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from danemilter.milter import protocol as p
from tests.support.dnsbed import DnssecTestBed
from tests.support.milterproc import InetMilterProcess, MilterProcess
from tests.support.mtaclient import ALL_ACTIONS, ALL_STEPS, MilterClosed, MtaClient
from tests.support.postfix import wait_for
from tests.support.procstat import fd_count, thread_count

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

HEADER = "X-DANE-Status"
EE_HEADER = "ee.secure.test; status=dane; usage=8; ocsp=off; action=accept"
MAX_PACKET = 262144  # 10,000 macros in one packet fit
FUZZ_CASES = 120  # per transport
CONTINUE = p.Response(b"c", b"")

SEED = int(os.environ.get("DANEMILTER_FUZZ_SEED") or random.SystemRandom().getrandbits(32))


def policy(resolver_port: int, limits: str) -> str:
    # Only .secure.test and plain.insecure.test take DNS: fuzzed recipients elsewhere are
    # answered at once (dane: off), so every case ends as soon as the peer does.
    return (f"transport: asyncio\n"
            f"resolver: {{address: 127.0.0.1, port: {resolver_port}, timeout: 1}}\n"
            f"deadline: 5\n"
            f"skip_domains: [skipped.test]\n"
            f"limits: {{{limits}}}\n"
            "policy:\n"
            "  default: {dane: off}\n"
            "  domains:\n"
            "    .secure.test: {dane: require, on_fail: reject}\n"
            "    plain.insecure.test: {dane: require, on_fail: reject}\n")


@dataclass
class Daemon:
    milter: MilterProcess
    fds: int = 0
    threads: int = 0

    @property
    def pid(self) -> int:
        assert self.milter.process is not None
        return self.milter.process.pid

    def client(self, timeout: float = 5.0) -> MtaClient:
        return MtaClient(self.milter.listen, timeout)

    def settle(self, what: str) -> None:
        """Alive, and back to the descriptors and threads it had at the start."""
        assert self.milter.process is not None
        assert self.milter.process.poll() is None, f"{what}: the milter died: " \
            f"{self.milter.log()[-3000:]}"
        wait_for(lambda: fd_count(self.pid) <= self.fds, 5,
                 f"{what}: open fds back to {self.fds} (now {fd_count(self.pid)})")
        wait_for(lambda: thread_count(self.pid) <= self.threads, 5,
                 f"{what}: threads back to {self.threads} (now {thread_count(self.pid)})")


def start(milter: MilterProcess) -> Daemon:
    milter.start()
    daemon = Daemon(milter)
    # Warm: the DNS answers cached, the lazy parts of the daemon built (the default
    # executor's cache threads grow to what overlapping lookups and writes use).
    full_session(daemon)
    fresh_lookups(daemon, 5, "warm")
    daemon.fds, daemon.threads = fd_count(daemon.pid), thread_count(daemon.pid)
    return daemon


def fresh_lookups(daemon: Daemon, count: int, tag: str) -> None:
    """``count`` messages, each to a domain never asked for (a real DNS lookup)."""
    with daemon.client() as mta:
        mta.negotiate()
        mta.send(p.Connect("client.test", "4", 25, "192.0.2.1"))
        for n in range(count):
            mta.send(p.Mail("<a@c.test>", ()),
                     p.Rcpt(f"<x@nx{SEED}-{tag}-{n}.secure.test>", ()),
                     p.Rcpt("<d@ee.secure.test>", ()))
            nx, ee = mta.read(2)
            assert nx.code == b"y" and nx.strings[0].startswith("550 5.1.2"), nx
            assert ee == CONTINUE
            mta.send(p.EndOfMessage())
            assert [r.code for r in mta.read(2)] == [b"i", b"c"]


@pytest.fixture(scope="module", params=["inet", "unix"])
def daemon(request: pytest.FixtureRequest, dns_bed: DnssecTestBed) -> Iterator[Daemon]:
    config = policy(dns_bed.resolver_port,
                    f"max_packet: {MAX_PACKET}, idle_timeout: 1, max_connections: 64")
    milter = InetMilterProcess(config) if request.param == "inet" else MilterProcess(config)
    daemon = start(milter)
    try:
        yield daemon
    finally:
        code = milter.stop()
        assert code == 0, "the milter must exit cleanly on SIGTERM after all this"


# --- a correct session --------------------------------------------------------------


def full_session(daemon: Daemon, steps: p.Step = ALL_STEPS, queue_id: str = "Q1") -> None:
    """A whole Postfix-like session with every kind of recipient, checked answer by answer."""
    with daemon.client() as mta:
        agreed = mta.negotiate(ALL_ACTIONS, steps)
        no_reply = p.Step.NR_CONN | p.Step.NR_MAIL | p.Step.NR_HDR
        # The no-reply steps it uses are exactly those offered; no step is ever added.
        assert agreed & ~steps == 0 and agreed & no_reply == steps & no_reply

        def answer(flag: p.Step) -> list[p.Response]:
            return [] if steps & flag else [CONTINUE]

        assert mta.answered(p.Connect("client.test", "4", 4321, "192.0.2.7"),
                            p.Step.NR_CONN) == answer(p.Step.NR_CONN)
        mta.send(p.Macros(b"M", (("{auth_authen}", ""),)))
        assert mta.answered(p.Mail("<alice@client.test>", ()), p.Step.NR_MAIL) == \
            answer(p.Step.NR_MAIL)
        mta.send(p.Macros(b"R", (("i", queue_id),)))
        for recipient in ("<a@skipped.test>", "<b@sub.skipped.test>", "<c@off.test>",
                          "<d@ee.secure.test>"):
            mta.send(p.Rcpt(recipient, ()))
            assert mta.read() == [CONTINUE], recipient
        mta.send(p.Rcpt("<e@plain.insecure.test>", ()))
        (refused,) = mta.read()
        assert refused.code == b"y"
        assert refused.strings[0].startswith("550 5.7.4 "), refused
        assert "plain.insecure.test" in refused.strings[0]
        for name, value in (("Subject", "hi"), (HEADER, "forged; status=dane")):
            assert mta.answered(p.Header(name, value), p.Step.NR_HDR) == answer(p.Step.NR_HDR)
        mta.send(p.Macros(b"E", (("i", queue_id),)), p.EndOfMessage())
        delete, insert, done = mta.read(3)
        assert delete == p.Response(b"m", struct.pack(">I", 1) + f"{HEADER}\0\0".encode())
        assert insert.code == b"i" and insert.data[:4] == struct.pack(">I", 1)
        assert p.Response(b"", insert.data[4:]).strings == [HEADER, EE_HEADER]
        assert done == CONTINUE
        mta.send(p.Quit())
        assert mta.closed_within(5)


def test_a_correct_session_gets_every_answer(daemon: Daemon) -> None:
    full_session(daemon)
    daemon.settle("a correct session")


def test_without_no_reply_flags_every_step_is_answered_with_continue(daemon: Daemon) -> None:
    no_reply = p.Step.NR_CONN | p.Step.NR_MAIL | p.Step.NR_HDR
    full_session(daemon, ALL_STEPS & ~no_reply)
    daemon.settle("a session without no-reply flags")


def test_several_messages_and_a_new_smtp_session_on_one_connection(daemon: Daemon) -> None:
    with daemon.client() as mta:
        mta.negotiate()
        for round_ in range(3):
            mta.send(p.Connect("client.test", "6", 25, "2001:db8::7"))
            for _ in range(2):
                mta.send(p.Mail("<a@client.test>", ()), p.Rcpt("<x@ee.secure.test>", ()))
                assert mta.read() == [CONTINUE]
                mta.send(p.Header(HEADER, "forged"), p.EndOfMessage())
                assert [r.code for r in mta.read(3)] == [b"m", b"i", b"c"]
            mta.send(p.Mail("<a@client.test>", ()), p.Rcpt("<y@plain.insecure.test>", ()))
            assert mta.read()[0].code == b"y"
            mta.send(p.Abort(), p.QuitNewConnection())
            assert mta.nothing_pending(), round_
    daemon.settle("a reused connection")


# --- fuzz -----------------------------------------------------------------------------

VALID_SESSION: list[p.Command] = [
    p.OptionNegotiation(6, ALL_ACTIONS, ALL_STEPS),
    p.Macros(b"C", (("j", "mx.test"),)),
    p.Connect("client.test", "4", 25, "192.0.2.9"),
    p.Macros(b"M", (("{auth_authen}", "alice"),)),
    p.Mail("<alice@client.test>", ("SIZE=10",)),
    p.Macros(b"R", (("i", "QF"),)),
    p.Rcpt("<a@ee.secure.test>", ()),
    p.Rcpt("<b@off.test>", ()),
    p.Header("Subject", "fuzz"),
    p.Header(HEADER, "forged"),
    p.EndOfMessage(),
    p.Abort(),
    p.Mail("<>", ()),
    p.Rcpt("<c@skipped.test>", ()),
    p.EndOfMessage(),
    p.Quit(),
]
VALID_STREAM = b"".join(p.encode_command(c) for c in VALID_SESSION)
NEGOTIATE = p.encode_command(VALID_SESSION[0])
SHUFFLE_POOL: list[p.Command] = [*VALID_SESSION, p.Helo("client.test"), p.Data(), p.EndOfHeaders(),
                p.Body(b"body"), p.QuitNewConnection(), p.Unknown("VRFY x")]


def _packet(code: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data) + 1) + code + data


def random_bytes(rng: random.Random) -> bytes:
    return rng.randbytes(rng.randrange(1, 3000))


def mutated(rng: random.Random) -> bytes:
    data = bytearray(VALID_STREAM)
    for _ in range(rng.randrange(1, 8)):
        at = rng.randrange(len(data))
        kind = rng.randrange(4)
        if kind == 0:
            data[at] = rng.randrange(256)
        elif kind == 1:
            data.insert(at, rng.randrange(256))
        elif kind == 2:
            del data[at:at + rng.randrange(1, 16)]
        else:
            data[at:at] = data[at:at + rng.randrange(1, 64)]
    return bytes(data)


def truncated(rng: random.Random) -> bytes:
    return VALID_STREAM[:rng.randrange(len(VALID_STREAM))]


def huge_length(rng: random.Random) -> bytes:
    length = rng.choice([MAX_PACKET + 1, 2**31, 2**32 - 1, rng.randrange(MAX_PACKET + 1, 2**32)])
    return NEGOTIATE + struct.pack(">I", length) + rng.choice(b"BLRHU").to_bytes(1, "big") \
        + rng.randbytes(rng.randrange(100))


def out_of_order(rng: random.Random) -> bytes:
    commands = [rng.choice(SHUFFLE_POOL) for _ in range(rng.randrange(1, 30))]
    if rng.random() < 0.7:
        commands.insert(0, VALID_SESSION[0])
    return b"".join(p.encode_command(c) for c in commands)


def nul_inside_strings(rng: random.Random) -> bytes:
    at = rng.randrange(1, 8)
    bad = rng.choice([
        _packet(b"H", b"client" + b"\0" * at + b".test\0"),
        _packet(b"L", b"Subj\0ect\0value\0"),
        _packet(b"L", b"Subject\0va" + b"\0" * at + b"lue\0"),
        _packet(b"C", b"host\0" + b"4\x00\x19" + b"192.0\0.2.1\0"),
        _packet(b"U", b"VRFY\0x\0"),
        _packet(b"R", b"<a@ee.secure.test>"),  # no NUL at all
    ])
    prefix = VALID_STREAM[:len(b"".join(p.encode_command(c) for c in VALID_SESSION[:5]))]
    return prefix + bad


def many_macros(rng: random.Random) -> bytes:
    pairs = tuple((f"{{m{i}}}", "v" * rng.randrange(3)) for i in range(10_000))
    return b"".join(p.encode_command(c) for c in (
        VALID_SESSION[0], p.Connect("c", "U", None, None), p.Macros(b"M", pairs),
        p.Mail("<a@b.test>", ()), *[p.Macros(b"R", (("i", f"Q{i}"),)) for i in range(10_000)],
        p.Rcpt("<x@off.test>", ())))


def abort_storm(rng: random.Random) -> bytes:
    storm = b"".join(p.encode_command(c) for c in (
        p.Mail("<a@b.test>", ()), p.Rcpt("<x@skipped.test>", ()), p.Abort(), p.Abort()))
    return NEGOTIATE + p.encode_command(p.Connect("c", "U", None, None)) \
        + storm * rng.randrange(500, 3000)


GENERATORS: list[Callable[[random.Random], bytes]] = [
    random_bytes, mutated, truncated, huge_length, out_of_order, nul_inside_strings,
    abort_storm,
]


def hostile_case(daemon: Daemon, data: bytes) -> None:
    """Send ``data``, then end our side; the milter must close the connection soon."""
    with daemon.client() as mta:
        try:
            mta.send(data)
            mta.sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            return  # it closed first: what a protocol error should do
        assert mta.closed_within(10), "the milter kept a connection its peer had ended"


def quick_check(daemon: Daemon) -> None:
    """A short well-formed session with a real (cached) verdict."""
    with daemon.client() as mta:
        mta.negotiate()
        mta.send(p.Connect("client.test", "4", 25, "192.0.2.1"), p.Mail("<a@c.test>", ()),
                 p.Rcpt("<p@plain.insecure.test>", ()), p.Rcpt("<d@ee.secure.test>", ()))
        refused, accepted = mta.read(2)
        assert refused.code == b"y" and refused.strings[0].startswith("550 5.7.4")
        assert accepted == CONTINUE
        mta.send(p.EndOfMessage())
        assert [r.code for r in mta.read(2)] == [b"i", b"c"]


def test_seeded_fuzz_leaves_the_daemon_answering_and_leaking_nothing(daemon: Daemon) -> None:
    print(f"fuzz seed {SEED} (DANEMILTER_FUZZ_SEED={SEED} replays it)")
    rng = random.Random(SEED)
    cases = [(many_macros.__name__, many_macros(rng))]
    cases += [(g.__name__, g(rng)) for g in rng.choices(GENERATORS, k=FUZZ_CASES)]
    for index, (name, data) in enumerate(cases):
        what = f"seed {SEED} case {index} ({name}, {len(data)} octets)"
        try:
            hostile_case(daemon, data)
            quick_check(daemon)
        except (AssertionError, OSError) as exc:
            raise AssertionError(f"{what}: {exc!r}\n{daemon.milter.log()[-2000:]}") from exc
        if index % 10 == 0 or name in ("many_macros", "abort_storm"):
            daemon.settle(what)
    daemon.settle(f"seed {SEED}: after {len(cases)} cases")
    assert "Traceback" not in daemon.milter.log()


def test_ten_thousand_macros_and_an_abort_storm_are_answered(daemon: Daemon) -> None:
    pairs = tuple((f"{{m{i}}}", "v") for i in range(10_000))
    storm: list[p.Command] = [p.Mail("<a@b.test>", ()), p.Rcpt("<x@off.test>", ()), p.Abort()]
    with daemon.client() as mta:
        mta.negotiate()
        mta.send(p.Connect("c", "U", None, None), *storm * 2000)
        assert mta.read(2000) == [CONTINUE] * 2000
        mta.send(p.Macros(b"M", pairs), p.Mail("<a@b.test>", ()), p.Macros(b"R", pairs),
                 p.Rcpt("<d@ee.secure.test>", ()), p.Macros(b"E", pairs), p.EndOfMessage())
        assert [r.code for r in mta.read(3)] == [b"c", b"i", b"c"]
    daemon.settle("macros and aborts")


# --- limits -----------------------------------------------------------------------------


def _log_lines(daemon: Daemon, needle: str) -> list[str]:
    return [line for line in daemon.milter.log().splitlines() if needle in line]


def test_a_packet_over_max_packet_closes_that_connection_with_one_log_line(
    daemon: Daemon,
) -> None:
    size = MAX_PACKET + 1 + random.Random(SEED).randrange(1000)
    with daemon.client() as mta:
        mta.negotiate()
        mta.send(struct.pack(">I", size) + b"L")  # refused on the length alone
        started = time.monotonic()
        assert mta.closed_within(3)
        assert time.monotonic() - started < 1
    needle = f"packet of {size} octets exceeds the limit of {MAX_PACKET}"
    wait_for(lambda: bool(_log_lines(daemon, needle)), 5, "the protocol error's log line")
    (line,) = _log_lines(daemon, needle)
    assert "closing it" in line
    if isinstance(daemon.milter, InetMilterProcess):
        peer = line.split("milter connection from ", 1)[1].split(" ", 1)[0]
        assert len(_log_lines(daemon, f"from {peer} ")) == 1
    quick_check(daemon)
    daemon.settle("an oversized packet")


def test_an_idle_connection_is_closed_after_idle_timeout(daemon: Daemon) -> None:
    with daemon.client() as mta:
        mta.negotiate()
        started = time.monotonic()
        assert mta.closed_within(5), "idle_timeout: 1 did not close the connection"
        elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 3, elapsed
    wait_for(lambda: bool(_log_lines(daemon, "idle for 1 s; closing it")), 5, "the idle line")
    daemon.settle("an idle connection")


def test_a_connection_that_keeps_talking_is_not_idle(daemon: Daemon) -> None:
    with daemon.client() as mta:
        mta.negotiate()
        mta.send(p.Connect("c", "U", None, None))
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            mta.send(p.Mail("<a@b.test>", ()), p.Rcpt("<x@off.test>", ()), p.Abort())
            assert mta.read() == [CONTINUE]
            assert not mta.closed_within(0.3)
    daemon.settle("a busy connection")


def test_a_protocol_error_does_not_disturb_a_concurrent_connection(daemon: Daemon) -> None:
    errors: list[BaseException] = []
    stop = threading.Event()

    def hostile() -> None:
        rng = random.Random(SEED + 1)
        try:
            while not stop.is_set():
                hostile_case(daemon, NEGOTIATE + rng.choice(
                    [_packet(b"Z", b""), b"\0\0\0\0", _packet(b"R", b"x"), rng.randbytes(64)]))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=hostile) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        # Fresh names: each one a real DNS lookup while the others break the protocol.
        fresh_lookups(daemon, 20, "concurrent")
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert not errors, errors
    daemon.settle("concurrent good and bad connections")


def test_max_connections_refuses_the_one_past_it_at_once(dns_bed: DnssecTestBed) -> None:
    limit = 3
    milter = MilterProcess(policy(dns_bed.resolver_port, f"max_connections: {limit}"))
    daemon = start(milter)
    try:
        held = [daemon.client() for _ in range(limit)]
        for mta in held:
            mta.negotiate()
        extra = daemon.client()
        started = time.monotonic()
        assert extra.sock.recv(16) == b"", "the connection past the limit was not closed"
        assert time.monotonic() - started < 1
        extra.close()
        for mta in held:  # the others still work
            mta.send(p.Connect("c", "U", None, None), p.Mail("<a@b.test>", ()),
                     p.Rcpt("<d@ee.secure.test>", ()))
            assert mta.read() == [CONTINUE]
        wait_for(lambda: bool(_log_lines(daemon, "refused 1 MTA connection(s): 3 open")), 5,
                 "the refusal's log line")
        held.pop().close()

        def admitted_again() -> bool:
            with daemon.client() as mta:
                try:
                    mta.negotiate()
                except (MilterClosed, OSError):
                    return False
                return True

        wait_for(admitted_again, 5, "a connection admitted once one closed")
        for mta in held:
            mta.close()
        daemon.settle("connections past the limit")
    finally:
        assert milter.stop() == 0


def test_a_new_smtp_session_on_a_reused_connection_starts_unauthenticated(
    dns_bed: DnssecTestBed,
) -> None:
    # Sendmail's K reuses the milter connection for another client: nothing of the last
    # client (its authentication, its queue IDs) may carry over.
    milter = MilterProcess(policy(dns_bed.resolver_port, "max_connections: 8")
                           + "apply_to: authenticated\n")
    milter.start()
    try:
        with MtaClient(milter.listen) as mta:
            mta.negotiate()
            mta.send(p.Connect("c", "U", None, None), p.Macros(b"M", (("{auth_authen}", "al"),)),
                     p.Mail("<al@c.test>", ()), p.Rcpt("<x@plain.insecure.test>", ()))
            (refused,) = mta.read()
            assert refused.code == b"y", "an authenticated client's recipient is checked"
            mta.send(p.Abort(), p.QuitNewConnection(), p.Connect("c", "U", None, None),
                     p.Mail("<anon@c.test>", ()), p.Rcpt("<x@plain.insecure.test>", ()))
            assert mta.read() == [CONTINUE], "the next client did not authenticate"
    finally:
        assert milter.stop() == 0
