"""The policy socket's codec (danemilter.policymap.netstring) and its answers
(danemilter.policymap.answers), table by table: netstrings and lines as exact bytes,
malformed and oversize input, reads split anywhere, and the TLS policy for every rule
kind, status and parent-domain key."""

from __future__ import annotations

import os
import random
import re
from dataclasses import replace

import pytest

from danemilter.config.model import DaneMode, ErrorAction, FailAction, Policy, Rule, Settings
from danemilter.mtasts import mx_matches
from danemilter.policy import decide
from danemilter.policymap import answers
from danemilter.policymap.answers import NeedsStatus, SecureMatch, TlsPolicy
from danemilter.policymap.netstring import (
    LineQuery,
    NetstringError,
    RequestDecoder,
    SocketmapQuery,
    netstring,
)
from danemilter.status import DomainState, DomainStatus

pytestmark = pytest.mark.timeout(60)

MAX = 1024


def decode(data: bytes, max_request: int = MAX) -> list[object]:
    decoder = RequestDecoder(max_request)
    found: list[object] = list(decoder.feed(data))
    found.extend(decoder.end())
    return found


def test_good_requests_before_bad_input_are_kept() -> None:
    decoder = RequestDecoder(MAX)
    assert decoder.feed(b"11:dane d.test,x") == [SocketmapQuery("dane", "d.test")]
    assert decoder.error is not None
    with pytest.raises(NetstringError, match="not a netstring length"):
        decoder.feed(b"")


GOOD: list[tuple[str, bytes, list[object]]] = [
    ("one", b"11:dane d.test,", [SocketmapQuery("dane", "d.test")]),
    ("parent", b"10:dane .test,", [SocketmapQuery("dane", ".test")]),
    ("two", b"11:dane d.test,10:dane .test,",
     [SocketmapQuery("dane", "d.test"), SocketmapQuery("dane", ".test")]),
    ("next-hop", b"21:dane [mx.d.test]:2525,", [SocketmapQuery("dane", "[mx.d.test]:2525")]),
    ("key-with-space", b"8:dane a b,", [SocketmapQuery("dane", "a b")]),
    ("utf-8", "15:dane bücher.de,".encode(), [SocketmapQuery("dane", "bücher.de")]),
    ("line", b"rcpt d.test\n", [LineQuery("rcpt", "d.test")]),
    ("line-crlf", b"rcpt d.test\r\n", [LineQuery("rcpt", "d.test")]),
    ("line-no-newline", b"rcpt d.test", [LineQuery("rcpt", "d.test")]),
    ("line-verb-case", b"RCPT  d.test \n", [LineQuery("rcpt", "d.test")]),
    ("line-then-junk", b"rcpt d.test\n11:dane d.test,", [LineQuery("rcpt", "d.test")]),
    ("empty", b"", []),
]


@pytest.mark.parametrize(("data", "expected"), [(d, e) for _, d, e in GOOD],
                         ids=[n for n, _, _ in GOOD])
def test_requests_decode(data: bytes, expected: list[object]) -> None:
    assert decode(data) == expected


BAD: list[tuple[str, bytes, str]] = [
    ("no-comma", b"11:dane d.testX", "not terminated"),
    ("letters-in-length", b"1x:dane d.test,", "not a netstring length"),
    ("oversize-length", b"1025:" + b"a" * 1025 + b",", "limit is 1024"),
    ("too-many-digits", b"99999", "more than 4 digits"),
    ("huge-length", b"4294967296:", "more than 4 digits"),
    ("no-key", b"4:dane,", "not 'NAME KEY'"),
    ("empty-key", b"5:dane ,", "not 'NAME KEY'"),
    ("empty-netstring", b"0:,", "not 'NAME KEY'"),
    ("nul", b"12:dane d.t\0est,", "NUL"),
    ("not-utf-8", b"11:dane d.t\xffst,", "not UTF-8"),
    ("second-bad", b"11:dane d.test,x", "not a netstring length"),
    ("truncated", b"11:dane d.te", "closed inside a netstring"),
    ("line-no-argument", b"rcpt\n", "not 'VERB ARGUMENT'"),
    ("line-too-long", b"rcpt " + b"a" * 1100, "longer than 1024"),
    ("line-nul", b"rcpt d\0.test\n", "NUL"),
]


