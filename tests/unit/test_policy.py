"""Decisions from (status, rule): the SMTP reply table of DESIGN.md, row by row."""

import pytest

from danemilter.config import DaneMode, ErrorAction, FailAction, OcspMode, Rule, Undeliverable
from danemilter.dane import DomainState, DomainStatus, HostState, HostStatus
from danemilter.policy import Action, Reply, decide
from danemilter.probe import ProbeResult

HOST = HostStatus("mx.example.test", 10, ("127.0.0.1",), True, HostState.FAILED, None, (),
                  "TLSA lookup failed", 0)


def status(state: DomainState, usage: int = 0, hosts: tuple[HostStatus, ...] = ()) -> DomainStatus:
    return DomainStatus("example.test", state, usage, True, hosts, "because", 60)


TRY = Rule(DaneMode.TRY)
TRY_DEFER = Rule(DaneMode.TRY, on_fail=FailAction.DEFER)
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
        # A mismatch gets on_fail under try too: TLSA records make authentication mandatory.
        (DomainState.DANE_MISMATCH, TRY, T, Action.TAG, None),
        (DomainState.DANE_MISMATCH, TRY_DEFER, T, Action.DEFER, (450, "4.7.5")),
        (DomainState.NONE, REQ_TAG, T, Action.TAG, None),
        (DomainState.NONE, REQ_DEFER, T, Action.DEFER, (450, "4.7.4")),
        (DomainState.PARTIAL, REQ_DEFER, T, Action.DEFER, (450, "4.7.4")),
        (DomainState.UNUSABLE_TLSA, REQ_DEFER, T, Action.DEFER, (450, "4.7.4")),
        (DomainState.NONE, REQ_REJECT, T, Action.REJECT, (550, "5.7.4")),
        (DomainState.NONE, REQ_HOLD, T, Action.HOLD, None),
        (DomainState.DANE_MISMATCH, REQ_DEFER, T, Action.DEFER, (450, "4.7.5")),
        (DomainState.DANE_MISMATCH, REQ_REJECT, T, Action.REJECT, (550, "5.7.5")),
        # A domain that can never receive mail (issue 14): tagged under try, refused
        # where the rule demands authenticated TLS, whatever on_fail says.
        (DomainState.NULLMX, TRY, T, Action.TAG, None),
        (DomainState.NXDOMAIN, TRY, T, Action.TAG, None),
        (DomainState.NULLMX, REQ_TAG, T, Action.REJECT, (556, "5.1.10")),
        (DomainState.NXDOMAIN, REQ_TAG, A, Action.REJECT, (550, "5.1.2")),
        (DomainState.NXDOMAIN, Rule(DaneMode.TRY, undeliverable=Undeliverable.REFUSE), T,
         Action.REJECT, (550, "5.1.2")),
        (DomainState.NULLMX, Rule(DaneMode.REQUIRE, undeliverable=Undeliverable.TAG), T,
         Action.TAG, None),
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


def probe(ocsp: str, *, url: bool = True, must_staple: bool = False,
          failed_at: str | None = None) -> ProbeResult:
    return ProbeResult(address="192.0.2.25", port=25, starttls=failed_at is None,
                       tls_version="TLSv1.3", dane="verified", depth=0,
                       ocsp=ocsp,  # type: ignore[arg-type]
                       reason="test", ocsp_url="http://ocsp.example/" if url else None,
                       must_staple=must_staple, failed_at=failed_at)  # type: ignore[arg-type]


REQ_OCSP = Rule(DaneMode.TRY, ocsp=OcspMode.REQUIRE, on_fail=FailAction.REJECT)
STRICT_OCSP = Rule(DaneMode.TRY, ocsp=OcspMode.STRICT, on_fail=FailAction.DEFER)


@pytest.mark.parametrize(
    ("rule", "probes", "action", "reply", "ocsp"),
    [
        (REQ_OCSP, [probe("good")], Action.ACCEPT, None, "good"),
        (REQ_OCSP, [probe("revoked")], Action.REJECT, (550, "5.7.5"), "revoked"),
        (REQ_OCSP, [probe("good"), probe("invalid")], Action.REJECT, (550, "5.7.5"), "invalid"),
        (REQ_OCSP, [probe("absent")], Action.REJECT, (550, "5.7.4"), "absent"),
        (REQ_OCSP, [probe("stale")], Action.REJECT, (550, "5.7.4"), "stale"),
        # No OCSP URL and no must-staple: "require" reports, does not enforce.
        (REQ_OCSP, [probe("absent", url=False)], Action.ACCEPT, None, "absent"),
        (REQ_OCSP, [probe("absent", url=False, must_staple=True)], Action.REJECT,
         (550, "5.7.4"), "absent"),
        (STRICT_OCSP, [probe("absent", url=False)], Action.DEFER, (450, "4.7.4"), "absent"),
        # A probe that never reached TLS says nothing about OCSP.
        (REQ_OCSP, [probe("absent", failed_at="connect")], Action.ACCEPT, None, "unknown"),
        (REQ_OCSP, [], Action.ACCEPT, None, "unknown"),
        (Rule(DaneMode.TRY, ocsp=OcspMode.AUTO), [probe("revoked")], Action.ACCEPT, None,
         "revoked"),
    ],
)
def test_ocsp_enforcement_from_probes(
    rule: Rule, probes: list[ProbeResult], action: Action, reply: tuple[int, str] | None,
    ocsp: str,
) -> None:
    # The probes of the domain's one MX host.
    decision = decide(status(DomainState.DANE, usage=4, hosts=(HOST,)), rule, T, [probes])
    assert decision.action is action
    got = None if decision.reply is None else (decision.reply.code, decision.reply.xcode)
    assert got == reply
    assert decision.ocsp == ocsp


def test_mismatch_from_a_probe_under_require() -> None:
    decision = decide(status(DomainState.DANE_MISMATCH, usage=8, hosts=(HOST,)), REQ_DEFER, T,
                      [[probe("not-requested")]])
    assert decision.reply is not None
    assert (decision.reply.code, decision.reply.xcode) == (450, "4.7.5")
    assert decision.header_value().startswith("example.test; status=dane-mismatch;")


def test_an_nxdomain_that_is_not_dnssec_proven_only_defers() -> None:
    # A forged NXDOMAIN must not bounce mail (issue 14; Postfix's
    # unknown_address_reject_code is 450 too).
    insecure = DomainStatus("example.test", DomainState.NXDOMAIN, 0, False, (), "nx", 60)
    decision = decide(insecure, REQ_REJECT, ErrorAction.TEMPFAIL)
    assert decision.action is Action.DEFER
    assert decision.reply == Reply(450, "4.1.2", "Recipient domain example.test not found "
                                   "(not DNSSEC-proven), try again later")
