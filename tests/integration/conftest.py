"""Shared integration fixtures: one DNSSEC test bed (nsd + unbound) per test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration import dns_cases
from tests.support.dnsbed import DnsBedError, DnssecTestBed


@pytest.fixture(scope="session")
def dns_bed() -> Iterator[DnssecTestBed]:
    """nsd serving every zone of dns_cases.ZONES and a validating unbound in front of it.

    Resolver: ``dns_bed.resolver_address``/``dns_bed.resolver_port``.  A test that stops
    the resolver (``dns_bed.stop_resolver()``) must start it again before it returns.
    """
    bed = DnssecTestBed(dns_cases.ZONES)
    try:
        bed.start()
    except DnsBedError as exc:  # missing tools or a daemon that did not come up: an error
        pytest.fail(f"DNSSEC test bed did not start: {exc}", pytrace=False)
    try:
        yield bed
    finally:
        bed.stop()
