"""Issue 16 items 4 and 7: hostile DNS data against ``danemilter run`` in a real Postfix.

* 1,000 MX hosts (A and TLSA each) for every name below many.dane.test, asked by four
  SMTP sessions at once while other sessions ask for a small DANE domain, with the
  daemon under RLIMIT_NOFILE 1024: every lookup is answered, the small domain as
  ``dane``, the big ones from their ten most preferred hosts.
* Twelve DANE hosts of one preference: more than are evaluated, so not ``dane``.
* An MX target of 253 characters: no TLSA name can be made of it, a host verdict
  (``none``), not the internal-error path.
"""

from __future__ import annotations

import resource
import threading
from collections.abc import Iterator

import pytest

from tests.support.dnsbed import DnssecTestBed
from tests.support.hostile_zones import (
    DANE_DOMAIN,
    LONG_TARGET_DOMAIN,
    MANY_MX_DOMAINS,
    SPLIT_DOMAIN,
    zones,
)
from tests.support.milterproc import MilterProcess
from tests.support.postfix import PrivatePostfix, SmtpSink, Submission

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

HEADER = "X-DANE-Status"
NOFILE = 1024


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[PrivatePostfix, SmtpSink, MilterProcess]]:
    with DnssecTestBed(zones()) as bed:
        sink = SmtpSink()
        sink.start()
        milter = MilterProcess(
            f"resolver: {{address: 127.0.0.1, port: {bed.resolver_port}, timeout: 3}}\n"
            "deadline: 15\npolicy:\n  default: {dane: require, on_fail: defer}\n",
            log_level="info")
        milter.start()
        assert milter.process is not None
        # The running daemon gets the limit (prlimit(2), resource.prlimit): 1,024
        # descriptors, the usual soft default.
        resource.prlimit(milter.process.pid, resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
        postfix = PrivatePostfix(milter.postfix_address, sink.port,
                                 extra=["milter_command_timeout=60s"])
        try:
            postfix.start()
            yield postfix, sink, milter
        finally:
            postfix.stop()
            milter.stop()
            sink.stop()


def _codes(sub: Submission) -> list[int]:
    return [r.code for r in sub.replies]


def test_a_thousand_mx_hosts_starve_nothing(
        stack: tuple[PrivatePostfix, SmtpSink, MilterProcess]) -> None:
    postfix, _, milter = stack
    with open(f"/proc/{milter.process.pid}/limits") as limits:  # type: ignore[union-attr]
        assert any(line.startswith("Max open files") and f" {NOFILE} " in line
                   for line in limits)
    jobs = [[f"u@{domain}"] for domain in MANY_MX_DOMAINS] + [[f"v{i}@{DANE_DOMAIN}"]
                                                             for i in range(4)]
    results: dict[int, Submission | BaseException] = {}
    start = threading.Barrier(len(jobs))

    def send(index: int, recipients: list[str]) -> None:
        start.wait(timeout=30)
        try:
            results[index] = postfix.submit(recipients, "Subject: many\n\nhello\n")
        except BaseException as exc:
            results[index] = exc

    threads = [threading.Thread(target=send, args=(i, job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    replies = [results[i] for i in range(len(jobs))]
    assert all(isinstance(r, Submission) for r in replies), replies
    # All hosts of the big domains are DANE; the ten most preferred are all of one
    # preference (10) and the eleventh is of the next (11): the cut splits nothing.
    assert [_codes(r) for r in replies] == [[250]] * len(jobs), replies  # type: ignore[arg-type]
    log = milter.log()
    assert "Too many open files" not in log
    assert "internal error" not in log


def test_more_hosts_of_one_preference_than_are_evaluated_is_not_dane(
        stack: tuple[PrivatePostfix, SmtpSink, MilterProcess]) -> None:
    postfix, _, _ = stack
    sub = postfix.submit([f"u@{SPLIT_DOMAIN}"], "Subject: split\n\nhello\n")
    assert _codes(sub) == [450]
    assert "status partial" in sub.replies[0].text


def test_an_mx_target_too_long_for_a_tlsa_name_is_a_host_verdict(
        stack: tuple[PrivatePostfix, SmtpSink, MilterProcess]) -> None:
    postfix, _, milter = stack
    sub = postfix.submit([f"u@{LONG_TARGET_DOMAIN}"], "Subject: long\n\nhello\n")
    assert _codes(sub) == [450], sub.replies
    assert sub.replies[0].text.startswith("4.7.4"), sub.replies
    assert "status none" in sub.replies[0].text
    assert "Traceback" not in milter.log()
