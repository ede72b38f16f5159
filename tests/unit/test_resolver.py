import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from danemilter.errors import InputError
from danemilter.resolver import ResolverSettings, Security, interpret

QNAME = dns.name.from_text("mx.example.test.")


def response(
    *,
    rcode: dns.rcode.Rcode = dns.rcode.NOERROR,
    ad: bool = False,
    answer: tuple[tuple[str, int, str, str], ...] = (),
    soa: tuple[int, int] | None = None,
    ede: int | None = None,
    qtype: dns.rdatatype.RdataType = dns.rdatatype.A,
) -> dns.message.Message:
    query = dns.message.make_query(QNAME, qtype, want_dnssec=True)
    msg = dns.message.make_response(query)
    msg.set_rcode(rcode)
    if ad:
        msg.flags |= dns.flags.AD
    for owner, ttl, rdtype, text in answer:
        msg.answer.append(dns.rrset.from_text(owner, ttl, "IN", rdtype, text))
    if soa is not None:
        ttl, minimum = soa
        msg.authority.append(dns.rrset.from_text(
            "example.test.", ttl, "IN", "SOA", f"ns. host. 1 3600 600 86400 {minimum}"))
    if ede is not None:
        msg.use_edns(0, options=[dns.edns.EDEOption(dns.edns.EDECode(ede), "test")])
    return msg


@pytest.mark.parametrize(
    ("msg", "security", "records", "canonical", "ttl"),
    [
        (response(ad=True, answer=(("mx.example.test.", 300, "A", "127.0.0.1"),)),
         Security.SECURE, 1, "mx.example.test", 300),
        (response(answer=(("mx.example.test.", 300, "A", "127.0.0.1"),)),
         Security.INSECURE, 1, "mx.example.test", 300),
        # CNAME chain: the answer's name is the expanded one, TTL the chain's minimum.
        (response(ad=True, answer=(("mx.example.test.", 60, "CNAME", "a.example.test."),
                                   ("a.example.test.", 120, "CNAME", "b.other.test."),
                                   ("b.other.test.", 300, "A", "127.0.0.2"))),
         Security.SECURE, 1, "b.other.test", 60),
        # NODATA: negative TTL is min(SOA TTL, SOA MINIMUM) per RFC 2308.
        (response(ad=True, soa=(3600, 30)), Security.SECURE, 0, "mx.example.test", 30),
        (response(rcode=dns.rcode.NXDOMAIN, ad=True, soa=(20, 600)),
         Security.SECURE, 0, "mx.example.test", 20),
        # A CNAME to a name without data is NODATA at the target.
        (response(answer=(("mx.example.test.", 60, "CNAME", "gone.example.test."),), soa=(90, 90)),
         Security.INSECURE, 0, "gone.example.test", 60),
    ],
)
def test_interpret_answers(
    msg: dns.message.Message, security: Security, records: int, canonical: str, ttl: int
) -> None:
    answer = interpret(QNAME, dns.rdatatype.A, msg)
    assert answer.security is security
    assert len(answer.records) == records
    assert answer.canonical_name == canonical
    assert answer.ttl == ttl
    assert not answer.failed


@pytest.mark.parametrize(
    ("msg", "security", "reason_part"),
    [
        (response(rcode=dns.rcode.SERVFAIL, ede=6), Security.BOGUS, "extended DNS error 6"),
        (response(rcode=dns.rcode.SERVFAIL, ede=7), Security.BOGUS, "extended DNS error 7"),
        (response(rcode=dns.rcode.SERVFAIL, ede=12), Security.BOGUS, "extended DNS error 12"),
        # EDE 22 (no reachable authority) is not a DNSSEC failure, but SERVFAIL still is unusable.
        (response(rcode=dns.rcode.SERVFAIL, ede=22), Security.BOGUS, "SERVFAIL"),
        (response(rcode=dns.rcode.SERVFAIL), Security.BOGUS, "SERVFAIL"),
        (response(rcode=dns.rcode.REFUSED), Security.INDETERMINATE, "REFUSED"),
        (response(rcode=dns.rcode.FORMERR), Security.INDETERMINATE, "FORMERR"),
    ],
)
def test_interpret_failures(msg: dns.message.Message, security: Security, reason_part: str) -> None:
    answer = interpret(QNAME, dns.rdatatype.A, msg)
    assert answer.security is security
    assert answer.failed
    assert reason_part in answer.reason
    assert answer.records == ()


def test_interpret_cname_loop_is_indeterminate() -> None:
    msg = response(answer=(("mx.example.test.", 60, "CNAME", "loop.example.test."),
                           ("loop.example.test.", 60, "CNAME", "mx.example.test.")))
    answer = interpret(QNAME, dns.rdatatype.A, msg)
    assert answer.security is Security.INDETERMINATE
    assert "CNAME chain" in answer.reason


def test_interpret_ignores_records_of_other_owners() -> None:
    msg = response(ad=True, answer=(("elsewhere.example.test.", 60, "A", "192.0.2.1"),),
                   soa=(60, 60))
    answer = interpret(QNAME, dns.rdatatype.A, msg)
    assert answer.records == ()


@pytest.mark.parametrize(
    ("spec", "address", "port"),
    [
        ("127.0.0.1", "127.0.0.1", 53),
        ("127.0.0.1:5353", "127.0.0.1", 5353),
        ("::1", "::1", 53),
        ("[::1]", "::1", 53),
        ("[::1]:5300", "::1", 5300),
    ],
)
def test_resolver_spec(spec: str, address: str, port: int) -> None:
    settings = ResolverSettings.from_spec(spec)
    assert (settings.address, settings.port) == (address, port)


@pytest.mark.parametrize(
    "spec", ["localhost", "127.0.0.1:", "127.0.0.1:x", "127.0.0.1:70000", "[::1", "[::1]x", ""]
)
def test_resolver_spec_rejects(spec: str) -> None:
    with pytest.raises(InputError):
        ResolverSettings.from_spec(spec)


def test_loopback_detection() -> None:
    assert ResolverSettings("127.0.0.53").is_loopback
    assert ResolverSettings("::1").is_loopback
    assert not ResolverSettings("192.0.2.53").is_loopback


def test_tlsa_with_wrong_digest_length_is_kept_not_refused() -> None:
    """One malformed record must not make the whole (secure) answer a failure."""
    good = "3 1 1 " + "ab" * 32
    short = "3 1 1 " + "cd" * 31
    query = dns.message.make_query("_25._tcp.mx.example.test.", "TLSA", want_dnssec=True)
    reply = dns.message.make_response(query)
    reply.flags |= dns.flags.AD
    reply.answer.append(dns.rrset.from_text("_25._tcp.mx.example.test.", 60, "IN", "TLSA",
                                            good, short))
    parsed = dns.message.from_wire(reply.to_wire())
    answer = interpret(dns.name.from_text("_25._tcp.mx.example.test."),
                       dns.rdatatype.TLSA, parsed)
    assert answer.secure
    assert sorted(r.to_text() for r in answer.records) == sorted([good, short])
