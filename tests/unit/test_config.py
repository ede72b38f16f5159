from pathlib import Path

import pytest

from danemilter.config import (
    ApplyTo,
    ConfigErrors,
    DaneMode,
    ErrorAction,
    FailAction,
    OcspMode,
    ProbeMode,
    Rule,
    Settings,
    load,
    parse,
)
from danemilter.errors import ConfigError
from tests.support.pki import make_ca

REPO = Path(__file__).resolve().parents[2]

FULL = """\
listen: unix:/var/spool/postfix/danemilter/danemilter.sock
socket_mode: "0660"
socket_group: root
resolver: {address: "::1", port: 5353, timeout: 1.5}
deadline: 8
header: X-DANE-Check
report_only: yes
on_error: accept
apply_to: networks
networks: [192.0.2.0/24, "2001:db8::/32"]
skip_domains: [Local.Example, .internal.example]
log_level: DEBUG
policy:
  default: {dane: try, ocsp: auto, on_fail: tag}
  domains:
    bank.example: {dane: require, on_fail: reject, reply: "Bank mail must use DANE"}
    .gov.example: {dane: require, on_fail: defer}
    mx.gov.example: {dane: off}
    hold.example: {dane: require, on_fail: hold, ocsp: off}
"""


def test_full_file_loads_into_values() -> None:
    s = parse(FULL, "full.yaml")
    assert s.listen == "unix:/var/spool/postfix/danemilter/danemilter.sock"
    assert s.socket_mode == 0o660
    assert (s.resolver.address, s.resolver.port, s.resolver.timeout) == ("::1", 5353, 1.5)
    assert s.deadline == 8
    assert s.header == "X-DANE-Check"
    assert s.report_only is True
    assert s.on_error is ErrorAction.ACCEPT
    assert s.apply_to is ApplyTo.NETWORKS
    assert [str(n) for n in s.networks] == ["192.0.2.0/24", "2001:db8::/32"]
    assert s.skip_domains == {"local.example", ".internal.example"}
    assert s.log_level == "debug"
    assert s.policy.default == Rule(DaneMode.TRY, OcspMode.AUTO, FailAction.TAG)


@pytest.mark.parametrize(
    ("domain", "dane", "on_fail", "ocsp"),
    [
        ("bank.example", DaneMode.REQUIRE, FailAction.REJECT, OcspMode.AUTO),
        ("a.gov.example", DaneMode.REQUIRE, FailAction.DEFER, OcspMode.AUTO),
        ("x.y.gov.example", DaneMode.REQUIRE, FailAction.DEFER, OcspMode.AUTO),
        ("mx.gov.example", DaneMode.OFF, FailAction.TAG, OcspMode.AUTO),  # exact beats suffix
        ("gov.example", DaneMode.TRY, FailAction.TAG, OcspMode.AUTO),  # .suffix excludes itself
        ("hold.example", DaneMode.REQUIRE, FailAction.HOLD, OcspMode.OFF),
        ("other.example", DaneMode.TRY, FailAction.TAG, OcspMode.AUTO),
        ("notbank.example", DaneMode.TRY, FailAction.TAG, OcspMode.AUTO),
    ],
)
def test_most_specific_rule_wins(
    domain: str, dane: DaneMode, on_fail: FailAction, ocsp: OcspMode
) -> None:
    rule = parse(FULL, "full.yaml").policy.rule_for(domain)
    assert (rule.dane, rule.on_fail, rule.ocsp) == (dane, on_fail, ocsp)


def test_domain_rules_inherit_the_default() -> None:
    rule = parse(FULL, "full.yaml").policy.rule_for("bank.example")
    assert rule.reply == "Bank mail must use DANE"
    assert rule.ocsp is OcspMode.AUTO


