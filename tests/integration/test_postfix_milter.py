"""The milter inside a real private Postfix, deciding over the real DNSSEC test bed.

Postfix's smtpd talks to ``danemilter run`` over a unix socket, through each milter
transport (``transport: asyncio`` and ``transport: libmilter``: one whole stack each);
accepted mail is relayed to smtp-sink, whose dumps are read back to check the exact
headers. The policy is changed between tests with SIGHUP, so reloads are exercised all
along.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count

import pytest

from tests.support.dnsbed import DnssecTestBed
from tests.support.milterproc import MilterProcess
from tests.support.postfix import PrivatePostfix, SmtpSink, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

HEADER = "X-DANE-Status"
_ids = count(1)


@dataclass
class Stack:
    bed: DnssecTestBed
    milter: MilterProcess
    postfix: PrivatePostfix
    sink: SmtpSink
    transport: str

    def policy(self, body: str, *, deadline: float = 5, on_error: str = "tempfail",
               extra: str = "") -> str:
        return (f"transport: {self.transport}\n"
                f"resolver: {{address: 127.0.0.1, port: {self.bed.resolver_port}, "
                f"timeout: 1}}\ndeadline: {deadline}\non_error: {on_error}\n{extra}"
                f"policy:\n{body}")

    def use(self, body: str, **kw: object) -> None:
        self.milter.reload(self.policy(body, **kw))  # type: ignore[arg-type]


def message(marker: str, extra_headers: str = "") -> str:
    return (f"Message-ID: {marker}\nFrom: alice@client.test\nTo: someone@example.test\n"
            f"Subject: danemilter test\n{extra_headers}\nhello\n")


def new_marker() -> str:
    return f"<t{next(_ids)}.{time.monotonic_ns()}@client.test>"


@pytest.fixture(scope="module", params=["asyncio", "libmilter"])
def stack(request: pytest.FixtureRequest, dns_bed: DnssecTestBed) -> Iterator[Stack]:
    """The whole stack, once through each milter transport."""
    sink = SmtpSink()
    sink.start()
    milter = MilterProcess("")
    stack = Stack(dns_bed, milter, None, sink, request.param)  # type: ignore[arg-type]
    milter.write_config(stack.policy("  default: {dane: try}\n"))
    milter.start()
    postfix = PrivatePostfix(milter.postfix_address, sink.port)
    stack.postfix = postfix
    try:
        wait_for(lambda: f"(transport {request.param}," in milter.log(), 10,
                 f"the milter listening through transport {request.param}")
        postfix.start()
        yield stack
    finally:
        postfix.stop()
        code = milter.stop()
        sink.stop()
        assert code == 0, "the milter must exit cleanly on SIGTERM"


def replies(submission: object) -> list[tuple[int, str]]:
    return [(r.code, r.text) for r in submission.replies]  # type: ignore[attr-defined]


def test_try_tags_every_domain_and_refuses_nothing(stack: Stack) -> None:
    stack.use("  default: {dane: try, on_fail: reject}\n")
    marker = new_marker()
    sub = stack.postfix.submit(
        ["a@ee.secure.test", "b@plain.insecure.test", "c@ta.secure.test", "d@EE.secure.test"],
        message(marker))
    assert [code for code, _ in replies(sub)] == [250, 250, 250, 250]
    delivered = stack.sink.wait_for_message(marker)
    assert sorted(delivered.get_all(HEADER)) == [
        "ee.secure.test; status=dane; usage=8; ocsp=off; action=accept",
        "plain.insecure.test; status=none; usage=0; ocsp=off; action=accept",
        "ta.secure.test; status=dane; usage=4; ocsp=off; action=accept",
    ]


@pytest.mark.parametrize(
    ("on_fail", "code", "enhanced"), [("defer", 450, "4.7.4"), ("reject", 550, "5.7.4")]
)
def test_require_refuses_only_the_recipient_without_dane(
    stack: Stack, on_fail: str, code: int, enhanced: str
) -> None:
    stack.use(f"  default: {{dane: require, on_fail: {on_fail}}}\n")
    marker = new_marker()
    sub = stack.postfix.submit(["a@ee.secure.test", "b@plain.insecure.test",
                                "c@partial.secure.test"], message(marker))
    got = replies(sub)
    assert got[0][0] == 250
    assert got[1][0] == code
    assert got[1][1].startswith(enhanced)
    assert "plain.insecure.test" in got[1][1]
    assert got[2][0] == code  # partial: one MX host is not DANE
    delivered = stack.sink.wait_for_message(marker)
    assert delivered.get_all(HEADER) == [
        "ee.secure.test; status=dane; usage=8; ocsp=off; action=accept"]
    assert "<b@plain.insecure.test>" not in delivered["X-Rcpt-Args"]


def test_require_tag_accepts_and_says_so(stack: Stack) -> None:
    stack.use("  default: {dane: require, on_fail: tag}\n")
    marker = new_marker()
    sub = stack.postfix.submit(["b@plain.insecure.test"], message(marker))
    assert [code for code, _ in replies(sub)] == [250]
    delivered = stack.sink.wait_for_message(marker)
    assert delivered.get_all(HEADER) == [
        "plain.insecure.test; status=none; usage=0; ocsp=off; action=tag"]


def test_require_hold_puts_the_message_in_the_hold_queue(stack: Stack) -> None:
    stack.use("  default: {dane: require, on_fail: hold}\n")
    sub = stack.postfix.submit(["b@plain.insecure.test", "a@ee.secure.test"],
                               message(new_marker()))
    assert [code for code, _ in replies(sub)] == [250, 250]
    assert sub.queue_id is not None
    held: list[dict[str, object]] = []

    def in_hold() -> bool:
        held[:] = [e for e in stack.postfix.queue() if e["queue_id"] == sub.queue_id]
        return bool(held) and held[0]["queue_name"] == "hold"

    wait_for(in_hold, 20, "the message in the hold queue")
    assert sorted(r["address"] for r in held[0]["recipients"]) == [  # type: ignore[attr-defined]
        "a@ee.secure.test", "b@plain.insecure.test"]


def test_per_domain_rules_in_one_message(stack: Stack) -> None:
    stack.use("  default: {dane: try}\n  domains:\n"
              "    plain.insecure.test: {dane: require, on_fail: defer,"
              " reply: \"This domain needs DANE\"}\n"
              "    .secure.test: {dane: require, on_fail: reject}\n")
    marker = new_marker()
    sub = stack.postfix.submit(
        ["a@plain.insecure.test", "b@notlsa.secure.test", "c@ee.secure.test"], message(marker))
    got = replies(sub)
    assert got[0] == (450, "4.7.4 This domain needs DANE")
    assert got[1][0] == 550 and got[1][1].startswith("5.7.4")
    assert got[2][0] == 250
    delivered = stack.sink.wait_for_message(marker)
    assert delivered.get_all(HEADER) == [
        "ee.secure.test; status=dane; usage=8; ocsp=off; action=accept"]


def test_forged_status_headers_are_removed(stack: Stack) -> None:
    stack.use("  default: {dane: try}\n")
    marker = new_marker()
    forged = (f"{HEADER}: plain.insecure.test; status=dane; usage=8; ocsp=good; action=accept\n"
              f"x-dane-status: ee.secure.test; status=dane\n")
    stack.postfix.submit(["b@plain.insecure.test"], message(marker, forged))
    delivered = stack.sink.wait_for_message(marker)
    assert delivered.get_all(HEADER) == [
        "plain.insecure.test; status=none; usage=0; ocsp=off; action=accept"]


@pytest.mark.parametrize(
    ("recipient", "code", "enhanced"),
    [("x@nullmx.secure.test", 556, "5.1.10"), ("x@nxdomain.secure.test", 550, "5.1.2")],
)
def test_domains_that_cannot_receive_mail_are_refused(
    stack: Stack, recipient: str, code: int, enhanced: str
) -> None:
    # Refused where the rule demands DANE (issue 14: under try they are only tagged).
    stack.use("  default: {dane: require}\n")
    sub = stack.postfix.submit([recipient], message(new_marker()))
    (got,) = replies(sub)
    assert got[0] == code
    assert got[1].startswith(enhanced)
    stack.use("  default: {dane: try}\n")
    sub = stack.postfix.submit([recipient], message(new_marker()))
    assert [r[0] for r in replies(sub)] == [250]


@pytest.mark.parametrize(
    ("recipient", "code", "enhanced"),
    [("x@badmx.secure.test", 451, "4.4.3"), ("x@badtlsa.secure.test", 450, "4.7.5")],
)
def test_bogus_dns_under_require_is_a_temporary_failure(
    stack: Stack, recipient: str, code: int, enhanced: str
) -> None:
    stack.use("  default: {dane: require, on_fail: reject}\n")
    sub = stack.postfix.submit([recipient], message(new_marker()))
    (got,) = replies(sub)
    assert got[0] == code
    assert got[1].startswith(enhanced)


@pytest.mark.parametrize(("on_error", "code"), [("tempfail", 451), ("accept", 250)])
def test_resolver_down_gives_on_error_within_the_deadline(
    stack: Stack, on_error: str, code: int
) -> None:
    stack.use("  default: {dane: require, on_fail: reject}\n", deadline=2, on_error=on_error)
    stack.bed.stop_resolver()
    try:
        started = time.monotonic()
        # A domain no other test asks for, so that no cached status can answer.
        sub = stack.postfix.submit([f"x@{on_error}.never-cached.secure.test"],
                                   message(new_marker()))
        elapsed = time.monotonic() - started
    finally:
        stack.bed.start_resolver()
    (got,) = replies(sub)
    assert got[0] == code
    assert elapsed < 2 + 2.5, f"RCPT answered after {elapsed:.2f} s, deadline 2 s"


def test_broken_policy_on_reload_keeps_serving_the_old_one(stack: Stack) -> None:
    stack.use("  default: {dane: require, on_fail: reject}\n")
    stack.milter.reload("policy: [this is not valid\n", expect="reload failed")
    assert "keeping the current policy" in stack.milter.log()
    sub = stack.postfix.submit(["b@plain.insecure.test"], message(new_marker()))
    (got,) = replies(sub)
    assert got[0] == 550, "the old policy (require/reject) must still apply"


def test_log_lines_carry_the_queue_id(stack: Stack) -> None:
    stack.use("  default: {dane: try}\n")
    marker = new_marker()
    sub = stack.postfix.submit(["a@ee.secure.test", "b@ta.secure.test"], message(marker))
    assert sub.queue_id is not None
    stack.sink.wait_for_message(marker)
    # Accepted recipients: one line per message, at its end, grouped by domain. The
    # daemon writes its log from a thread of its own (danemilter.logwriter): wait for it.
    wait_for(lambda: "rcpt=<b@ta.secure.test>" in stack.milter.log(), 10,
             "the end-of-message line")
    lines = [line for line in stack.milter.log().splitlines()
             if "rcpt=<b@ta.secure.test>" in line]
    assert lines, stack.milter.log()[-2000:]
    assert lines[-1].endswith(
        f" {sub.queue_id}: rcpt=<a@ee.secure.test> domain=ee.secure.test status=dane usage=8 "
        "ocsp=off action=accept; rcpt=<b@ta.secure.test> domain=ta.secure.test status=dane "
        "usage=4 ocsp=off action=accept")
    # A refused recipient is logged when it is refused (with NOQUEUE when it came first).
    stack.use("  default: {dane: require, on_fail: defer}\n")
    sub = stack.postfix.submit(["c@plain.insecure.test", "d@ee.secure.test"],
                               message(new_marker()))
    assert [code for code, _ in replies(sub)] == [450, 250]
    refused = ("NOQUEUE: rcpt=<c@plain.insecure.test> domain=plain.insecure.test "
               "status=none usage=0 ocsp=off action=defer")
    wait_for(lambda: refused in stack.milter.log(), 10, "the refusal's line")
    wait_for(lambda: f"{sub.queue_id}: rcpt=<d@ee.secure.test> domain=ee.secure.test"
             in stack.milter.log(), 10, "the end-of-message line")


def test_warm_domains_are_answered_from_the_cache_with_the_resolver_stopped(
    stack: Stack,
) -> None:
    stack.use("  default: {dane: require, on_fail: reject}\n", deadline=2)
    warm = stack.postfix.submit(["a@ee.secure.test"], message(new_marker()))
    assert replies(warm)[0][0] == 250
    stack.bed.stop_resolver()
    try:
        marker = new_marker()
        started = time.monotonic()
        sub = stack.postfix.submit(["b@ee.secure.test"], message(marker))
        elapsed = time.monotonic() - started
    finally:
        stack.bed.start_resolver()
    assert replies(sub)[0][0] == 250
    assert elapsed < 1.5, "a cached answer must not wait for the dead resolver"
    delivered = stack.sink.wait_for_message(marker)
    assert delivered.get_all(HEADER) == [
        "ee.secure.test; status=dane; usage=8; ocsp=off; action=accept"]
