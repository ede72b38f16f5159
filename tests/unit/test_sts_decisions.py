"""Decisions under ``tls: authenticated`` for domains DANE does not decide: the MTA-STS
state, the policy's mx patterns and the probes' PKIX verdicts (RFC 8461 §4.1, §4.2, §5),
row by row; which domains a probe is asked for; and what ``verify --nagios`` makes of
them."""

from __future__ import annotations

import pytest

from danemilter.commands.verify import nagios_verdict
from danemilter.config import DaneMode, ErrorAction, FailAction, OcspMode, ProbeMode, Rule
from danemilter.config.model import TlsRequirement
from danemilter.judge import DaneVerdict, OcspState, PkixVerdict
from danemilter.mtasts import StsMode, StsPolicy, StsState, StsStatus
from danemilter.policy import Action, decide, wants_probe
from danemilter.probe_result import DomainProbe, ProbeResult, Stage
from danemilter.status import DomainState, DomainStatus, HostState, HostStatus
from danemilter.tlsa import TLSARecord

DOMAIN = "example.net"
DANE_RECORD = TLSARecord(3, 1, 1, bytes(32))
T = ErrorAction.TEMPFAIL


def host(name: str, state: HostState = HostState.NONE, address: str = "192.0.2.1"
         ) -> HostStatus:
    records = (DANE_RECORD,) if state is HostState.DANE else ()
    return HostStatus(name, 10, (address,), True, state, name if records else None, records,
                      "test", 300)


MX1 = host("mx1.example.net")
MX2 = host("mx2.example.net", address="192.0.2.2")
OUTSIDE = host("mail.elsewhere.test", address="192.0.2.3")
DANE_MX = host("dane.example.net", HostState.DANE, address="192.0.2.4")


def status(*hosts: HostStatus, state: DomainState = DomainState.NONE) -> DomainStatus:
    return DomainStatus(DOMAIN, state, 0, True, hosts, "no TLSA records", 300)


def sts(mode: StsMode | None, *mx: str, state: StsState | None = None) -> StsStatus:
    if mode is None:
        return StsStatus(DOMAIN, state or StsState.ABSENT, None, None, "no policy")
    return StsStatus.of(DOMAIN, StsPolicy(mode, 86400, mx), "id1", f"mode {mode}")


def pkix(verdict: PkixVerdict, address: str = "192.0.2.1", *,
         failed_at: Stage | None = None) -> ProbeResult:
    return ProbeResult(address=address, port=25, starttls=failed_at is None,
                       tls_version=None if failed_at else "TLSv1.3",
                       dane=DaneVerdict.NOT_APPLICABLE, depth=None,
                       ocsp=OcspState.NOT_REQUESTED, reason="TLS without DANE",
                       failed_at=failed_at, pkix=verdict,
                       pkix_reason="certificate has expired (depth 0)"
                       if verdict is PkixVerdict.FAILED else "")


AUTH = Rule(DaneMode.TRY, tls=TlsRequirement.AUTHENTICATED, on_fail=FailAction.REJECT,
            probe=ProbeMode.INLINE)
ENFORCE = sts(StsMode.ENFORCE, "mx1.example.net", "*.example.net")
OK, FAIL, UNCHECKED = PkixVerdict.VERIFIED, PkixVerdict.FAILED, PkixVerdict.NOT_CHECKED
UNREACHED = pkix(UNCHECKED, failed_at=Stage.CONNECT)


@pytest.mark.parametrize(
    ("hosts", "policy", "probes", "action", "reply", "why"),
    [
        # DNS alone (no probe yet, or probe: off): the policy and its mx patterns.
        ((MX1,), ENFORCE, None, Action.ACCEPT, None, ""),
        ((MX1,), sts(StsMode.TESTING, "mx1.example.net"), None, Action.REJECT,
         (550, "5.7.4"), "MTA-STS is testing"),
        ((MX1,), sts(StsMode.NONE), None, Action.REJECT, (550, "5.7.4"), "MTA-STS is none"),
        ((MX1,), sts(None), None, Action.REJECT, (550, "5.7.4"), "MTA-STS is absent"),
        ((MX1,), sts(None, state=StsState.INVALID), None, Action.REJECT, (550, "5.7.4"),
         "MTA-STS is invalid"),
        ((MX1,), sts(None, state=StsState.TEMPFAIL), None, Action.DEFER, (450, "4.7.5"),
         "no policy"),
        ((OUTSIDE,), ENFORCE, None, Action.REJECT, (550, "5.7.4"), "no MX host matches"),
        # One named host is enough for DNS (RFC 8461 §4.1: the other is never used).
        ((OUTSIDE, MX2), ENFORCE, None, Action.ACCEPT, None, ""),
        # Probes: every named host's chain must pass PKIX for its name (§4.2).
        ((MX1,), ENFORCE, [[pkix(OK)]], Action.ACCEPT, None, ""),
        ((MX1,), ENFORCE, [[pkix(FAIL)]], Action.REJECT, (550, "5.7.5"),
         "MX host mx1.example.net [192.0.2.1] fails the MTA-STS certificate check: "
         "certificate has expired"),
        ((MX1, MX2), ENFORCE, [[pkix(OK)], [pkix(FAIL, "192.0.2.2")]], Action.REJECT,
         (550, "5.7.5"), "mx2.example.net [192.0.2.2]"),
        # A host outside the patterns is never delivered to: its certificate is moot.
        ((MX1, OUTSIDE), ENFORCE, [[pkix(OK)], [pkix(FAIL, "192.0.2.3")]], Action.ACCEPT,
         None, ""),
        # A probe that reached no TLS, or an unjudged chain, proves nothing.
        ((MX1,), ENFORCE, [[UNREACHED]], Action.ACCEPT, None, ""),
        ((MX1,), ENFORCE, [[pkix(UNCHECKED)]], Action.ACCEPT, None, ""),
        # Partial DANE: the DANE host is judged by DANE, the other by MTA-STS.
        ((DANE_MX, MX1), ENFORCE, [[pkix(UNCHECKED, "192.0.2.4")], [pkix(FAIL)]],
         Action.REJECT, (550, "5.7.5"), "mx1.example.net"),
        ((DANE_MX, OUTSIDE), ENFORCE, None, Action.REJECT, (550, "5.7.4"),
         "no MX host matches"),
    ],
)
def test_authenticated_rule_table(hosts: tuple[HostStatus, ...], policy: StsStatus,
                                  probes: list[list[ProbeResult]] | None, action: Action,
                                  reply: tuple[int, str] | None, why: str) -> None:
    state = DomainState.PARTIAL if DANE_MX in hosts else DomainState.NONE
    decision = decide(status(*hosts, state=state), AUTH, T, probes, policy)
    assert decision.action is action, decision
    got = None if decision.reply is None else (decision.reply.code, decision.reply.xcode)
    assert got == reply
    assert why in decision.reason
    assert decision.sts == str(policy.state)
    if decision.reply is not None:
        assert DOMAIN in decision.reply.text


