"""The DNSSEC test bed behaves as designed, seen with dnspython through the validating unbound.

These tests check the DNS layer only (what the resolver says), not danemilter: secure
answers carry AD, the unsigned zone does not, edited RRsets are bogus (SERVFAIL + EDE 6),
denials are authenticated with NSEC or NSEC3 as the zone asks.
"""

from __future__ import annotations

import struct

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.wire
import pytest
from dns.rdtypes.ANY.DS import DS
from dns.rdtypes.ANY.MX import MX
from dns.rdtypes.ANY.NSEC3PARAM import NSEC3PARAM

from tests.integration import dns_cases as dc
from tests.support.dnsbed import DnsBedError, DnssecTestBed, PostSignEdit, Zone

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

IN = dns.rdataclass.IN


def _answer(reply: dns.message.Message, name: str, rdtype: str) -> set[dns.rdata.Rdata]:
    rrset = reply.get_rrset(
        reply.answer, dns.name.from_text(name), IN, dns.rdatatype.from_text(rdtype)
    )
    return set(rrset) if rrset is not None else set()


def _rdatas(rdtype: str, *texts: str) -> set[dns.rdata.Rdata]:
    return {dns.rdata.from_text(IN, dns.rdatatype.from_text(rdtype), t) for t in texts}


def _types(section: list[dns.rrset.RRset]) -> list[tuple[str, str]]:
    return sorted((rr.name.to_text(), dns.rdatatype.to_text(rr.rdtype)) for rr in section)


def _ede_codes(reply: dns.message.Message) -> list[int]:
    return [int(option.code) for option in reply.extended_errors()]


# ------------------------------------------------------------------------ the bed itself
def test_bed_started_quickly_on_distinct_loopback_ports(dns_bed: DnssecTestBed) -> None:
    assert dns_bed.resolver_address == "127.0.0.1"
    assert dns_bed.resolver_port > 0
    assert dns_bed.nsd_port > 0
    assert dns_bed.resolver_port != dns_bed.nsd_port
    assert set(dns_bed.timings) == {"zones", "nsd", "unbound"}
    assert 0 < dns_bed.startup_seconds < 10
    assert dns_bed.trust_anchor.startswith("test.\t")
    assert " DS " in dns_bed.trust_anchor.replace("\t", " ")


@pytest.mark.parametrize(
    "zone", ["test", "secure.test", "nsec3.test", "hosting.test", "insecure.test"]
)
def test_nsd_serves_every_zone_authoritatively(dns_bed: DnssecTestBed, zone: str) -> None:
    reply = dns_bed.query(zone, "SOA", server="nsd", dnssec=False)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA
    assert _answer(reply, zone, "SOA") == _rdatas(
        "SOA", "ns.test. hostmaster.test. 1 3600 600 86400 60"
    )


def test_signed_children_have_ds_in_signed_parent(dns_bed: DnssecTestBed) -> None:
    for child in ("secure.test", "nsec3.test", "hosting.test"):
        reply = dns_bed.query(child, "DS")
        assert reply.rcode() == dns.rcode.NOERROR, child
        assert reply.flags & dns.flags.AD, child
        (ds,) = _answer(reply, child, "DS")
        assert isinstance(ds, DS)
        assert (ds.algorithm, ds.digest_type, len(ds.digest)) == (13, 2, 32), child


def test_unsigned_child_has_proven_absent_ds(dns_bed: DnssecTestBed) -> None:
    reply = dns_bed.query("insecure.test", "DS")
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AD  # the denial of DS comes from the signed test. zone
    assert reply.answer == []
    nsec = reply.get_rrset(
        reply.authority, dns.name.from_text("insecure.test"), IN, dns.rdatatype.NSEC
    )
    assert nsec is not None
    (record,) = nsec
    covered = {dns.rdatatype.to_text(t) for w in record.windows for t in _window_types(w)}
    assert "NS" in covered
    assert "DS" not in covered


def _window_types(window: tuple[int, bytes]) -> list[dns.rdatatype.RdataType]:
    number, bitmap = window
    return [
        dns.rdatatype.RdataType.make(number * 256 + i * 8 + j)
        for i, octet in enumerate(bitmap)
        for j in range(8)
        if octet & (0x80 >> j)
    ]


