"""Postfix delivering for real (real-peers.md recipe 3): one ``danemilter run`` is both
the milter of a private Postfix (RCPT verdict, header) and its ``smtp_tls_policy_maps``
socketmap, and Postfix's smtp client delivers by MX through the DNSSEC test bed to a
STARTTLS receiving server, from a private mount namespace.

What the milter promised at RCPT is what delivery keeps: a DANE domain whose MX
certificate matches is delivered over a "Verified TLS connection"; one whose certificate
does not match stays deferred; a ``require`` domain without TLSA (accepted under
``on_fail: tag``) stays deferred (dane-only); a ``try`` domain without TLSA is delivered
opportunistically. Delivered messages carry the milter's header from RCPT time.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.delivery import DeliveringPostfix, DeliveryWorld, domain, message
from tests.support.milterproc import MilterProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

POLICY = """\
deadline: 5
resolver: {{address: {address}, port: {port}}}
policy:
  default: {{dane: try}}
  domains:
    plain.deliver.test: {{dane: require, on_fail: tag}}
    defer.deliver.test: {{dane: require, on_fail: defer}}
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
def postfix(world: DeliveryWorld, daemon: MilterProcess) -> Iterator[DeliveringPostfix]:
    # The main.cf lines of packaging/postfix/main.cf, with this test's socket paths.
    server = DeliveringPostfix(world, daemon.postfix_address,
                               f"socketmap:unix:{daemon.root / 'policy.sock'}:dane")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def submitted(postfix: DeliveringPostfix) -> dict[str, str]:
    """One message per domain, each accepted at RCPT (the milter's verdict), except
    defer.deliver.test, which the milter defers at RCPT."""
    replies = {}
    for name in ("good", "bad", "plain", "opp", "defer"):
        rcpt = f"u@{domain(name)}"
        result = postfix.submit([rcpt], message(name))
        replies[name] = f"{result.replies[0].code} {result.replies[0].text}"
    return replies


def test_rcpt_verdicts(submitted: dict[str, str]) -> None:
    for name in ("good", "bad", "plain", "opp"):
        assert submitted[name].startswith("250"), submitted
    assert submitted["defer"].startswith("450 4.7.4"), submitted


def _delivered(world: DeliveryWorld, name: str) -> list[object]:
    assert world.receiver is not None
    return list(world.receiver.for_recipient(f"u@{domain(name)}"))


def test_dane_domain_is_delivered_over_verified_tls(world: DeliveryWorld,
                                                   postfix: DeliveringPostfix,
                                                   submitted: dict[str, str]) -> None:
    line = postfix.wait_for_log(f"to=<u@{domain('good')}>", "status=sent")
    assert postfix.wait_for_log("Verified TLS connection established to "
                                f"mx.{domain('good')}")
    received = world.received(f"u@{domain('good')}")
    assert received.tls
    header = received.message.get_all("X-DANE-Status")
    assert header == [f"{domain('good')}; status=dane; usage=8; ocsp=off; action=accept"], line


def test_mismatching_certificate_stays_deferred(world: DeliveryWorld,
                                                postfix: DeliveringPostfix,
                                                submitted: dict[str, str]) -> None:
    line = postfix.wait_for_log(f"to=<u@{domain('bad')}>", "status=deferred")
    assert "Server certificate not verified" in line, line
    assert "no matching DANE TLSA records" in postfix.log_text()
    assert _delivered(world, "bad") == []


def test_require_domain_without_tlsa_stays_deferred(world: DeliveryWorld,
                                                    postfix: DeliveringPostfix,
                                                    submitted: dict[str, str]) -> None:
    # Accepted at RCPT (on_fail: tag, header says status=none); the socketmap's
    # dane-only keeps the rule at delivery.
    line = postfix.wait_for_log(f"to=<u@{domain('plain')}>", "status=deferred")
    assert "no TLSA records found" in line, line
    assert _delivered(world, "plain") == []


def test_try_domain_without_tlsa_is_delivered_opportunistically(
        world: DeliveryWorld, postfix: DeliveringPostfix,
        submitted: dict[str, str]) -> None:
    postfix.wait_for_log(f"to=<u@{domain('opp')}>", "status=sent")
    assert postfix.wait_for_log(f"TLS connection established to mx.{domain('opp')}")
    assert "Verified TLS connection established to mx." + domain("opp") \
        not in postfix.log_text()
    received = world.received(f"u@{domain('opp')}")
    assert received.message.get_all("X-DANE-Status") == [
        f"{domain('opp')}; status=none; usage=0; ocsp=off; action=accept"]


def test_postfix_asked_the_daemons_socketmap(daemon: MilterProcess,
                                             postfix: DeliveringPostfix,
                                             submitted: dict[str, str]) -> None:
    postfix.wait_for_log(f"to=<u@{domain('opp')}>", "status=sent")
    postfix.wait_for_log(f"to=<u@{domain('plain')}>", "status=deferred")
    log = daemon.log()
    for key, answer in ((domain("good"), "dane-only"), (domain("bad"), "dane-only"),
                        (domain("plain"), "dane-only"), (domain("opp"), "dane")):
        assert f"policy socket: socketmap {key} -> {answer}" in log, log[-3000:]
    # Every domain got a full answer: Postfix had no reason to ask a parent domain.
    assert "socketmap .deliver.test" not in log
