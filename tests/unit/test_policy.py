"""Decisions from (status, rule): the SMTP reply table of DESIGN.md, row by row."""

import pytest

from danemilter.config import DaneMode, ErrorAction, FailAction, OcspMode, Rule
from danemilter.dane import DomainState, DomainStatus, HostState, HostStatus
from danemilter.policy import Action, Reply, decide

HOST = HostStatus("mx.example.test", 10, ("127.0.0.1",), True, HostState.FAILED, None, (),
                  "TLSA lookup failed", 0)


def status(state: DomainState, usage: int = 0, hosts: tuple[HostStatus, ...] = ()) -> DomainStatus:
    return DomainStatus("example.test", state, usage, True, hosts, "because", 60)


TRY = Rule(DaneMode.TRY)
REQ_TAG = Rule(DaneMode.REQUIRE, on_fail=FailAction.TAG)
REQ_DEFER = Rule(DaneMode.REQUIRE, on_fail=FailAction.DEFER)
REQ_REJECT = Rule(DaneMode.REQUIRE, on_fail=FailAction.REJECT)
REQ_HOLD = Rule(DaneMode.REQUIRE, on_fail=FailAction.HOLD)
T, A = ErrorAction.TEMPFAIL, ErrorAction.ACCEPT


@pytest.mark.parametrize(
    ("state", "rule", "on_error", "action", "reply"),
    [
        (DomainState.DANE, TRY, T, Action.ACCEPT, None),
        (DomainState.DANE, REQ_REJECT, T, Action.ACCEPT, None),
        (DomainState.NONE, TRY, T, Action.ACCEPT, None),
        (DomainState.PARTIAL, TRY, T, Action.ACCEPT, None),
        (DomainState.TEMPFAIL, TRY, T, Action.ACCEPT, None),
        (DomainState.DANE_MISMATCH, TRY, T, Action.ACCEPT, None),
        (DomainState.NONE, REQ_TAG, T, Action.TAG, None),
        (DomainState.NONE, REQ_DEFER, T, Action.DEFER, (450, "4.7.4")),
        (DomainState.PARTIAL, REQ_DEFER, T, Action.DEFER, (450, "4.7.4")),
        (DomainState.UNUSABLE_TLSA, REQ_DEFER, T, Action.DEFER, (450, "4.7.4")),
        (DomainState.NONE, REQ_REJECT, T, Action.REJECT, (550, "5.7.4")),
        (DomainState.NONE, REQ_HOLD, T, Action.HOLD, None),
        (DomainState.DANE_MISMATCH, REQ_DEFER, T, Action.DEFER, (450, "4.7.5")),
        (DomainState.DANE_MISMATCH, REQ_REJECT, T, Action.REJECT, (550, "5.7.5")),
        # A domain that can never receive mail is refused whenever it is looked up.
        (DomainState.NULLMX, TRY, T, Action.REJECT, (556, "5.1.10")),
        (DomainState.NXDOMAIN, TRY, T, Action.REJECT, (550, "5.1.2")),
        (DomainState.NXDOMAIN, REQ_TAG, A, Action.REJECT, (550, "5.1.2")),
        # Lookup failures under require: on_error decides.
        (DomainState.TEMPFAIL, REQ_REJECT, T, Action.DEFER, (451, "4.4.3")),
        (DomainState.TEMPFAIL, REQ_REJECT, A, Action.ACCEPT, None),
    ],
)
def test_decision_table(
    state: DomainState, rule: Rule, on_error: ErrorAction, action: Action,
    reply: tuple[int, str] | None,
) -> None:
    decision = decide(status(state), rule, on_error)
    assert decision.action is action
    got = None if decision.reply is None else (decision.reply.code, decision.reply.xcode)
    assert got == reply
    assert decision.refuses_recipient is (reply is not None)
    if decision.reply is not None:
        assert "example.test" in decision.reply.text


def test_failed_hosts_defer_with_dnssec_code() -> None:
    decision = decide(status(DomainState.TEMPFAIL, hosts=(HOST,)), REQ_DEFER, T)
    assert decision.reply is not None
    assert (decision.reply.code, decision.reply.xcode) == (450, "4.7.5")


def test_configured_reply_text_replaces_the_default() -> None:
    rule = Rule(DaneMode.REQUIRE, on_fail=FailAction.REJECT, reply="Use DANE, please")
    decision = decide(status(DomainState.NONE), rule, T)
    assert decision.reply == Reply(550, "5.7.4", "Use DANE, please")


@pytest.mark.parametrize(
    ("ocsp", "usage", "expected"),
    [
        (OcspMode.OFF, 8, "off"),
        (OcspMode.AUTO, 8, "not-requested"),  # DANE-EE: a staple cannot be checked
        (OcspMode.AUTO, 12, "not-requested"),
        (OcspMode.AUTO, 4, "unknown"),
        (OcspMode.AUTO, 0, "unknown"),
        (OcspMode.REQUIRE, 8, "unknown"),
        (OcspMode.STRICT, 0, "unknown"),
    ],
)
def test_ocsp_field(ocsp: OcspMode, usage: int, expected: str) -> None:
    rule = Rule(DaneMode.TRY, ocsp=ocsp)
    assert decide(status(DomainState.DANE, usage=usage), rule, T).ocsp == expected


def test_header_value() -> None:
    decision = decide(status(DomainState.DANE, usage=8), TRY, T)
    assert decision.header_value() == (
        "example.test; status=dane; usage=8; ocsp=off; action=accept")
