"""The resolver self-check's verdict (pure) and its configuration."""

from __future__ import annotations

import dns.rcode
import dns.rdatatype
import pytest

from danemilter.config import ConfigErrors, ResolverCheckMode, ResolverCheckSettings, parse
from danemilter.resolver import Answer, Security
from danemilter.resolver_check import ResolverState, verdict

pytestmark = pytest.mark.timeout(30)

CHECK = ResolverCheckSettings(bogus_name="bogus.example")
NO_BOGUS = ResolverCheckSettings()


def answer(security: Security, rcode: dns.rcode.Rcode | None, reason: str = "") -> Answer:
    return Answer(".", dns.rdatatype.SOA, security, rcode, ".", reason=reason)


SECURE = answer(Security.SECURE, dns.rcode.NOERROR)
INSECURE = answer(Security.INSECURE, dns.rcode.NOERROR)
SERVFAIL = answer(Security.BOGUS, dns.rcode.SERVFAIL, "resolver answered SERVFAIL")
SILENT = answer(Security.INDETERMINATE, None, "no answer from resolver within 3 s")
SECURE_NX = answer(Security.SECURE, dns.rcode.NXDOMAIN)


@pytest.mark.parametrize(("check", "signed", "bogus", "state"), [
    (NO_BOGUS, SECURE, None, ResolverState.VALIDATING),
    (NO_BOGUS, SECURE_NX, None, ResolverState.VALIDATING),  # a secure denial validates too
    (NO_BOGUS, INSECURE, None, ResolverState.NOT_VALIDATING),
    (NO_BOGUS, SERVFAIL, None, ResolverState.FAILED),
    (NO_BOGUS, SILENT, None, ResolverState.NO_ANSWER),
    (CHECK, SECURE, SERVFAIL, ResolverState.VALIDATING),
    (CHECK, SECURE, INSECURE, ResolverState.ACCEPTS_BOGUS),
    (CHECK, SECURE, SECURE, ResolverState.ACCEPTS_BOGUS),
    (CHECK, SECURE, SILENT, ResolverState.NO_ANSWER),
    (CHECK, INSECURE, SERVFAIL, ResolverState.NOT_VALIDATING),  # the signed name first
])
def test_verdict(check: ResolverCheckSettings, signed: Answer, bogus: Answer | None,
                 state: ResolverState) -> None:
    result = verdict("127.0.0.1:53", check, signed, bogus)
    assert result.state is state
    assert result.passed is (state is ResolverState.VALIDATING)
    assert result.line().startswith(f"resolver 127.0.0.1:53: {state}: ")


def test_configuration_forms() -> None:
    assert parse("{}", "f").resolver_check == ResolverCheckSettings()
    assert parse("{}", "f").resolver_check.mode is ResolverCheckMode.REFUSE
    assert parse("resolver_check: off\n", "f").resolver_check.mode is ResolverCheckMode.OFF
    full = parse("resolver_check:\n  mode: degrade\n  signed_name: test.\n"
                 "  bogus_name: x.bogus.test\n  bogus_type: aaaa\n  interval: 60\n", "f")
    assert full.resolver_check == ResolverCheckSettings(
        ResolverCheckMode.DEGRADE, "test.", "SOA", "x.bogus.test", "AAAA", 60.0)


@pytest.mark.parametrize(("text", "message"), [
    ("resolver_check: maybe\n", "f:1: resolver_check must be one of refuse|degrade|off"),
    ("resolver_check:\n  signed_name: 'a b'\n", "f:2: resolver_check.signed_name is not a DNS"),
    ("resolver_check:\n  signed_type: XYZ\n", "f:2: resolver_check.signed_type must be one of"),
    ("resolver_check:\n  interval: 5\n", "f:2: resolver_check.interval must be between 10"),
    ("resolver_check:\n  colour: 1\n", "f:2: unknown key 'colour' in resolver_check"),
    ("metrics:\n  listen: localhost:9425\n", "f:2: metrics.listen must be IP:PORT"),
    ("metrics:\n  listen: 127.0.0.1:0\n", "f:2: metrics.listen needs a port 1-65535"),
])
def test_configuration_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(ConfigErrors) as caught:
        parse(text, "f")
    assert str(caught.value).startswith(message), str(caught.value)
