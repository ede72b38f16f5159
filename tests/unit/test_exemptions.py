"""``policy.exceptions`` (issue 14 item 5): parsing with file:line errors, and what an
entry does to a decision before and after its date."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from danemilter.config import ConfigErrors, DaneMode, ErrorAction, FailAction, Rule, parse
from danemilter.policy import Action, decide
from danemilter.policy import exempt as apply_exemption
from danemilter.status import DomainState, DomainStatus

pytestmark = pytest.mark.timeout(10)

TODAY = date(2026, 12, 3)
POLICY = parse("""\
policy:
  default: {dane: require, on_fail: defer}
  exceptions:
    partner.example: {until: 2026-12-31, reason: "partner fixing DNSSEC, ticket 42"}
    .old.example: {until: 2026-11-30, reason: expired one}
""", "t.yaml").policy


def status(domain: str, state: DomainState) -> DomainStatus:
    return DomainStatus(domain, state, 0, True, (), "table", 60)


@pytest.mark.parametrize(
    ("domain", "state", "today", "action", "note"),
    [
        ("partner.example", DomainState.NONE, TODAY, Action.TAG, "would defer"),
        ("partner.example", DomainState.NONE, date(2026, 12, 31), Action.TAG, "would defer"),
        ("partner.example", DomainState.NONE, date(2027, 1, 1), Action.DEFER, "expired"),
        ("partner.example", DomainState.TEMPFAIL, TODAY, Action.TAG, "would defer"),
        ("partner.example", DomainState.NXDOMAIN, TODAY, Action.REJECT, None),
        ("partner.example", DomainState.DANE, TODAY, Action.ACCEPT, None),
        ("mx.old.example", DomainState.NONE, TODAY, Action.DEFER, "expired on 2026-11-30"),
        ("other.example", DomainState.NONE, TODAY, Action.DEFER, None),
    ],
)
def test_exemption_table(domain: str, state: DomainState, today: date, action: Action,
                         note: str | None) -> None:
    rule = POLICY.rule_for(domain)
    decision, said = apply_exemption(decide(status(domain, state), rule, ErrorAction.TEMPFAIL),
                                     POLICY, today)
    assert decision.action is action
    if action is Action.TAG:
        assert decision.reply is None
        assert "ticket 42" in decision.reason
        assert decision.header_value().endswith("action=tag")
    assert (said is None) is (note is None)
    if note is not None:
        assert said is not None and note in said


def test_the_most_specific_entry_wins() -> None:
    policy = parse("policy:\n  exceptions:\n"
                   "    .example: {until: 2030-01-01, reason: broad}\n"
                   "    a.example: {until: 2020-01-01, reason: narrow}\n", "t.yaml").policy
    assert policy.exemption_for("a.example") == ("a.example", policy.exceptions["a.example"])
    assert policy.exemption_for("b.example") == (".example", policy.exceptions[".example"])
    rule = Rule(DaneMode.REQUIRE, on_fail=FailAction.REJECT)
    decision, _ = apply_exemption(decide(status("a.example", DomainState.NONE), rule,
                                         ErrorAction.TEMPFAIL), policy, TODAY)
    assert decision.action is Action.REJECT  # the narrow entry expired; the broad one is not asked


@pytest.mark.parametrize(
    ("entry", "line", "message"),
    [
        ("    x.example: {until: tomorrow, reason: r}\n", 3, "must be a date like"),
        ("    x.example: {until: 2027-01-01}\n", 3, "needs reason"),
        ("    x.example: {reason: r}\n", 3, "needs until"),
        ("    x.example: {until: 2027-01-01, reason: r, scope: all}\n", 3, "unknown key 'scope'"),
        ("    'bad domain!': {until: 2027-01-01, reason: r}\n", 3, "policy.exceptions key"),
    ],
)
def test_bad_entries_name_the_line(entry: str, line: int, message: str) -> None:
    with pytest.raises(ConfigErrors) as caught:
        parse("policy:\n  exceptions:\n" + entry, "bad.yaml")
    error = caught.value.errors[0]
    assert error.line == line, str(error)
    assert message in str(error), str(error)


def test_dates_move_with_the_clock() -> None:
    (key, entry) = POLICY.exemption_for("partner.example") or ("", None)
    assert entry is not None and key == "partner.example"
    assert entry.active(entry.until) and not entry.active(entry.until + timedelta(days=1))