@pytest.mark.parametrize(("data", "why"), [(d, w) for _, d, w in BAD],
                         ids=[n for n, _, _ in BAD])
def test_bad_requests_are_errors(data: bytes, why: str) -> None:
    with pytest.raises(NetstringError, match=why):
        decode(data)


def test_oversize_length_is_refused_before_its_data_arrives() -> None:
    # A 4 GiB length must not make the server wait for (or buffer) 4 GiB.
    with pytest.raises(NetstringError):
        RequestDecoder(MAX).feed(b"4294967295")
    with pytest.raises(NetstringError):
        RequestDecoder(MAX).feed(b"2000:")


def test_reads_split_anywhere_give_the_same_requests() -> None:
    seed = int(os.environ.get("NETSTRING_SEED", random.randrange(2**32)))
    print(f"NETSTRING_SEED={seed}")
    rng = random.Random(seed)
    keys = [".".join(rng.choice(["a", "bb", "test", "xn--bcher-kva", "_x"])
                     for _ in range(rng.randint(1, 5))) for _ in range(50)]
    wire = b"".join(netstring(f"dane {k}".encode()) for k in keys)
    for _ in range(20):
        decoder = RequestDecoder(MAX)
        found: list[object] = []
        position = 0
        while position < len(wire):
            step = rng.randint(1, 40)
            found += decoder.feed(wire[position:position + step])
            position += step
        assert found == [SocketmapQuery("dane", k) for k in keys], f"seed {seed}"


def test_netstring_encoding() -> None:
    assert netstring(b"OK dane-only") == b"12:OK dane-only,"
    assert netstring(b"NOTFOUND ") == b"9:NOTFOUND ,"
    assert netstring(b"") == b"0:,"


# --- the answers ---------------------------------------------------------------------

SETTINGS = Settings(
    listen="unix:/run/x/milter.sock",
    skip_domains=frozenset({"local.example", ".internal.corp.example"}),
    policy=Policy(Rule(dane=DaneMode.TRY), {
        "bank.example": Rule(dane=DaneMode.REQUIRE, on_fail=FailAction.DEFER),
        ".gov.example": Rule(dane=DaneMode.REQUIRE, on_fail=FailAction.REJECT),
        "open.gov.example": Rule(dane=DaneMode.OFF),
        ".corp.example": Rule(dane=DaneMode.REQUIRE, on_fail=FailAction.TAG),
        ".legacy.example": Rule(dane=DaneMode.OFF),
    }),
)

KEYS: list[tuple[str, TlsPolicy | str]] = [
    ("bank.example", TlsPolicy.DANE_ONLY),
    ("BANK.example.", TlsPolicy.DANE_ONLY),
    ("tax.gov.example", TlsPolicy.DANE_ONLY),
    ("a.b.gov.example", TlsPolicy.DANE_ONLY),
    ("open.gov.example", TlsPolicy.NONE),
    ("local.example", TlsPolicy.NONE),
    ("x.internal.corp.example", TlsPolicy.NONE),
    ("hq.corp.example", TlsPolicy.DANE_ONLY),
    ("old.legacy.example", TlsPolicy.NONE),
    ("other.example", "needs"),
    ("[mx.bank.example]:25", TlsPolicy.NONE),
    ("[192.0.2.1]", TlsPolicy.NONE),
    ("mx.bank.example:2525", TlsPolicy.NONE),
    # Parent keys: Postfix asks them only after NOTFOUND for a full domain, so where a
    # domain below is off or skipped the parent must not override that.
    (".gov.example", TlsPolicy.NONE),  # open.gov.example (off) is below it
    (".example", TlsPolicy.NONE),
    (".corp.example", TlsPolicy.NONE),  # .internal.corp.example is skipped
    (".internal.corp.example", TlsPolicy.NONE),
    (".legacy.example", TlsPolicy.NONE),
    (".tax.gov.example", TlsPolicy.DANE_ONLY),
    (".other.test", TlsPolicy.DANE),
    (".test", TlsPolicy.DANE),
]