# --------------------------------------------------------------------- secure answers
SECURE_ANSWERS = [
    ("ee.secure.test", "MX", ("10 mx.ee.secure.test.",)),
    ("mx.ee.secure.test", "A", ("127.0.0.11",)),
    ("mx.ee.secure.test", "AAAA", ("::1",)),
    ("_25._tcp.mx.ee.secure.test", "TLSA", (dc.EE,)),
    ("_25._tcp.mx.ta.secure.test", "TLSA", (dc.TA_CERT, dc.TA_SPKI)),
    ("both.secure.test", "MX", ("10 mx1.both.secure.test.", "20 mx2.both.secure.test.")),
    ("nullmx.secure.test", "MX", ("0 .",)),
    ("nomx.secure.test", "A", ("127.0.0.24",)),
    ("_25._tcp.nomx.secure.test", "TLSA", (dc.NOMX,)),
    ("ee.nsec3.test", "MX", ("10 mx.ee.nsec3.test.",)),
    ("_25._tcp.mx.ee.nsec3.test", "TLSA", (dc.N3_EE,)),
    ("_25._tcp.srv1.hosting.test", "TLSA", (dc.CNAME_EXP_TARGET,)),
    ("_25._tcp.mx.hosting.test", "TLSA", (dc.HOSTING_MX,)),
    ("_25._tcp.mx.cname-insec.secure.test", "TLSA", (dc.CNAME_INSEC_ORIG,)),
    ("badtlsa.secure.test", "MX", ("10 mx.badtlsa.secure.test.",)),
    ("_25._tcp.mx.badaddr.secure.test", "TLSA", (dc.BADADDR_TLSA,)),
]


@pytest.mark.parametrize(("name", "rdtype", "expected"), SECURE_ANSWERS)
def test_secure_answer_has_ad(
    dns_bed: DnssecTestBed, name: str, rdtype: str, expected: tuple[str, ...]
) -> None:
    reply = dns_bed.query(name, rdtype)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AD
    assert _answer(reply, name, rdtype) == _rdatas(rdtype, *expected)
    assert _ede_codes(reply) == []


def test_unusable_tlsa_rrset_is_secure_and_served_as_published(
    dns_bed: DnssecTestBed,
) -> None:
    # Stock dnspython refuses the whole message (a digest length that does not fit the
    # matching type; danemilter.resolver lifts that check process-wide), so read the
    # answer section from the wire, independent of any rdata parser.
    name = "_25._tcp.mx.unusable.secure.test"
    wire = dns_bed.query_wire(name, "TLSA")
    flags, rcode, records = _tlsa_from_wire(wire)
    assert rcode == dns.rcode.NOERROR
    assert flags & dns.flags.AD
    assert sorted(records) == sorted(
        [dc.UNUSABLE_PKIX_TA, dc.UNUSABLE_PKIX_EE, dc.UNUSABLE_SHORT, dc.UNUSABLE_512]
    )


def _tlsa_from_wire(wire: bytes) -> tuple[int, int, list[str]]:
    """(header flags, rcode, answer-section TLSA records as "U S M hex") from a raw reply."""
    _, flags, qdcount, ancount, _, _ = struct.unpack("!HHHHHH", wire[:12])
    parser = dns.wire.Parser(wire, 12)
    for _ in range(qdcount):
        dns.name.from_wire_parser(parser)
        parser.get_struct("!HH")
    records = []
    for _ in range(ancount):
        dns.name.from_wire_parser(parser)
        rdtype, _, _, rdlen = parser.get_struct("!HHIH")
        rdata = parser.get_bytes(rdlen)
        if rdtype == dns.rdatatype.TLSA:
            records.append(f"{rdata[0]} {rdata[1]} {rdata[2]} {rdata[3:].hex()}")
    return flags, flags & 0x000F, records


def test_secure_cname_chain_has_ad(dns_bed: DnssecTestBed) -> None:
    reply = dns_bed.query("mx.cname-exp.secure.test", "A")
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AD
    assert _answer(reply, "mx.cname-exp.secure.test", "CNAME") == _rdatas(
        "CNAME", "srv1.hosting.test."
    )
    assert _answer(reply, "srv1.hosting.test", "A") == _rdatas("A", "127.0.0.21")


# ------------------------------------------------------------------- insecure answers
INSECURE_ANSWERS = [
    ("plain.insecure.test", "MX", ("10 mx.plain.insecure.test.",)),
    ("mx.plain.insecure.test", "A", ("127.0.0.29",)),
    ("_25._tcp.mx.plain.insecure.test", "TLSA", (dc.PLAIN_INSECURE,)),
    ("insec-mx.insecure.test", "MX", ("10 mx.hosting.test.",)),
    ("_25._tcp.srv3.insecure.test", "TLSA", (dc.CNAME_INSEC_TARGET,)),
]


