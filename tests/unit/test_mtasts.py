"""MTA-STS records, policies and MX patterns (RFC 8461 §3.1, §3.2, §4.1), table-driven."""

from __future__ import annotations

import pytest

from danemilter.mtasts import (
    MAX_POLICY_OCTETS,
    CachedPolicy,
    StsError,
    StsMode,
    StsPolicy,
    StsRecord,
    decode_policy,
    mx_matches,
    parse_policy,
    parse_record,
    refresh_due,
)

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        (["v=STSv1; id=20261203T1;"], StsRecord("20261203T1")),
        (["v=STSv1;id=abc"], StsRecord("abc")),
        (["v=STSv1; id=abc; ext=1"], StsRecord("abc")),            # unknown field ignored
        (["v=spf1 -all", "v=STSv1; id=x1"], StsRecord("x1")),      # others discarded
        ([], None),
        (["v=spf1 -all"], None),
        (["v=STSv1 id=abc"], None),                                # not "v=STSv1;"
    ],
)
def test_records(records: list[str], expected: StsRecord | None) -> None:
    assert parse_record(records) == expected


@pytest.mark.parametrize(
    ("records", "message"),
    [
        (["v=STSv1; id=a", "v=STSv1; id=b"], "2 TXT records"),
        (["v=STSv1;"], "no id"),
        (["v=STSv1; id="], "not 1-32 letters"),
        (["v=STSv1; id=" + "a" * 33], "not 1-32 letters"),
        (["v=STSv1; id=a-b"], "not 1-32 letters"),
        (["v=STSv1; garbage"], "malformed TXT field"),
    ],
)
def test_bad_records(records: list[str], message: str) -> None:
    with pytest.raises(StsError, match=message):
        parse_record(records)


GOOD = "version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmax_age: 604800\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD, StsPolicy(StsMode.ENFORCE, 604800, ("mail.example.com", "*.example.net"))),
        (GOOD.replace("\n", "\r\n"),
         StsPolicy(StsMode.ENFORCE, 604800, ("mail.example.com", "*.example.net"))),
        ("mode: testing\nversion: STSv1\nmx: MX.Example.COM.\nmax_age: 0\nfoo: bar\n",
         StsPolicy(StsMode.TESTING, 0, ("mx.example.com",))),
        ("version: STSv1\nmode: none\nmax_age: 31557600", StsPolicy(StsMode.NONE, 31557600, ())),
        ("version:STSv1\nmode:  enforce \nmx: a.test\nmax_age: 60\n\n",
         StsPolicy(StsMode.ENFORCE, 60, ("a.test",))),
    ],
)
def test_policies(text: str, expected: StsPolicy) -> None:
    policy = parse_policy(text)
    assert policy == expected
    assert parse_policy(policy.to_text()) == policy


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no 'version: STSv1'"),
        ("version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n", "no 'version: STSv1'"),
        ("version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n", "not enforce|testing|none"),
        ("version: STSv1\nmode: enforce\nmax_age: 1\n", "names no mx"),
        ("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 31557601\n", "max_age"),
        ("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -1\n", "max_age"),
        ("version: STSv1\nmode: enforce\nmx: a.test\n", "max_age"),
        ("version: STSv1\nmode: enforce\nmode: none\nmx: a.test\nmax_age: 1\n", "given twice"),
        ("version: STSv1\nmode: enforce\nmx: a..test\nmax_age: 1\n", "malformed mx"),
        ("version: STSv1\nmode: enforce\nmx: *.*.test\nmax_age: 1\n", "malformed mx"),
        ("version: STSv1\nmode enforce\n", "malformed policy line"),
    ],
)
def test_bad_policies(text: str, message: str) -> None:
    with pytest.raises(StsError, match=message):
        parse_policy(text)


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (GOOD.encode(), "text/html", "not text/plain"),
        (GOOD.encode(), None, "not text/plain"),
        (b"\xff\xfe", "text/plain", "not UTF-8"),
        (b"x" * (MAX_POLICY_OCTETS + 1), "text/plain", "larger than"),
    ],
)
def test_bad_bodies(body: bytes, content_type: str | None, message: str) -> None:
    with pytest.raises(StsError, match=message):
        decode_policy(body, content_type)


def test_body_with_charset() -> None:
    assert decode_policy(GOOD.encode(), "text/plain; charset=utf-8").mode is StsMode.ENFORCE


@pytest.mark.parametrize(
    ("pattern", "host", "matches"),
    [
        ("mail.example.com", "mail.example.com", True),
        ("mail.example.com", "MAIL.example.com.", True),
        ("mail.example.com", "mx.example.com", False),
        ("*.example.net", "mx1.example.net", True),
        ("*.example.net", "example.net", False),
        ("*.example.net", "a.b.example.net", False),
        ("*.example.net", ".example.net", False),
    ],
)
def test_mx_patterns(pattern: str, host: str, matches: bool) -> None:
    assert mx_matches(pattern, host) is matches


DAY = 86_400


@pytest.mark.parametrize(
    ("max_age", "age", "due"),
    [
        (7 * DAY, 5 * DAY, False),
        (7 * DAY, 6 * DAY - 1, False),   # a day ahead of expiry at most...
        (7 * DAY, 6 * DAY + 1, True),
        (DAY, DAY * 0.74, False),        # ... a quarter of a short max_age
        (DAY, DAY * 0.76, True),
        (DAY, DAY + 1, False),           # expired: a plain fetch, not a refresh
        (0, 0, False),
    ],
)
def test_refresh_ahead_of_expiry(max_age: int, age: float, due: bool) -> None:
    cached = CachedPolicy(StsPolicy(StsMode.ENFORCE, max_age, ("mx.example.com",)), "id1",
                          fetched_at=1_000_000.0)
    assert refresh_due(cached, 1_000_000.0 + age) is due