def test_a_pkix_failure_is_tagged_under_on_fail_tag() -> None:
    rule = Rule(DaneMode.TRY, tls=TlsRequirement.AUTHENTICATED, on_fail=FailAction.TAG)
    decision = decide(status(MX1), rule, T, [[pkix(FAIL)]], ENFORCE)
    assert (decision.action, decision.reply) == (Action.TAG, None)
    assert "fails the MTA-STS certificate check" in decision.reason


def test_pkix_verdicts_do_not_matter_without_the_authenticated_rule() -> None:
    decision = decide(status(MX1), Rule(DaneMode.TRY), T, [[pkix(FAIL)]], None)
    assert decision.action is Action.ACCEPT


@pytest.mark.parametrize(
    ("state", "rule", "policy", "expected"),
    [
        # Enforce-mode hosts are probed for their certificates when the rule probes...
        (DomainState.NONE, AUTH, ENFORCE, True),
        (DomainState.UNUSABLE_TLSA, AUTH, ENFORCE, True),
        # ... not when it does not, nor for a policy that cannot satisfy the rule anyway.
        (DomainState.NONE, Rule(DaneMode.TRY, tls=TlsRequirement.AUTHENTICATED), ENFORCE,
         False),
        (DomainState.NONE, AUTH, sts(StsMode.TESTING, "mx1.example.net"), False),
        (DomainState.NONE, AUTH, None, False),
        # OCSP rules and DANE hosts were probed before MTA-STS came, and still are.
        (DomainState.NONE, Rule(DaneMode.TRY, ocsp=OcspMode.REQUIRE, probe=ProbeMode.INLINE),
         None, True),
        (DomainState.PARTIAL, AUTH, None, True),
        (DomainState.NXDOMAIN, AUTH, ENFORCE, False),
    ],
)
def test_which_domains_are_probed(state: DomainState, rule: Rule, policy: StsStatus | None,
                                  expected: bool) -> None:
    assert wants_probe(status(MX1, state=state), rule, policy) is expected


@pytest.mark.parametrize(
    ("hosts", "policy", "probes", "code", "note"),
    [
        # DANE's code stands: "none" is CRITICAL for DANE whatever MTA-STS says...
        ((MX1,), ENFORCE, ((pkix(OK),),), 2, ""),
        ((MX1,), sts(None, state=StsState.INVALID), ((pkix(OK),),), 2, "MTA-STS invalid"),
        # ... and MTA-STS trouble raises a partial domain's WARNING to what it costs.
        ((DANE_MX, MX1), ENFORCE, ((), (pkix(OK),)), 1, ""),
        ((DANE_MX, MX1), sts(None, state=StsState.TEMPFAIL), ((), ()), 1, "MTA-STS tempfail"),
        ((DANE_MX, MX1), ENFORCE, ((), (pkix(FAIL),)), 2,
         "mx1.example.net [192.0.2.1] MTA-STS certificate check failed: certificate has "
         "expired"),
        ((DANE_MX, OUTSIDE), ENFORCE, ((), ()), 2, "no MX host matches the MTA-STS policy"),
        # A host outside the patterns is not used: its certificate is not MTA-STS's concern.
        ((DANE_MX, MX1, OUTSIDE), ENFORCE, ((), (pkix(OK),), (pkix(FAIL, "192.0.2.3"),)), 1,
         ""),
    ],
)
def test_monitoring_reports_mta_sts(hosts: tuple[HostStatus, ...], policy: StsStatus,
                                    probes: tuple[tuple[ProbeResult, ...], ...], code: int,
                                    note: str) -> None:
    state = DomainState.PARTIAL if DANE_MX in hosts else DomainState.NONE
    got_code, notes = nagios_verdict(DomainProbe(status(*hosts, state=state), probes), policy)
    assert got_code == code, notes
    assert note in notes
    if not note:
        assert "MTA-STS" not in notes
