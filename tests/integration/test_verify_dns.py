"""`danemilter verify DOMAIN --dns-only --json` against the DNSSEC test bed.

Every case of dns_cases.py is run in-process through danemilter.cli.main and its JSON is
compared with the expectation derived from RFC 7672 (see the rules at the top of
dns_cases.py): status, usage, mx_secure and, host by host in MX preference order, name,
tlsa_state, tlsa_base, records (as a sorted list) and addresses (as a set).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from danemilter.cli import main
from tests.integration import dns_cases as dc
from tests.support.dnsbed import DnssecTestBed, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _run_verify(
    capsys: pytest.CaptureFixture[str], domain: str, resolver: str
) -> tuple[int, dict[str, Any], str]:
    capsys.readouterr()  # drop anything printed before
    rc = main(["verify", domain, "--dns-only", "--json", "--resolver", resolver])
    out, err = capsys.readouterr()
    try:
        document = json.loads(out)
    except json.JSONDecodeError:
        pytest.fail(f"verify exited {rc} without a JSON document; stdout={out!r} stderr={err!r}")
    assert isinstance(document, list), f"JSON must be an array, got {document!r}"
    assert len(document) == 1, f"one object per domain expected, got {document!r}"
    (result,) = document
    assert isinstance(result, dict), result
    return rc, result, err


def _host_view(host: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": host.get("name"),
        "tlsa_state": host.get("tlsa_state"),
        "tlsa_base": host.get("tlsa_base"),
        "records": sorted(host.get("records", [])),
        "addresses": sorted(set(host.get("addresses", []))),
    }


@pytest.mark.parametrize("case", dc.CASES, ids=lambda c: c.domain)
def test_verify_dns_only(
    dns_bed: DnssecTestBed, capsys: pytest.CaptureFixture[str], case: dc.Case
) -> None:
    resolver = f"{dns_bed.resolver_address}:{dns_bed.resolver_port}"
    rc, result, err = _run_verify(capsys, case.domain, resolver)
    expected = case.as_json()
    context = f"{case.domain} ({case.why}); stderr={err!r}"

    assert rc == 0, context
    assert result.get("domain") == case.domain, context
    assert result.get("status") == case.status, context
    assert result.get("usage") == case.usage, context
    assert result.get("mx_secure") is case.mx_secure, context
    hosts = result.get("hosts")
    assert isinstance(hosts, list), context
    assert [h.get("name") for h in hosts] == [h.name for h in case.hosts], context
    for got, want in zip(hosts, expected["hosts"], strict=True):
        view = _host_view(got)
        where = f"{context}; host {want['name']}"
        assert view["tlsa_state"] == want["tlsa_state"], where
        assert view["tlsa_base"] == want["tlsa_base"], where
        assert view["records"] == want["records"], where
        assert view["addresses"] == want["addresses"], where
    # and the whole comparable object at once, for a readable diff
    assert {
        "domain": result["domain"],
        "status": result["status"],
        "usage": result["usage"],
        "mx_secure": result["mx_secure"],
        "hosts": [_host_view(h) for h in hosts],
    } == expected


@pytest.fixture
def silent_resolver() -> Iterator[int]:
    """A loopback port with a UDP socket and a listening TCP socket that never answer."""
    for _ in range(10):
        port = free_port()
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            udp.bind(("127.0.0.1", port))
            tcp.bind(("127.0.0.1", port))
        except OSError:
            udp.close()
            tcp.close()
            continue
        tcp.listen(16)  # the kernel completes handshakes; nothing is ever read or sent
        try:
            yield port
        finally:
            udp.close()
            tcp.close()
        return
    pytest.fail("no free loopback port for the silent resolver")


@pytest.mark.timeout(30)
def test_verify_with_silent_resolver_is_tempfail_within_deadline(
    capsys: pytest.CaptureFixture[str], silent_resolver: int
) -> None:
    began = time.monotonic()
    rc, result, err = _run_verify(capsys, "ee.secure.test", f"127.0.0.1:{silent_resolver}")
    elapsed = time.monotonic() - began
    assert elapsed < 10, f"verify took {elapsed:.1f} s against a silent resolver"
    assert rc == 0, err
    assert result.get("domain") == "ee.secure.test"
    assert result.get("status") == "tempfail"
    assert result.get("usage") == 0
    assert result.get("mx_secure") is False
    assert result.get("hosts") == []