@pytest.mark.parametrize(("name", "rdtype", "expected"), INSECURE_ANSWERS)
def test_insecure_answer_has_no_ad(
    dns_bed: DnssecTestBed, name: str, rdtype: str, expected: tuple[str, ...]
) -> None:
    reply = dns_bed.query(name, rdtype)
    assert reply.rcode() == dns.rcode.NOERROR
    assert not reply.flags & dns.flags.AD
    assert _answer(reply, name, rdtype) == _rdatas(rdtype, *expected)
    assert _ede_codes(reply) == []


def test_cname_chain_into_unsigned_zone_is_insecure(dns_bed: DnssecTestBed) -> None:
    reply = dns_bed.query("mx.cname-insec.secure.test", "A")
    assert reply.rcode() == dns.rcode.NOERROR
    assert not reply.flags & dns.flags.AD
    assert _answer(reply, "mx.cname-insec.secure.test", "CNAME") == _rdatas(
        "CNAME", "srv3.insecure.test."
    )
    assert _answer(reply, "srv3.insecure.test", "A") == _rdatas("A", "127.0.0.23")


# ---------------------------------------------------------------------- bogus answers
BOGUS = [
    ("_25._tcp.mx.badtlsa.secure.test", "TLSA", dc.BADTLSA_FORGED),
    ("badmx.secure.test", "MX", "10 mx.ee.secure.test."),
    ("mx.badaddr.secure.test", "A", "127.0.0.118"),
    ("_25._tcp.mx1.skipfail.secure.test", "TLSA", dc.SKIP1_FORGED),
]


@pytest.mark.parametrize(("name", "rdtype", "forged"), BOGUS)
def test_edited_rrset_is_bogus(
    dns_bed: DnssecTestBed, name: str, rdtype: str, forged: str
) -> None:
    reply = dns_bed.query(name, rdtype)
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert not reply.flags & dns.flags.AD
    assert reply.answer == []
    assert _ede_codes(reply) == [dns.edns.EDECode.DNSSEC_BOGUS]  # 6
    # With checking disabled the resolver hands out the edited data: it is bogus because
    # of the edit, not because the name is missing or the chain of trust is broken.
    unchecked = dns_bed.query(name, rdtype, cd=True)
    assert unchecked.rcode() == dns.rcode.NOERROR
    assert _answer(unchecked, name, rdtype) == _rdatas(rdtype, forged)


# --------------------------------------------------------------------------- denials
def test_nonexistent_domain_is_secure_nxdomain(dns_bed: DnssecTestBed) -> None:
    reply = dns_bed.query("nxdomain.secure.test", "MX")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert reply.flags & dns.flags.AD
    assert reply.answer == []
    kinds = {t for _, t in _types(reply.authority)}
    assert kinds == {"SOA", "NSEC", "RRSIG"}


@pytest.mark.parametrize(
    ("name", "proof", "other"),
    [
        ("_25._tcp.mx.notlsa.secure.test", "NSEC", "NSEC3"),
        ("_25._tcp.mx.notlsa.nsec3.test", "NSEC3", "NSEC"),
        ("_25._tcp.mx1.partial.secure.test", "NSEC", "NSEC3"),
        ("_25._tcp.srv2.hosting.test", "NSEC", "NSEC3"),
    ],
)
def test_missing_tlsa_is_authenticated_denial(
    dns_bed: DnssecTestBed, name: str, proof: str, other: str
) -> None:
    reply = dns_bed.query(name, "TLSA")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert reply.flags & dns.flags.AD
    assert reply.answer == []
    kinds = {t for _, t in _types(reply.authority)}
    assert kinds == {"SOA", proof, "RRSIG"}
    assert other not in kinds


def test_nsec3_parameters_follow_rfc9276(dns_bed: DnssecTestBed) -> None:
    reply = dns_bed.query("nsec3.test", "NSEC3PARAM")
    assert reply.flags & dns.flags.AD
    (param,) = _answer(reply, "nsec3.test", "NSEC3PARAM")
    assert isinstance(param, NSEC3PARAM)
    assert (param.algorithm, param.flags, param.iterations, param.salt) == (1, 0, 0, b"")


def test_domain_without_mx_is_secure_nodata(dns_bed: DnssecTestBed) -> None:
    reply = dns_bed.query("nomx.secure.test", "MX")
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AD
    assert reply.answer == []
    nsec = reply.get_rrset(
        reply.authority, dns.name.from_text("nomx.secure.test"), IN, dns.rdatatype.NSEC
    )
    assert nsec is not None
    (record,) = nsec
    covered = {dns.rdatatype.to_text(t) for w in record.windows for t in _window_types(w)}
    assert covered == {"A", "AAAA", "RRSIG", "NSEC"}