@pytest.mark.parametrize(
    ("domain", "skipped"),
    [("local.example", True), ("sub.local.example", False), ("a.internal.example", True),
     ("internal.example", False), ("example", False)],
)
def test_skip_domains(domain: str, skipped: bool) -> None:
    assert parse(FULL, "full.yaml").skips(domain) is skipped


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("listen: 8891\n", 1, "listen must be a non-empty string"),
        ("listen: tcp:8891\n", 1, "listen must be inet:PORT@HOST"),
        ("\n\ncolour: red\n", 3, "unknown key 'colour'"),
        ("deadline: '3'\n", 1, "deadline must be a number"),
        ("deadline: 30\n", 1, "between"),
        ("report_only: maybe\n", 1, "true or false"),
        ("on_error: drop\n", 1, "tempfail|accept"),
        ("apply_to: networks\n", 1, "needs a networks list"),
        ("networks: [300.1.1.1/8]\n", 1, "not a network"),
        ("skip_domains: [bad..name]\n", 1, "skip_domains entry"),
        ("resolver: {address: localhost}\n", 1, "IP address"),
        ("resolver: {port: 0}\n", 1, "resolver.port"),
        ("header: 'X DANE'\n", 1, "header field name"),
        ("socket_mode: 999\n", 1, "octal"),
        ("log_level: loud\n", 1, "log_level"),
        ("policy:\n  default:\n    dane: maybe\n", 3, "off|try|require"),
        ("policy:\n  default: {ocsp: sometimes}\n", 2, "off|auto|require|strict"),
        ("policy:\n  domains:\n    x.example: {on_fail: bounce}\n", 3, "tag|defer|reject|hold"),
        ("policy:\n  domains:\n    x.example: {reply: \"50%\"}\n", 3, "without '%'"),
        ("policy:\n  domains:\n    x.example: {}\n    X.Example.: {}\n", 4, "twice"),
        ("policy:\n  rules: {}\n", 2, "unknown key 'rules'"),
        ("listen: inet:1@x\nlisten: inet:2@x\n", 2, "duplicate key"),
        ("- a\n- b\n", 1, "must be a mapping"),
        ("policy: [unclosed\n", 2, "invalid YAML"),
        ("a: b: c\n", 1, "invalid YAML"),
    ],
)
def test_errors_name_file_and_line(text: str, line: int, message: str) -> None:
    with pytest.raises(ConfigErrors) as caught:
        parse(text, "/etc/danemilter/danemilter.yaml")
    first = caught.value.errors[0]
    assert first.path == "/etc/danemilter/danemilter.yaml"
    assert first.line == line
    assert message in str(first)
    assert str(first).startswith(f"/etc/danemilter/danemilter.yaml:{line}: ")


def test_every_error_is_reported() -> None:
    text = "listen: 5\ncolour: red\npolicy:\n  default: {dane: maybe, x: 1}\n"
    with pytest.raises(ConfigErrors) as caught:
        parse(text, "f.yaml")
    assert [e.line for e in caught.value.errors] == [1, 2, 4, 4]


def test_yaml_off_is_the_word_off() -> None:
    rule = parse("policy:\n  default: {dane: off, ocsp: off}\n", "f").policy.default
    assert (rule.dane, rule.ocsp) == (DaneMode.OFF, OcspMode.OFF)


def test_no_file_is_builtin_defaults_an_empty_file_an_error() -> None:
    for text in ("", "# just a comment\n", "\n\n---\n"):
        with pytest.raises(ConfigErrors, match=r"f\.yaml: the file is empty"):
            parse(text, "f.yaml")
    assert parse("{}", "f.yaml").policy == Settings().policy
    defaults = load(None)
    assert defaults.listen == "inet:8891@127.0.0.1"
    assert defaults.policy.default == Rule(DaneMode.TRY, OcspMode.OFF, FailAction.TAG)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.yaml")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="cannot read"):
        load(binary)


def test_shipped_config_is_valid() -> None:
    settings = load(REPO / "etc" / "danemilter" / "danemilter.yaml")
    assert settings.policy.default.dane is DaneMode.TRY
    assert settings.policy.default.on_fail is FailAction.TAG
    # The shipped file spells out the built-in defaults for the cache and probes.
    assert settings.cache == Settings().cache
    assert settings.probe == Settings().probe


