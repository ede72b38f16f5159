"""The milter's callbacks driven through pymilter's TestCtx (no MTA, no DNS).

Domain statuses come from a table, so each test states exactly what the
verification core said and asserts what the milter made of it.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import Milter
import pytest
from Milter import testctx

from danemilter.config import (
    ApplyTo,
    DaneMode,
    ErrorAction,
    FailAction,
    Policy,
    ProbeMode,
    ProbeSettings,
    Rule,
    Settings,
    parse,
)
from danemilter.dane import DomainState, DomainStatus
from danemilter.deadline import Deadline
from danemilter.milter.libmilter import DaneMilter, Runtime, RuntimeRef, fold_header
from danemilter.policy import staple_request
from danemilter.probe import DomainProbe, OcspRequest, ProbeResult

pytestmark = pytest.mark.timeout(10)

STATUS = {
    "dane.example": (DomainState.DANE, 8),
    "plain.example": (DomainState.NONE, 0),
    "broken.example": (DomainState.TEMPFAIL, 0),
    "nullmx.example": (DomainState.NULLMX, 0),
    "xn--bcher-kva.example": (DomainState.DANE, 4),
}


class Lookups:
    def __init__(self) -> None:
        self.asked: list[tuple[str, float]] = []

    def __call__(self, domain: str, deadline: float) -> DomainStatus:
        self.asked.append((domain, deadline))
        if domain == "explode.example":
            raise RuntimeError("simulated bug in the core")
        state, usage = STATUS[domain]
        return DomainStatus(domain, state, usage, True, (), "table", 60)


class TableService:
    """The service layer as the session sees it, answering from the tables here: every
    recipient takes the lookup path, so each question is recorded."""

    def __init__(self, lookups: Lookups, probes: Probes | None = None) -> None:
        self.lookups = lookups
        self.probes = probes

    def cached_status(self, domain: str) -> DomainStatus | None:
        return None

    async def status(self, domain: str, deadline: Deadline) -> DomainStatus:
        return self.lookups(domain, deadline.seconds)

    async def probe(self, status: DomainStatus, rule: Rule, settings: ProbeSettings,
                    deadline: Deadline) -> DomainProbe | None:
        if self.probes is None:
            return None
        return self.probes(status, rule.probe, staple_request(rule), settings,
                           deadline.remaining())


class Ctx(testctx.TestCtx):
    """TestCtx with quarantine recorded (pymilter's raises).

    TestCtx closes the context when connect answers NOREPLY, which libmilter accepts;
    so this MTA does not offer "no reply to connect". Negotiation itself is tested
    against TestCtx's full option set.
    """

    offered = (Milter.CURR_ACTS, 0x1FFFFF & ~Milter.P_NR_CONN, 0, 0)

    def _negotiate(self) -> int:
        full = testctx.TestCtx.default_opts
        testctx.TestCtx.default_opts = list(self.offered)
        try:
            return super()._negotiate()
        finally:
            testctx.TestCtx.default_opts = full

    def __init__(self) -> None:
        super().__init__()
        self.quarantined: list[str] = []

    def quarantine(self, reason: str) -> None:
        self.quarantined.append(reason)


@pytest.fixture
def lookups() -> Lookups:
    return Lookups()


@pytest.fixture
def use(lookups: Lookups) -> Iterator[Any]:
    def install(settings: Settings) -> None:
        DaneMilter.runtime_ref = RuntimeRef(Runtime(settings, TableService(lookups)))
    Milter.factory = DaneMilter
    install(Settings())
    yield install


def require(on_fail: FailAction, **kw: Any) -> Settings:
    return Settings(policy=Policy(Rule(DaneMode.REQUIRE, on_fail=on_fail)), **kw)


MESSAGE = "From: a@sender.example\nTo: b@dane.example\nSubject: hi\n\nbody\n"


def deliver(ctx: Ctx, *recipients: str, message: str = MESSAGE, auth: str | None = None
            ) -> tuple[list[int], int]:
    ctx._setsymval("i", "4ABC123")
    if auth is not None:
        ctx._setsymval("{auth_authen}", auth)
    ctx._msg = __import__("email").message_from_string(message)
    assert ctx._envfrom("<a@sender.example>") in (Milter.CONTINUE, Milter.NOREPLY)
    replies = [ctx._envrcpt(f"<{r}>") for r in recipients]
    for name, value in ctx._msg.items():
        ctx._header(name, value)
    ctx._feed_body(io.BytesIO(b"body\n"))
    return replies, ctx._eom()


def headers(ctx: Ctx, name: str = "X-DANE-Status") -> list[str]:
    return [str(v) for v in ctx._msg.get_all(name, [])]


def test_negotiates_only_needed_stages(use: Any) -> None:
    ctx = testctx.TestCtx()
    ctx._negotiate()
    assert ctx._protocol & Milter.P_NOHELO
    assert ctx._protocol & Milter.P_NOBODY
    assert ctx._protocol & Milter.P_NOEOH
    assert ctx._protocol & Milter.P_NODATA
    assert ctx._protocol & Milter.P_NR_HDR  # header callbacks need no reply
    assert ctx._protocol & Milter.P_NR_CONN
    assert not ctx._protocol & Milter.P_NORCPT
    assert not ctx._protocol & Milter.P_NR_RCPT


def test_try_tags_each_domain_once(use: Any, lookups: Lookups) -> None:
    ctx = Ctx()
    ctx._connect()
    replies, eom = deliver(ctx, "a@dane.example", "b@DANE.example", "c@plain.example")
    assert replies == [Milter.CONTINUE] * 3
    assert eom == Milter.CONTINUE
    assert sorted(headers(ctx)) == [
        "dane.example; status=dane; usage=8; ocsp=off; action=accept",
        "plain.example; status=none; usage=0; ocsp=off; action=accept",
    ]
    assert [d for d, _ in lookups.asked] == ["dane.example", "dane.example", "plain.example"]
    assert all(deadline == 10.0 for _, deadline in lookups.asked)


@pytest.mark.parametrize(
    ("on_fail", "reply_code", "rc"),
    [(FailAction.DEFER, "450", Milter.TEMPFAIL), (FailAction.REJECT, "550", Milter.REJECT)],
)
def test_require_refuses_only_the_failing_recipient(
    use: Any, on_fail: FailAction, reply_code: str, rc: int
) -> None:
    use(require(on_fail))
    ctx = Ctx()
    ctx._connect()
    replies, _ = deliver(ctx, "a@dane.example", "b@plain.example")
    assert replies == [Milter.CONTINUE, rc]
    assert ctx._reply is not None
    assert ctx._reply[0] == reply_code
    assert "plain.example" in ctx._reply[2]
    assert headers(ctx) == ["dane.example; status=dane; usage=8; ocsp=off; action=accept"]


def test_require_hold_quarantines_and_tags(use: Any) -> None:
    use(require(FailAction.HOLD))
    ctx = Ctx()
    ctx._connect()
    replies, _ = deliver(ctx, "b@plain.example")
    assert replies == [Milter.CONTINUE]
    assert headers(ctx) == ["plain.example; status=none; usage=0; ocsp=off; action=hold"]
    assert ctx.quarantined == ["DANE policy for plain.example: status=none"]


def test_require_tag(use: Any) -> None:
    use(require(FailAction.TAG))
    ctx = Ctx()
    ctx._connect()
    replies, _ = deliver(ctx, "b@plain.example")
    assert replies == [Milter.CONTINUE]
    assert headers(ctx) == ["plain.example; status=none; usage=0; ocsp=off; action=tag"]


def test_forged_status_headers_are_removed(use: Any) -> None:
    forged = "X-DANE-Status: plain.example; status=dane; usage=8\n" + MESSAGE
    ctx = Ctx()
    ctx._connect()
    deliver(ctx, "b@plain.example", message=forged)
    assert headers(ctx) == ["plain.example; status=none; usage=0; ocsp=off; action=accept"]


def test_null_mx_tagged_under_try_and_refused_under_require(use: Any) -> None:
    # Issue 14: "tag everything, refuse nothing" holds for null MX too; require refuses.
    ctx = Ctx()
    ctx._connect()
    replies, _ = deliver(ctx, "x@nullmx.example")
    assert replies == [Milter.CONTINUE]
    assert headers(ctx) == ["nullmx.example; status=nullmx; usage=0; ocsp=off; action=tag"]
    use(require(FailAction.TAG))
    ctx = Ctx()
    ctx._connect()
    replies, _ = deliver(ctx, "x@nullmx.example")
    assert replies == [Milter.REJECT]
    assert ctx._reply is not None
    assert ctx._reply[:2] == ("556", "5.1.10")


@pytest.mark.parametrize(
    ("on_error", "rc"), [(ErrorAction.TEMPFAIL, Milter.TEMPFAIL), (ErrorAction.ACCEPT,
                                                                 Milter.CONTINUE)]
)
def test_lookup_failure_under_require_follows_on_error(
    use: Any, on_error: ErrorAction, rc: int
) -> None:
    use(require(FailAction.REJECT, on_error=on_error))
    ctx = Ctx()
    ctx._connect()
    replies, _ = deliver(ctx, "x@broken.example")
    assert replies == [rc]
    if rc == Milter.TEMPFAIL:
        assert ctx._reply is not None
        assert ctx._reply[:2] == ("451", "4.4.3")


@pytest.mark.parametrize(
    ("on_error", "rc"), [(ErrorAction.TEMPFAIL, Milter.TEMPFAIL), (ErrorAction.ACCEPT,
                                                                 Milter.CONTINUE)]
)
def test_exception_in_callback_becomes_on_error(
    use: Any, lookups: Lookups, on_error: ErrorAction, rc: int
) -> None:
    use(Settings(on_error=on_error))
    ctx = Ctx()
    ctx._connect()
    replies, eom = deliver(ctx, "x@explode.example", "y@dane.example")
    assert replies == [rc, Milter.CONTINUE]
    assert eom == Milter.CONTINUE
    if rc == Milter.TEMPFAIL:
        assert ctx._reply is not None
        assert ctx._reply[:2] == ("451", "4.3.0")
        assert "Traceback" not in ctx._reply[2]


def test_report_only_changes_nothing(use: Any, lookups: Lookups) -> None:
    use(replace(require(FailAction.REJECT), report_only=True))
    forged = "X-DANE-Status: forged\n" + MESSAGE
    ctx = Ctx()
    ctx._connect()
    replies, _ = deliver(ctx, "b@plain.example", message=forged)
    assert replies == [Milter.CONTINUE]
    assert headers(ctx) == ["forged"]
    assert lookups.asked == [("plain.example", 10.0)]


@pytest.mark.parametrize(
    ("recipient", "looked_up"),
    [
        ("user@local.example", False),       # skip_domains exact
        ("user@a.corp.example", False),      # skip_domains suffix
        ("user@[192.0.2.1]", False),         # address literal: not a DNS domain
        ("postmaster", False),               # no domain
        ("user@bücher.example", True),       # IDN is checked in A-label form
    ],
)
def test_skipped_and_unusual_recipients(
    use: Any, lookups: Lookups, recipient: str, looked_up: bool
) -> None:
    use(parse("skip_domains: [local.example, .corp.example]\n", "t.yaml"))
    ctx = Ctx()
    ctx._connect()
    replies, _ = deliver(ctx, recipient)
    assert replies == [Milter.CONTINUE]
    assert bool(lookups.asked) is looked_up


@pytest.mark.parametrize(
    ("apply_to", "auth", "client", "checked"),
    [
        (ApplyTo.AUTHENTICATED, "alice", "192.0.2.9", True),
        (ApplyTo.AUTHENTICATED, None, "192.0.2.9", False),
        (ApplyTo.NETWORKS, None, "192.0.2.9", True),
        (ApplyTo.NETWORKS, None, "198.51.100.1", False),
        (ApplyTo.ALL, None, "198.51.100.1", True),
    ],
)
def test_apply_to(
    use: Any, lookups: Lookups, apply_to: ApplyTo, auth: str | None, client: str, checked: bool
) -> None:
    use(parse(f"apply_to: {apply_to}\nnetworks: [192.0.2.0/24]\n", "t.yaml"))
    ctx = Ctx()
    ctx._connect(ip=client)
    deliver(ctx, "a@dane.example", auth=auth)
    assert bool(lookups.asked) is checked
    assert bool(headers(ctx)) is checked


def test_reload_applies_to_new_connections_only(use: Any) -> None:
    first = Ctx()
    first._connect()
    use(require(FailAction.REJECT))
    second = Ctx()
    second._connect()
    assert deliver(first, "b@plain.example")[0] == [Milter.CONTINUE]
    assert deliver(second, "b@plain.example")[0] == [Milter.REJECT]


@pytest.mark.parametrize(
    "domain", ["a.example", "a-very-long-subdomain-name-that-goes-on." * 5 + "example"]
)
def test_header_folding(domain: str) -> None:
    value = f"{domain}; status=dane; usage=8; ocsp=off; action=accept"
    folded = fold_header("X-DANE-Status", value)
    assert folded.replace("\n", "") == value  # unfolding restores the value exactly
    lines = ("X-DANE-Status: " + folded).split("\n")
    # A line may only exceed 78 characters when a single unbreakable part is that long.
    assert all(len(line) <= 78 or "; " not in line for line in lines)


class Probes:
    """A probe source that records what it was asked and answers from ``verdicts``."""

    def __init__(self, verdicts: dict[str, str]) -> None:
        self.verdicts = verdicts
        self.asked: list[tuple[str, ProbeMode, str, float]] = []

    def __call__(self, status: DomainStatus, mode: ProbeMode, ocsp: OcspRequest,
                 settings: ProbeSettings, budget: float) -> DomainProbe | None:
        self.asked.append((status.domain, mode, ocsp, budget))
        verdict = self.verdicts.get(status.domain)
        if verdict is None:
            return None
        result = ProbeResult("192.0.2.1", 25, True, "TLSv1.3", verdict,  # type: ignore[arg-type]
                             0, "not-requested", "judged")
        probes = ((result,),)
        return DomainProbe(replace(status, status=DomainState.DANE_MISMATCH)
                           if verdict == "mismatch" else status, probes)


def test_probe_results_reach_the_decision(lookups: Lookups) -> None:
    probes = Probes({"dane.example": "mismatch", "xn--bcher-kva.example": "verified"})
    rule = Rule(DaneMode.TRY, on_fail=FailAction.DEFER, probe=ProbeMode.INLINE)
    settings = Settings(policy=Policy(rule), deadline=4.0)
    DaneMilter.runtime_ref = RuntimeRef(Runtime(settings, TableService(lookups, probes)))
    Milter.factory = DaneMilter
    ctx = Ctx()
    assert ctx._connect() == Milter.CONTINUE
    replies, _ = deliver(ctx, "a@dane.example", "b@bücher.example", "c@plain.example")
    assert replies == [Milter.TEMPFAIL, Milter.CONTINUE, Milter.CONTINUE]
    assert ctx._reply[:2] == ("450", "4.7.5")
    # plain.example (no DANE, OCSP off) is not worth a probe; the others get the time left.
    assert [(d, m, o) for d, m, o, _ in probes.asked] == [
        ("dane.example", ProbeMode.INLINE, "auto"),
        ("xn--bcher-kva.example", ProbeMode.INLINE, "auto")]
    assert all(0 < budget <= 4.0 for *_, budget in probes.asked)
    assert sorted(h.replace("\n", "") for h in headers(ctx)) == [
        "plain.example; status=none; usage=0; ocsp=off; action=accept",
        "xn--bcher-kva.example; status=dane; usage=4; ocsp=off; action=accept"]