@pytest.mark.parametrize(("key", "expected"), KEYS, ids=[k for k, _ in KEYS])
def test_policy_for_key(key: str, expected: TlsPolicy | str) -> None:
    got = answers.for_key(SETTINGS, key)
    if expected == "needs":
        assert isinstance(got, NeedsStatus)
        assert got.rule.dane is DaneMode.TRY
    else:
        assert got is expected


def test_report_only_enforces_nothing_at_delivery() -> None:
    quiet = replace(SETTINGS, report_only=True)
    assert answers.for_key(quiet, "bank.example") is TlsPolicy.NONE
    assert answers.for_key(quiet, ".tax.gov.example") is TlsPolicy.NONE


def status(state: DomainState, domain: str = "d.test") -> DomainStatus:
    return DomainStatus(domain, state, 8 if state is DomainState.DANE else 0, True, (),
                        "because", 60)


@pytest.mark.parametrize(("state", "expected"), [
    (DomainState.DANE, TlsPolicy.DANE_ONLY),
    (DomainState.PARTIAL, TlsPolicy.DANE),
    (DomainState.NONE, TlsPolicy.DANE),
    (DomainState.UNUSABLE_TLSA, TlsPolicy.DANE),
    (DomainState.NULLMX, TlsPolicy.DANE),
    (DomainState.NXDOMAIN, TlsPolicy.DANE),
    (DomainState.TEMPFAIL, TlsPolicy.TEMP),
])
def test_try_domain_policy_from_status(state: DomainState, expected: TlsPolicy) -> None:
    assert answers.for_status(status(state)) is expected


def test_socketmap_replies() -> None:
    assert answers.socketmap_reply(TlsPolicy.DANE_ONLY) == b"OK dane-only"
    assert answers.socketmap_reply(TlsPolicy.DANE) == b"OK dane"
    assert answers.socketmap_reply(TlsPolicy.NONE) == b"NOTFOUND "
    assert answers.socketmap_reply(TlsPolicy.TEMP, "slow").startswith(b"TEMP slow")


def test_rcpt_lines() -> None:
    rule = SETTINGS.policy.rule_for("bank.example")
    refused = decide(status(DomainState.NONE, "bank.example"), rule, ErrorAction.TEMPFAIL)
    line = answers.rcpt_line(SETTINGS, refused, TlsPolicy.DANE_ONLY).encode()
    assert line == (b'action=defer status=none tls=dane-only code=450 xcode=4.7.4 '
                    b'text="Recipient domain bank.example cannot be reached with DANE '
                    b'(status none) and policy requires it"\n')
    accepted = decide(status(DomainState.DANE, "bank.example"), rule, ErrorAction.TEMPFAIL)
    line = answers.rcpt_line(SETTINGS, accepted, TlsPolicy.DANE_ONLY).encode()
    assert line == (b'action=accept status=dane tls=dane-only header_name=X-DANE-Status '
                    b'header="bank.example; status=dane; usage=8; ocsp=off; '
                    b'action=accept"\n')
    assert answers.rcpt_line(SETTINGS, None, TlsPolicy.NONE).encode() == \
        b"action=accept status=skipped tls=none\n"