# ---------------------------------------------- the cases agree with the zone data
@pytest.mark.parametrize("case", dc.CASES, ids=lambda c: c.domain)
def test_case_mx_lookup_matches_expectation(dns_bed: DnssecTestBed, case: dc.Case) -> None:
    """The DNS facts each expectation in dns_cases.py rests on (MX rcode and AD bit)."""
    reply = dns_bed.query(case.domain, "MX")
    if case.status == "nxdomain":
        assert reply.rcode() == dns.rcode.NXDOMAIN
    elif case.status == "tempfail" and not case.hosts:
        assert reply.rcode() == dns.rcode.SERVFAIL
    else:
        assert reply.rcode() == dns.rcode.NOERROR
    assert bool(reply.flags & dns.flags.AD) is case.mx_secure
    if case.status == "nullmx":
        assert _answer(reply, case.domain, "MX") == _rdatas("MX", "0 .")
    elif reply.rcode() == dns.rcode.NOERROR and reply.answer:
        mxs = [rd for rd in _answer(reply, case.domain, "MX") if isinstance(rd, MX)]
        names = [
            rd.exchange.to_text(omit_final_dot=True)
            for rd in sorted(mxs, key=lambda rd: rd.preference)
        ]
        assert names == [h.name for h in case.hosts]


@pytest.mark.parametrize(
    "host",
    [h for c in dc.CASES for h in c.hosts],
    ids=lambda h: h.name,
)
def test_case_host_addresses_match_expectation(
    dns_bed: DnssecTestBed, host: dc.ExpectedHost
) -> None:
    if not host.addresses:  # the one bogus address case: A is bogus, AAAA is secure NODATA
        assert dns_bed.query(host.name, "A").rcode() == dns.rcode.SERVFAIL
        reply = dns_bed.query(host.name, "AAAA")
        assert reply.rcode() == dns.rcode.NOERROR
        assert reply.flags & dns.flags.AD
        assert reply.answer == []
        return
    found: set[str] = set()
    for rdtype in ("A", "AAAA"):
        reply = dns_bed.query(host.name, rdtype)
        assert reply.rcode() == dns.rcode.NOERROR
        for rrset in reply.answer:
            if rrset.rdtype == dns.rdatatype.from_text(rdtype):
                found.update(rd.address for rd in rrset)
    assert found == set(host.addresses)


# ------------------------------------------------------- resolver stop/start, builder
@pytest.mark.timeout(60)
def test_resolver_can_be_stopped_and_restarted() -> None:
    zone = Zone("solo.test", records=("www A 127.0.0.9",))
    with DnssecTestBed([zone]) as bed:
        port = bed.resolver_port
        assert bed.query("www.solo.test", "A").flags & dns.flags.AD
        bed.stop_resolver()
        assert not bed.resolver_running
        with pytest.raises(dns.exception.Timeout):
            bed.query("www.solo.test", "A", timeout=0.5)
        # nsd is unaffected
        assert bed.query("www.solo.test", "A", server="nsd").flags & dns.flags.AA
        restart = bed.start_resolver()
        assert bed.resolver_running
        assert bed.resolver_port == port
        assert 0 < restart < 10
        reply = bed.query("www.solo.test", "A")
        assert reply.flags & dns.flags.AD
        assert _answer(reply, "www.solo.test", "A") == _rdatas("A", "127.0.0.9")
        directory = bed.directory
        assert directory.is_dir()
    assert not directory.exists()


def test_edit_that_matches_nothing_is_refused() -> None:
    zone = Zone(
        "edit.test",
        records=("www A 127.0.0.9",),
        edits=(PostSignEdit("www", "A", "127.0.0.10", "127.0.0.11"),),
    )
    bed = DnssecTestBed([zone])
    with pytest.raises(DnsBedError, match="matched 0 records"):
        bed.start()
    assert not bed.resolver_running


def test_zone_description_is_validated() -> None:
    with pytest.raises(ValueError, match="need a signed zone"):
        Zone("x.test", signed=False, edits=(PostSignEdit("a", "A", "1.2.3.4", "1.2.3.5"),))
    with pytest.raises(ValueError, match="nsec3 needs a signed zone"):
        Zone("x.test", signed=False, nsec3=True)
