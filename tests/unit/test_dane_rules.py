"""The pure parts of RFC 7672 domain evaluation: domain status and usage bitfield."""

import pytest

from danemilter.dane import DomainState, HostState, HostStatus, domain_state, usage_bits
from danemilter.tlsa import TLSARecord

EE = TLSARecord(3, 1, 1, bytes(32))
TA = TLSARecord(2, 0, 1, bytes(32))
PKIX = TLSARecord(1, 1, 1, bytes(32))
SHORT = TLSARecord(3, 1, 1, bytes(20))


def host(state: HostState, records: tuple[TLSARecord, ...] = (), addresses: int = 1) -> HostStatus:
    return HostStatus(
        name="mx.example.test", preference=10,
        addresses=tuple(f"127.0.0.{i + 1}" for i in range(addresses)),
        address_secure=True, tlsa_state=state, tlsa_base=None, records=records,
        reason="test", ttl=60,
    )


DANE_EE = host(HostState.DANE, (EE,))
DANE_TA = host(HostState.DANE, (TA, PKIX))
UNUSABLE = host(HostState.UNUSABLE, (PKIX, SHORT))
NONE = host(HostState.NONE)
FAILED = host(HostState.FAILED, addresses=0)
NO_ADDRESS = host(HostState.NONE, addresses=0)


@pytest.mark.parametrize(
    ("hosts", "state"),
    [
        ((DANE_EE,), DomainState.DANE),
        ((DANE_EE, DANE_TA), DomainState.DANE),
        ((DANE_EE, NONE), DomainState.PARTIAL),
        ((NONE, DANE_TA), DomainState.PARTIAL),
        ((DANE_EE, UNUSABLE), DomainState.PARTIAL),
        ((UNUSABLE,), DomainState.UNUSABLE_TLSA),
        ((UNUSABLE, UNUSABLE), DomainState.UNUSABLE_TLSA),
        ((UNUSABLE, NONE), DomainState.NONE),
        ((NONE,), DomainState.NONE),
        # A failed host must not be used (RFC 7672 §2.2); the others decide.
        ((DANE_EE, FAILED), DomainState.DANE),
        ((FAILED, NONE), DomainState.NONE),
        ((FAILED,), DomainState.TEMPFAIL),
        ((FAILED, FAILED), DomainState.TEMPFAIL),
        ((FAILED, NO_ADDRESS), DomainState.TEMPFAIL),
        ((NO_ADDRESS,), DomainState.NONE),
        ((NO_ADDRESS, DANE_EE), DomainState.DANE),
    ],
)
def test_domain_state(hosts: tuple[HostStatus, ...], state: DomainState) -> None:
    assert domain_state(hosts)[0] is state


@pytest.mark.parametrize(
    ("hosts", "bits"),
    [
        ((DANE_EE,), 8),
        ((DANE_TA,), 4),  # the PKIX record beside it is unusable and sets no bit
        ((DANE_EE, DANE_TA), 12),
        ((UNUSABLE,), 0),
        ((NONE, FAILED), 0),
        ((DANE_EE, UNUSABLE), 8),
    ],
)
def test_usage_bits(hosts: tuple[HostStatus, ...], bits: int) -> None:
    assert usage_bits(hosts) == bits