def test_rcpt_line_quotes_what_exim_would_misread() -> None:
    rule = Rule(dane=DaneMode.REQUIRE, on_fail=FailAction.REJECT,
                reply='say "no" \\ twice')
    refused = decide(status(DomainState.NONE), rule, ErrorAction.TEMPFAIL)
    line = answers.rcpt_line(SETTINGS, refused, TlsPolicy.DANE_ONLY).encode()
    assert b'text="say \\"no\\" \\\\ twice"' in line


# MTA-STS mx pattern -> the regex Exim's ignore_target_hosts gets (RFC 8461 §4.1).
REGEXES = [
    ("mx.example.com", r"^(?i:mx\.example\.com)$"),
    ("*.example.net", r"^(?i:[^.]+\.example\.net)$"),
    ("MX.Example.COM.", r"^(?i:mx\.example\.com)$"),  # no case, no final dot
    ("mx-1.a-b.example", r"^(?i:mx-1\.a-b\.example)$"),
    ("a;b c", r"^(?i:a\x3bb\x20c)$"),  # never parsed, but cannot end the regex or the list
]


@pytest.mark.parametrize(("pattern", "regex"), REGEXES, ids=[p for p, _ in REGEXES])
def test_mx_pattern_regex(pattern: str, regex: str) -> None:
    assert answers.exim_host_regex(pattern) == regex


# (pattern, MX host name, matches): the regex must agree with mtasts.mx_matches.
HOSTS = [
    ("mx.example.com", "mx.example.com", True),
    ("mx.example.com", "MX.EXAMPLE.COM", True),  # caseless: DNS names have no case
    ("mx.example.com", "mxxexample.com", False),  # dots are escaped
    ("mx.example.com", "a.mx.example.com", False),  # anchored
    ("mx.example.com", "mx.example.com.evil", False),
    ("*.example.net", "mx1.example.net", True),
    ("*.example.net", "Mx1.Example.Net", True),
    ("*.example.net", "a.b.example.net", False),  # one label, never two
    ("*.example.net", "example.net", False),
    ("*.example.net", ".example.net", False),
    ("*.example.net", "mx1-example.net", False),
    ("*.example.net", "mx1.example.network", False),
]


@pytest.mark.parametrize(("pattern", "host", "matches"), HOSTS)
def test_mx_pattern_regex_matches_what_the_pattern_matches(pattern: str, host: str,
                                                           matches: bool) -> None:
    # Python's re stands in for Exim's PCRE: the regexes use their common subset
    # (test_differential_exim_mx has Exim's own PCRE judge random cases).
    regex = re.compile(answers.exim_host_regex(pattern))
    assert bool(regex.search(host)) is matches
    assert mx_matches(pattern, host) is matches


def test_rcpt_line_of_an_mta_sts_domain_names_the_hosts_exim_ignores() -> None:
    secure = SecureMatch(("mx.example.com", "*.example.net"))
    assert secure.exim_ignore_hosts() == \
        r"<; !^(?i:mx\.example\.com)$ ; !^(?i:[^.]+\.example\.net)$ ; *"
    line = answers.RcptLine("accept", "none", secure).encode()
    # _quoted doubles each backslash; Exim's ${extract} undoes it (test_exim_mta_sts).
    assert line == (b'action=accept status=none tls=secure sts_ignore_hosts='
                    b'"<; !^(?i:mx\\\\.example\\\\.com)$ ; '
                    b'!^(?i:[^.]+\\\\.example\\\\.net)$ ; *"\n')
    assert b"sts_ignore_hosts" not in answers.RcptLine("accept", "dane",
                                                       TlsPolicy.DANE_ONLY).encode()


@pytest.mark.parametrize("module", ["danemilter.policymap.netstring",
                                    "danemilter.policymap.answers"])
def test_codec_and_answers_are_pure_core(module: str) -> None:
    from tests.unit.test_layers import IO_MODULES, loaded_by

    loaded = loaded_by(module)
    assert not {m for m in loaded if m.split(".")[0] in IO_MODULES or m in IO_MODULES}