def test_probe_settings_and_rule() -> None:
    s = parse("probe: {port: 2525, timeout: 4, concurrency: 4, helo: relay.example,"
              " allow_private: true, cache_ttl: 0}\npolicy:\n  default: {probe: cached}\n"
              "  domains:\n    bank.example: {probe: inline}\n", "p.yaml")
    assert (s.probe.port, s.probe.timeout, s.probe.concurrency) == (2525, 4, 4)
    assert (s.probe.helo, s.probe.allow_private, s.probe.cache_ttl) == ("relay.example", True, 0)
    assert s.policy.default.probe is ProbeMode.CACHED
    assert s.policy.rule_for("bank.example").probe is ProbeMode.INLINE
    assert Settings().probe.allow_private is False
    assert Settings().policy.default.probe is ProbeMode.OFF


@pytest.mark.parametrize(
    ("text", "message"),
    [("probe: {port: 0}\n", "probe.port"), ("probe: {allow_private: 1}\n", "true or false"),
     ("probe: {retries: 3}\n", "unknown key 'retries'"),
     ("probe: {cache_ttl: -1}\n", "probe.cache_ttl"),
     ("policy:\n  default: {probe: always}\n", "off|cached|inline")],
)
def test_probe_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigErrors, match=message):
        parse(text, "p.yaml")


def test_transport_and_limits() -> None:
    from danemilter.config import MilterLimits, Transport
    default = parse("{}", "empty.yaml")
    assert default.transport is Transport.ASYNCIO
    assert default.limits == MilterLimits()
    s = parse("transport: libmilter\nlisten: systemd\n"
              "limits: {max_connections: 50, idle_timeout: 30, max_packet: 65536}\n", "t.yaml")
    assert s.transport is Transport.LIBMILTER
    assert s.listen == "systemd"
    assert s.limits == MilterLimits(max_connections=50, idle_timeout=30, max_packet=65536)


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("transport: threads\n", 1, "transport must be one of asyncio|libmilter"),
        ("\nlimits: {max_packet: 100}\n", 2, "limits.max_packet must be between 65536"),
        ("limits:\n  max_connections: 1.5\n", 2, "limits.max_connections must be a whole"),
        ("limits:\n  idle_timeout: 0\n", 2, "limits.idle_timeout must be between 1"),
        ("limits:\n  burst: 3\n", 2, "unknown key 'burst' in limits"),
        ("listen: systemd:3\n", 1, "listen must be inet:PORT@HOST"),
    ],
)
def test_transport_and_limit_errors_name_the_line(text: str, line: int, message: str) -> None:
    with pytest.raises(ConfigErrors) as caught:
        parse(text, "bad.yaml")
    error = caught.value.errors[0]
    assert error.line == line
    assert message in str(error), str(error)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("/nonexistent/ca.pem", "mta_sts.ca_file: cannot read /nonexistent/ca.pem"),
        ("{tmp}/empty.pem", "holds no PEM certificate"),
        ("{tmp}", "not a regular file"),
    ],
)
def test_an_unusable_mta_sts_ca_file_is_refused_with_its_line(
        tmp_path: Path, value: str, message: str) -> None:
    (tmp_path / "empty.pem").write_text("nothing here\n")
    with pytest.raises(ConfigErrors) as caught:
        parse(f"mta_sts:\n  port: 443\n  ca_file: {value.format(tmp=tmp_path)}\n", "c.yaml")
    error = caught.value.errors[0]
    assert error.line == 3
    assert message in str(error), str(error)


def test_a_pem_ca_file_is_taken(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(make_ca("config test CA").pem())
    assert parse(f"mta_sts: {{ca_file: {ca}}}\n", "c.yaml").mta_sts.ca_file == str(ca)
