"""Exim 4.96 for real (unpacked from Debian's packages, real-peers.md recipe 2) running the
shipped packaging/exim/ fragments (``.include``d verbatim) against ``danemilter run``'s
policy socket, delivering by MX through the DNSSEC test bed to a STARTTLS receiver.

* acl_rcpt.conf: RCPT deferred and rejected with danemilter's replies, its header added
  (once per domain), a deferral when the socket does not answer;
* routers.conf + transports.conf: a DANE domain is delivered with ``CV=dane``; a
  require-DANE domain whose MX certificate does not match is not delivered; a require
  domain without TLSA is deferred, not bounced; a try domain without TLSA is delivered
  opportunistically.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.support.delivery import DeliveryWorld, domain, message
from tests.support.exim import PrivateExim
from tests.support.milterproc import MilterProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

POLICY = """\
deadline: 5
resolver: {{address: {address}, port: {port}}}
policy:
  default: {{dane: try}}
  domains:
    plain.deliver.test: {{dane: require, on_fail: tag}}
    badreq.deliver.test: {{dane: require, on_fail: tag}}
    defer.deliver.test: {{dane: require, on_fail: defer}}
    reject.deliver.test: {{dane: require, on_fail: reject}}
"""


@pytest.fixture(scope="module")
def world() -> Iterator[DeliveryWorld]:
    with DeliveryWorld() as built:
        yield built


@pytest.fixture(scope="module")
def daemon(world: DeliveryWorld) -> Iterator[MilterProcess]:
    with world.daemon(POLICY) as milter:
        yield milter


@pytest.fixture(scope="module")
def exim(world: DeliveryWorld, daemon: MilterProcess) -> Iterator[PrivateExim]:
    server = PrivateExim(daemon.root / "policy.sock", world.resolv_conf)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def submitted(exim: PrivateExim) -> dict[str, tuple[int, str]]:
    replies: dict[str, tuple[int, str]] = {}
    for name in ("good", "badreq", "plain", "opp"):
        # Two recipients of one domain: one header for the domain, as the milter adds.
        rcpts, data = exim.submit([f"u@{domain(name)}", f"v@{domain(name)}"], message(name))
        assert data == 250, rcpts
        replies[name] = (rcpts[0].code, rcpts[0].text)
    for name in ("defer", "reject"):
        rcpts, data = exim.submit([f"u@{domain(name)}"], message(name))
        assert data is None
        # Exim wraps a long reply into a multiline one (each line with the enhanced
        # code); one line again here.
        text = rcpts[0].text
        xcode = text.partition(" ")[0]
        replies[name] = (rcpts[0].code, text.replace(f"\n{xcode} ", " "))
    return replies


def test_acl_defers_and_rejects_with_danemilters_replies(
        submitted: dict[str, tuple[int, str]]) -> None:
    assert submitted["defer"] == (
        450, f"4.7.4 Recipient domain {domain('defer')} cannot be reached with DANE "
        "(status none) and policy requires it")
    assert submitted["reject"] == (
        550, f"5.7.4 Recipient domain {domain('reject')} cannot be reached with DANE "
        "(status none) and policy requires it")
    for name in ("good", "badreq", "plain", "opp"):
        assert submitted[name][0] == 250, submitted


def test_dane_domain_delivered_over_dane_with_the_header(
        world: DeliveryWorld, exim: PrivateExim,
        submitted: dict[str, tuple[int, str]]) -> None:
    line = exim.wait_for_log(f"=> u@{domain('good')}")
    assert "CV=dane" in line, line
    received = world.received(f"u@{domain('good')}")
    assert received.tls
    assert received.message.get_all("X-DANE-Status") == [
        f"{domain('good')}; status=dane; usage=8; ocsp=off; action=accept"]


def test_require_dane_domain_with_mismatching_certificate_is_not_delivered(
        world: DeliveryWorld, exim: PrivateExim,
        submitted: dict[str, tuple[int, str]]) -> None:
    line = exim.wait_for_log(f"== u@{domain('badreq')}")
    assert "defer" in line, line
    assert "certificate" in line.lower(), line
    assert world.receiver is not None
    assert world.receiver.for_recipient(f"u@{domain('badreq')}") == []
    assert f"** u@{domain('badreq')}" not in exim.mainlog()


def test_require_domain_without_tlsa_is_deferred_not_bounced(
        world: DeliveryWorld, exim: PrivateExim,
        submitted: dict[str, tuple[int, str]]) -> None:
    # Exim's hosts_require_dane alone would bounce it ("DANE error: tlsa lookup FAIL");
    # the shipped router defers it, as Postfix's dane-only does.
    line = exim.wait_for_log(f"== u@{domain('plain')}")
    assert "R=danemilter_dane defer" in line, line
    assert "no DANE delivery possible now" in line, line
    assert f"** u@{domain('plain')}" not in exim.mainlog()
    assert world.receiver is not None
    assert world.receiver.for_recipient(f"u@{domain('plain')}") == []


def test_try_domain_without_tlsa_delivered_opportunistically(
        world: DeliveryWorld, exim: PrivateExim,
        submitted: dict[str, tuple[int, str]]) -> None:
    line = exim.wait_for_log(f"=> u@{domain('opp')}")
    assert "CV=no" in line, line
    received = world.received(f"u@{domain('opp')}")
    assert received.message.get_all("X-DANE-Status") == [
        f"{domain('opp')}; status=none; usage=0; ocsp=off; action=accept"]


def test_acl_defers_when_the_policy_socket_does_not_answer(
        world: DeliveryWorld, daemon: MilterProcess) -> None:
    # Same fragments, a socket nobody serves: RCPT defers (the fail string), and the
    # session goes on.
    down = PrivateExim(daemon.root / "nobody-here.sock", world.resolv_conf)
    down.configure()
    try:
        session = ("EHLO client.test\r\nMAIL FROM:<a@client.test>\r\n"
                   f"RCPT TO:<u@{domain('good')}>\r\nQUIT\r\n")
        done = subprocess.run(down.command("-bh", "127.0.0.1"), input=session,
                              capture_output=True, text=True, timeout=60, check=False)
        replies = [line for line in done.stdout.splitlines() if line[:3].isdigit()]
        assert "451 4.3.0 DANE policy service unavailable, try again later" in replies, \
            done.stdout + done.stderr
        assert replies[-1].startswith("221"), replies
    finally:
        down.stop()
