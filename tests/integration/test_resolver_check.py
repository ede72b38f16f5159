"""The resolver self-check against real resolvers, and ``danemilter run`` under each mode.

Three resolvers of the test bed: its validating unbound (passes), a second unbound in
front of the same nsd with validation off (fails: no AD bit), and a port nobody listens
on (fails: no answer). The bed's trust anchor is ``test.``, so its signed name is the
top zone's SOA; its bogus name is an A record edited after signing.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from danemilter import resolver_check
from danemilter.config import ResolverCheckSettings, ResolverSettings
from danemilter.resolver_check import ResolverCheck, ResolverMonitor, ResolverState, check_resolver
from tests.support.dnsbed import DnssecTestBed
from tests.support.dnsrelay import DnsRelay
from tests.support.mailstack import mail_stack
from tests.support.milterproc import MilterProcess
from tests.support.plain_resolver import NonValidatingResolver
from tests.support.ports import free_port
from tests.support.postfix import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

DANEMILTER = [sys.executable, "-m", "danemilter"]
SIGNED = "test."
BOGUS = "mx.badaddr.secure.test"  # dns_cases: A edited after signing (SERVFAIL, EDE 6)
VALID_BUT_CALLED_BOGUS = "ee.secure.test"


@pytest.fixture(scope="module")
def plain(dns_bed: DnssecTestBed) -> Iterator[NonValidatingResolver]:
    with NonValidatingResolver(dns_bed) as resolver:
        yield resolver


def _check(port: int, *, bogus: str | None = BOGUS, bogus_type: str = "A",
           timeout: float = 2.0) -> tuple[ResolverState, str]:
    settings = ResolverSettings("127.0.0.1", port, timeout)
    check = ResolverCheckSettings(signed_name=SIGNED, bogus_name=bogus, bogus_type=bogus_type)
    result = asyncio.run(check_resolver(settings, check))
    return result.state, result.reason


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DANEMILTER, "check-resolver", *args], capture_output=True,
                          text=True, timeout=30, check=False)


# --- the check -----------------------------------------------------------------------

def test_the_validating_unbound_passes(dns_bed: DnssecTestBed) -> None:
    state, reason = _check(dns_bed.resolver_port)
    assert state is ResolverState.VALIDATING, reason
    assert "SERVFAIL" in reason and SIGNED in reason


def test_an_unbound_without_validation_fails_for_want_of_the_ad_bit(
        plain: NonValidatingResolver) -> None:
    state, reason = _check(plain.port, bogus=None)
    assert state is ResolverState.NOT_VALIDATING, reason
    assert "AD bit" in reason


def test_a_name_that_validates_is_no_bogus_name(dns_bed: DnssecTestBed) -> None:
    # The bogus question has teeth: an answer instead of SERVFAIL fails the check.
    state, reason = _check(dns_bed.resolver_port, bogus=VALID_BUT_CALLED_BOGUS,
                           bogus_type="MX")
    assert state is ResolverState.ACCEPTS_BOGUS, reason
    assert "NOERROR" in reason


def test_nothing_listening_fails_for_want_of_an_answer() -> None:
    began = time.monotonic()
    state, reason = _check(free_port(), timeout=0.3)
    assert state is ResolverState.NO_ANSWER, reason
    assert time.monotonic() - began < 2, "the check is bounded by the resolver timeout"


def test_the_command_prints_the_outcome_with_its_exit_code(
        dns_bed: DnssecTestBed, plain: NonValidatingResolver) -> None:
    names = ["--signed", SIGNED, "--bogus", BOGUS]
    ok = _cli("--resolver", f"127.0.0.1:{dns_bed.resolver_port}", *names, "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) | {"reason": ""} == {
        "resolver": f"127.0.0.1:{dns_bed.resolver_port}", "state": "validating",
        "reason": "", "validating": True}
    no_ad = _cli("--resolver", f"127.0.0.1:{plain.port}", *names)
    assert no_ad.returncode == 1, no_ad.stderr
    assert no_ad.stdout.startswith(f"resolver 127.0.0.1:{plain.port}: not-validating: ")
    silent = _cli("--resolver", f"127.0.0.1:{free_port()}", "--timeout", "0.3", *names)
    assert silent.returncode == 3, silent.stderr
    assert ": no-answer: " in silent.stdout
    bad = _cli("--signed", "not a name")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def test_verify_warns_when_its_resolver_does_not_validate(
        tmp_path: Path, plain: NonValidatingResolver) -> None:
    config = tmp_path / "danemilter.yaml"
    config.write_text(f"resolver_check: {{signed_name: {SIGNED}}}\ncache: {{backend: memory}}\n")
    result = subprocess.run(
        [*DANEMILTER, "verify", "ee.secure.test", "--dns-only", "--json", "--config",
         str(config), "--resolver", f"127.0.0.1:{plain.port}"],
        capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["status"] == "none"  # no AD: nothing is secure
    (warning,) = result.stderr.strip().splitlines()
    assert warning.startswith("danemilter: warning: resolver 127.0.0.1:")
    assert "not-validating" in warning


def test_the_monitor_rechecks_a_failing_resolver_often_and_a_good_one_each_interval(
        dns_bed: DnssecTestBed, plain: NonValidatingResolver,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resolver_check, "FAILING_INTERVAL", 0.1)  # a minute, in the daemon
    check = ResolverCheckSettings(signed_name=SIGNED, interval=10)

    async def scenario() -> None:
        seen: list[ResolverCheck] = []
        three = asyncio.Event()

        def report(result: ResolverCheck) -> None:
            seen.append(result)
            if len(seen) >= 3:
                three.set()

        failing = ResolverSettings("127.0.0.1", plain.port, 1)
        monitor = ResolverMonitor(failing, check, report, await check_resolver(failing, check))
        monitor.start()
        await asyncio.wait_for(three.wait(), 10)
        assert [r.state for r in seen[:3]] == [ResolverState.NOT_VALIDATING] * 3
        good = ResolverSettings("127.0.0.1", dns_bed.resolver_port, 1)
        monitor.replace(good, check, await check_resolver(good, check))
        count = len(seen)
        await asyncio.sleep(0.5)  # proving an absence: the next check is 10 s away
        assert len(seen) <= count + 1  # at most one already under way
        assert monitor.last is not None and monitor.last.passed
        await monitor.aclose()

    asyncio.run(scenario())


# --- run under each mode ---------------------------------------------------------------

def _resolver(port: int) -> str:
    return f"resolver: {{address: 127.0.0.1, port: {port}, timeout: 1}}\n"


def _mode(mode: str) -> str:
    return (f"resolver_check: {{mode: {mode}, signed_name: {SIGNED}, bogus_name: {BOGUS}}}\n")


def test_refuse_does_not_start_without_an_answer(tmp_path: Path) -> None:
    config = tmp_path / "danemilter.yaml"
    sock = tmp_path / "milter.sock"
    config.write_text(f"listen: unix:{sock}\n{_resolver(free_port())}{_mode('refuse')}")
    result = subprocess.run([*DANEMILTER, "run", "--config", str(config)],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "no-answer" in line and "not starting (resolver_check: refuse" in line
    assert not sock.exists(), "nothing listens when the start is refused"


@pytest.mark.parametrize("transport", ["asyncio", "libmilter"])
def test_refuse_is_the_default_and_a_validating_resolver_starts_it(
        tmp_path: Path, dns_bed: DnssecTestBed, plain: NonValidatingResolver,
        transport: str) -> None:
    config = tmp_path / "danemilter.yaml"
    config.write_text(f"listen: inet:{free_port()}@127.0.0.1\n{_resolver(plain.port)}"
                      f"resolver_check: {{signed_name: {SIGNED}}}\n")
    refused = subprocess.run([*DANEMILTER, "run", "--config", str(config)],
                             capture_output=True, text=True, timeout=30, check=False)
    assert refused.returncode == 2 and "not-validating" in refused.stderr, refused.stderr
    good = f"transport: {transport}\n" + _resolver(dns_bed.resolver_port) + _mode("refuse")
    milter = MilterProcess(good)
    milter.start()
    try:
        wait_for(lambda: "listening on" in milter.log(), 10, "the start-up line")
        assert f"resolver 127.0.0.1:{dns_bed.resolver_port}: validating" in milter.log()
        # A reload onto a resolver that does not validate is refused like a bad file,
        # under either transport (they share the reload's preparation).
        milter.reload(f"transport: {transport}\n" + _resolver(plain.port) + _mode("refuse"),
                      expect="reload failed, keeping the current policy")
        assert "not-validating" in milter.log().rsplit("reload failed", 1)[1]
        milter.reload(good)  # and a validating one is taken again
    finally:
        assert milter.stop() == 0


@pytest.mark.parametrize("transport", ["asyncio", "libmilter"])
def test_a_running_daemon_notices_its_resolver_stop_validating(
        dns_bed: DnssecTestBed, plain: NonValidatingResolver, transport: str) -> None:
    # The same address throughout: a relay whose upstream the test switches, as when
    # the operator's resolver is reconfigured under a running daemon.
    with DnsRelay("127.0.0.1", ("127.0.0.1", dns_bed.resolver_port), port=free_port()) \
            as relay:
        milter = MilterProcess(
            f"transport: {transport}\n" + _resolver(relay.port)
            + f"resolver_check: {{mode: degrade, signed_name: {SIGNED}, interval: 10}}\n")
        milter.start()
        try:
            assert f"resolver 127.0.0.1:{relay.port}: validating" in milter.log()
            relay.upstream = ("127.0.0.1", plain.port)
            started = time.monotonic()
            wait_for(lambda: "no domain can be dane until it validates" in milter.log(), 25,
                     "the periodic check's degradation")
            # The 10 s interval's check, with room for a loaded machine; a reload or the
            # 60 s cadence of a failing resolver could not have come this soon.
            assert time.monotonic() - started < 20
            assert "not-validating" in milter.log().rsplit("listening on", 1)[1]
        finally:
            assert milter.stop() == 0


def test_off_starts_without_asking_the_resolver(tmp_path: Path) -> None:
    milter = MilterProcess(_resolver(free_port()) + "resolver_check: off\n")
    milter.start()
    try:
        wait_for(lambda: "listening on" in milter.log(), 10, "the start-up line")
        assert "resolver 127.0.0.1:" not in milter.log().split("listening on")[0]
    finally:
        assert milter.stop() == 0


def test_degrade_runs_tags_every_domain_and_refuses_none(
        dns_bed: DnssecTestBed, plain: NonValidatingResolver) -> None:
    # dane: require would defer a domain without DANE; degraded, nothing is refused and
    # every header says why there is no verdict.
    policy = "policy:\n  default: {dane: require, on_fail: defer}\n"
    with mail_stack(_resolver(plain.port) + _mode("degrade") + policy) as mail:
        milter, postfix, sink = mail.milter, mail.postfix, mail.sink
        assert "not-validating" in milter.log()
        assert "no domain can be dane until it validates" in milter.log()
        marker = f"<degrade.{time.monotonic_ns()}@client.test>"
        sub = postfix.submit(["a@ee.secure.test", "b@plain.insecure.test"],
                             f"Message-ID: {marker}\nSubject: x\n\nhello\n")
        assert [r.code for r in sub.replies] == [250, 250], sub.replies
        headers = sink.wait_for_message(marker).get_all("X-DANE-Status")
        assert sorted(h.split(";")[0] for h in headers) == ["ee.secure.test",
                                                           "plain.insecure.test"]
        assert all("status=resolver-not-validating" in h and "action=tag" in h
                   for h in headers), headers
        # Back to a validating resolver (a reload): DANE verdicts again.
        milter.reload(_resolver(dns_bed.resolver_port) + _mode("degrade") + policy)
        assert "DANE verdicts again" in milter.log()
        again = postfix.submit(["c@ee.secure.test", "d@plain.insecure.test"],
                               "Subject: y\n\nhello\n")
        assert [r.code for r in again.replies] == [250, 450], again.replies
