"""DNS fixture domains (all under ``test.``) and what ``verify --dns-only --json`` must say.

The expectations are derived from RFC 7672 (SMTP security via opportunistic DANE TLS),
RFC 7671, RFC 7505 (null MX), RFC 5321 §5.1 and DESIGN.md ("DANE semantics"), never from
an implementation.  Section numbers are RFC 7672 unless stated; wording is paraphrased.

Per host H (each MX target in preference order; the domain itself when it has no MX)
------------------------------------------------------------------------------------
name        the MX target as published (before CNAME expansion), no trailing dot.
addresses   every A and AAAA address of H after CNAME expansion, secure or insecure
            (compared as a set); empty when the address lookup failed.
tlsa_state  failed    a lookup H depends on failed: its A/AAAA or its TLSA query came back
                      bogus, SERVFAIL or timed out.  §2.1.1: such a result is neither an
                      answer nor a denial; §2.1.2/§2.2: the host is treated like an
                      unreachable server and is not used for delivery.
            dane      the TLSA RRset at the TLSA base is secure and has >= 1 usable record
                      (usage DANE-TA(2)/DANE-EE(3), selector 0/1, matching type 0/1/2 with
                      the right digest length; §3.1, DESIGN.md).
            unusable  the TLSA RRset is secure but every record is unusable: PKIX-TA(0)
                      and PKIX-EE(1) are not for SMTP (§3.1.3); a SHA2-256 digest that is
                      not 32 octets or a SHA2-512 one that is not 64 cannot match.  §2.2:
                      TLS is then mandatory but unauthenticated.
            none      secure denial of the TLSA RRset (NXDOMAIN/NODATA), or the TLSA RRset
                      is insecure (insecure TLSA records are ignored: DANE does not apply,
                      §2.2.3).
tlsa_base   the owner base the secure TLSA RRset was found at (§2.2.2, RFC 7671 §7):
            first the fully CNAME-expanded name, but only when every CNAME link and the
            final address records are secure; then the original MX host name.  An
            insecure expansion makes the expanded name no candidate at all.  Null for
            "none" and "failed" (no usable evidence was found; an insecure TLSA RRset is
            not evidence).
records     every record ("U S M hex", lower-case hex) of that secure RRset, usable or
            not; empty for "none" and "failed".

Per domain
----------
mx_secure   the MX lookup's result -- MX RRset, null MX, NODATA (implicit MX) or
            NXDOMAIN -- and every CNAME leading to it validated as secure (AD);
            false when insecure or when the lookup failed.
status      MX lookup bogus/SERVFAIL/timeout -> tempfail (§2.2.1; RFC 5321 §5.1: a
              temporary error defers).  Hosts: [].
            NXDOMAIN -> nxdomain; null MX (RFC 7505) -> nullmx.  Hosts: [].
            Otherwise, with usable hosts = the hosts not in state "failed":
              no usable host               -> tempfail (every candidate must be skipped,
                                              so delivery can only be deferred)
              every usable host is dane    -> dane
              some usable host is dane     -> partial
              every usable host unusable   -> unusable-tlsa
              otherwise                    -> none
usage       Exim bitfield over the usable records of the domain's DANE hosts:
            bit 2 (4) DANE-TA, bit 3 (8) DANE-EE; 0 when no host is DANE.

Why a failed host does not make the whole domain tempfail (the rule argued)
--------------------------------------------------------------------------
§2.1.1 forbids treating a failed TLSA lookup as "no TLSA" (that would be a downgrade),
and §2.1.2/§2.2 prescribe what happens instead: that MX host is not used, exactly as if it were
unreachable, and the client goes on to the next MX host.  Delivery therefore happens only
through the hosts that remain, and the domain's security is the security of those hosts:
``skipfail.secure.test`` (MX 10 bogus TLSA, MX 20 DANE-TA) is ``dane``, not ``partial``
(there is no unauthenticated path) and not ``tempfail`` (mail can leave, over DANE).
Only when no host remains is the verdict ``tempfail`` (``badtlsa``, ``badaddr``), because
RFC 5321 §5.1 turns "no usable MX now" after a temporary error into a retry, not a bounce.
An insecure MX RRset does not switch DANE off for a host with secure TLSA (§2.2.1, as
Postfix does): ``insec-mx.insecure.test`` is ``dane`` with ``mx_secure`` false.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from tests.support.dnsbed import PostSignEdit, Zone

STATUSES = frozenset({"dane", "partial", "none", "unusable-tlsa", "tempfail", "nullmx", "nxdomain"})
HOST_STATES = frozenset({"dane", "unusable", "none", "failed"})


def digest(label: str, octets: int = 32) -> str:
    """A realistic-looking digest (SHA-256 or SHA-512 output, or a cut-down one) in hex."""
    raw = hashlib.sha512(label.encode()).digest() if octets > 32 else hashlib.sha256(
        label.encode()
    ).digest()
    return raw[:octets].hex()


# ---------------------------------------------------------------------- TLSA data
EE = f"3 1 1 {digest('ee')}"
TA_CERT = f"2 0 1 {digest('ta-cert')}"
TA_SPKI = f"2 1 1 {digest('ta-spki')}"
BOTH_EE = f"3 1 1 {digest('both-ee')}"
BOTH_TA = f"2 0 1 {digest('both-ta')}"
BADTLSA = f"3 1 1 {digest('badtlsa')}"
BADTLSA_FORGED = f"3 1 1 {digest('badtlsa-forged')}"
BADMX_TLSA = f"3 1 1 {digest('badmx')}"
BADADDR_TLSA = f"3 1 1 {digest('badaddr')}"
SKIP1 = f"3 1 1 {digest('skipfail-1')}"
SKIP1_FORGED = f"3 1 1 {digest('skipfail-1-forged')}"
SKIP2 = f"2 1 1 {digest('skipfail-2')}"
CNAME_EXP_ORIG = f"3 1 1 {digest('cname-exp-original')}"
CNAME_EXP_TARGET = f"2 0 1 {digest('cname-exp-target')}"
CNAME_ORIG = f"3 1 1 {digest('cname-orig')}"
CNAME_INSEC_ORIG = f"3 1 1 {digest('cname-insec-original')}"
CNAME_INSEC_TARGET = f"2 0 1 {digest('cname-insec-target')}"
NOMX = f"3 1 1 {digest('nomx')}"
UNUSABLE_PKIX_TA = f"0 0 1 {digest('pkix-ta')}"
UNUSABLE_PKIX_EE = f"1 1 1 {digest('pkix-ee')}"
UNUSABLE_SHORT = f"3 1 1 {digest('short-sha256', 31)}"  # 31 octets for SHA2-256
UNUSABLE_512 = f"2 0 2 {digest('sha256-as-sha512')}"  # 32 octets for SHA2-512 (needs 64)
PARTIAL = f"3 1 1 {digest('partial')}"
HOSTING_MX = f"3 1 1 {digest('hosting-mx')}"
PLAIN_INSECURE = f"3 1 1 {digest('plain-insecure')}"
N3_EE = f"3 0 1 {digest('nsec3-ee')}"

# ---------------------------------------------------------------------------- zones
SECURE = Zone(
    "secure.test",
    records=(
        # ee: one MX, DANE-EE, A + AAAA
        "ee MX 10 mx.ee",
        "mx.ee A 127.0.0.11",
        "mx.ee AAAA ::1",
        f"_25._tcp.mx.ee TLSA {EE}",
        # ta: DANE-TA only (two records)
        "ta MX 10 mx.ta",
        "mx.ta A 127.0.0.12",
        f"_25._tcp.mx.ta TLSA {TA_CERT}",
        f"_25._tcp.mx.ta TLSA {TA_SPKI}",
        # both: two DANE hosts, one EE one TA -> usage 12
        "both MX 10 mx1.both",
        "both MX 20 mx2.both",
        "mx1.both A 127.0.0.13",
        "mx2.both A 127.0.0.14",
        f"_25._tcp.mx1.both TLSA {BOTH_EE}",
        f"_25._tcp.mx2.both TLSA {BOTH_TA}",
        # notlsa: secure MX, NSEC-denied TLSA
        "notlsa MX 10 mx.notlsa",
        "mx.notlsa A 127.0.0.15",
        # badtlsa: TLSA RRset edited after signing (bogus)
        "badtlsa MX 10 mx.badtlsa",
        "mx.badtlsa A 127.0.0.16",
        f"_25._tcp.mx.badtlsa TLSA {BADTLSA}",
        # badmx: MX RRset edited after signing (bogus)
        "badmx MX 10 mx.badmx",
        "mx.badmx A 127.0.0.17",
        f"_25._tcp.mx.badmx TLSA {BADMX_TLSA}",
        # badaddr: the host's A RRset edited after signing (bogus); TLSA itself fine
        "badaddr MX 10 mx.badaddr",
        "mx.badaddr A 127.0.0.18",
        f"_25._tcp.mx.badaddr TLSA {BADADDR_TLSA}",
        # skipfail: MX 10 has a bogus TLSA RRset, MX 20 is DANE-TA
        "skipfail MX 10 mx1.skipfail",
        "skipfail MX 20 mx2.skipfail",
        "mx1.skipfail A 127.0.0.19",
        "mx2.skipfail A 127.0.0.20",
        f"_25._tcp.mx1.skipfail TLSA {SKIP1}",
        f"_25._tcp.mx2.skipfail TLSA {SKIP2}",
        # cname-exp: secure CNAME chain, TLSA at both names: the expanded name wins
        "cname-exp MX 10 mx.cname-exp",
        "mx.cname-exp CNAME srv1.hosting.test.",
        f"_25._tcp.mx.cname-exp TLSA {CNAME_EXP_ORIG}",
        # cname-orig: secure CNAME chain, TLSA only at the original name
        "cname-orig MX 10 mx.cname-orig",
        "mx.cname-orig CNAME srv2.hosting.test.",
        f"_25._tcp.mx.cname-orig TLSA {CNAME_ORIG}",
        # cname-insec: CNAME into the unsigned zone: only the original name counts
        "cname-insec MX 10 mx.cname-insec",
        "mx.cname-insec CNAME srv3.insecure.test.",
        f"_25._tcp.mx.cname-insec TLSA {CNAME_INSEC_ORIG}",
        # nullmx (RFC 7505)
        "nullmx MX 0 .",
        # nomx: implicit MX, the domain itself
        "nomx A 127.0.0.24",
        "nomx AAAA ::1",
        f"_25._tcp.nomx TLSA {NOMX}",
        # unusable: only unusable TLSA records
        "unusable MX 10 mx.unusable",
        "mx.unusable A 127.0.0.25",
        f"_25._tcp.mx.unusable TLSA {UNUSABLE_PKIX_TA}",
        f"_25._tcp.mx.unusable TLSA {UNUSABLE_PKIX_EE}",
        f"_25._tcp.mx.unusable TLSA {UNUSABLE_SHORT}",
        f"_25._tcp.mx.unusable TLSA {UNUSABLE_512}",
        # partial: MX 10 without TLSA, MX 20 DANE-EE
        "partial MX 10 mx1.partial",
        "partial MX 20 mx2.partial",
        "mx1.partial A 127.0.0.26",
        "mx2.partial A 127.0.0.27",
        f"_25._tcp.mx2.partial TLSA {PARTIAL}",
        # nxdomain.secure.test: deliberately absent
    ),
    edits=(
        PostSignEdit("_25._tcp.mx.badtlsa", "TLSA", BADTLSA, BADTLSA_FORGED),
        PostSignEdit("badmx", "MX", "10 mx.badmx", "10 mx.ee"),
        PostSignEdit("mx.badaddr", "A", "127.0.0.18", "127.0.0.118"),
        PostSignEdit("_25._tcp.mx1.skipfail", "TLSA", SKIP1, SKIP1_FORGED),
    ),
)

NSEC3 = Zone(
    "nsec3.test",
    nsec3=True,
    records=(
        "ee MX 10 mx.ee",
        "mx.ee A 127.0.0.31",
        f"_25._tcp.mx.ee TLSA {N3_EE}",
        "notlsa MX 10 mx.notlsa",
        "mx.notlsa A 127.0.0.32",
    ),
)

HOSTING = Zone(
    "hosting.test",
    records=(
        "srv1 A 127.0.0.21",
        f"_25._tcp.srv1 TLSA {CNAME_EXP_TARGET}",
        "srv2 A 127.0.0.22",
        "mx A 127.0.0.28",
        f"_25._tcp.mx TLSA {HOSTING_MX}",
    ),
)

INSECURE = Zone(
    "insecure.test",
    signed=False,
    records=(
        "plain MX 10 mx.plain",
        "mx.plain A 127.0.0.29",
        f"_25._tcp.mx.plain TLSA {PLAIN_INSECURE}",
        "srv3 A 127.0.0.23",
        f"_25._tcp.srv3 TLSA {CNAME_INSEC_TARGET}",
        "insec-mx MX 10 mx.hosting.test.",
    ),
)

ZONES: tuple[Zone, ...] = (SECURE, NSEC3, HOSTING, INSECURE)


# ------------------------------------------------------------------------ expected
@dataclass(frozen=True)
class ExpectedHost:
    name: str
    tlsa_state: str
    tlsa_base: str | None
    records: tuple[str, ...]
    addresses: frozenset[str]

    def __post_init__(self) -> None:
        assert self.tlsa_state in HOST_STATES, self.tlsa_state
        assert (self.tlsa_base is None) == (self.tlsa_state in ("none", "failed"))
        assert bool(self.records) == (self.tlsa_state in ("dane", "unusable"))

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tlsa_state": self.tlsa_state,
            "tlsa_base": self.tlsa_base,
            "records": sorted(self.records),
            "addresses": sorted(self.addresses),
        }


@dataclass(frozen=True)
class Case:
    domain: str
    status: str
    usage: int
    mx_secure: bool
    hosts: tuple[ExpectedHost, ...]
    why: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        assert self.status in STATUSES, self.status
        assert self.usage in (0, 4, 8, 12), self.usage

    def as_json(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "status": self.status,
            "usage": self.usage,
            "mx_secure": self.mx_secure,
            "hosts": [h.as_json() for h in self.hosts],
        }


def _host(
    name: str,
    state: str,
    base: str | None,
    records: tuple[str, ...],
    *addresses: str,
) -> ExpectedHost:
    return ExpectedHost(name, state, base, records, frozenset(addresses))


CASES: tuple[Case, ...] = (
    Case(
        "ee.secure.test", "dane", 8, True,
        (_host("mx.ee.secure.test", "dane", "mx.ee.secure.test", (EE,),
               "127.0.0.11", "::1"),),
        "secure MX, secure DANE-EE TLSA",
    ),
    Case(
        "ta.secure.test", "dane", 4, True,
        (_host("mx.ta.secure.test", "dane", "mx.ta.secure.test", (TA_CERT, TA_SPKI),
               "127.0.0.12"),),
        "secure MX, DANE-TA records only",
    ),
    Case(
        "both.secure.test", "dane", 12, True,
        (
            _host("mx1.both.secure.test", "dane", "mx1.both.secure.test", (BOTH_EE,),
                  "127.0.0.13"),
            _host("mx2.both.secure.test", "dane", "mx2.both.secure.test", (BOTH_TA,),
                  "127.0.0.14"),
        ),
        "usage bits are OR-ed across the DANE hosts",
    ),
    Case(
        "notlsa.secure.test", "none", 0, True,
        (_host("mx.notlsa.secure.test", "none", None, (), "127.0.0.15"),),
        "secure MX, TLSA denied with NSEC",
    ),
    Case(
        "notlsa.nsec3.test", "none", 0, True,
        (_host("mx.notlsa.nsec3.test", "none", None, (), "127.0.0.32"),),
        "secure MX, TLSA denied with NSEC3",
    ),
    Case(
        "ee.nsec3.test", "dane", 8, True,
        (_host("mx.ee.nsec3.test", "dane", "mx.ee.nsec3.test", (N3_EE,), "127.0.0.31"),),
        "DANE-EE (selector 0) in an NSEC3 zone",
    ),
    Case(
        "plain.insecure.test", "none", 0, False,
        (_host("mx.plain.insecure.test", "none", None, (), "127.0.0.29"),),
        "unsigned delegation: MX and TLSA insecure, the TLSA records are ignored",
    ),
    Case(
        "badtlsa.secure.test", "tempfail", 0, True,
        (_host("mx.badtlsa.secure.test", "failed", None, (), "127.0.0.16"),),
        "the only MX host's TLSA RRset is bogus: no usable host",
    ),
    Case(
        "badmx.secure.test", "tempfail", 0, False, (),
        "the MX RRset is bogus",
    ),
    Case(
        "badaddr.secure.test", "tempfail", 0, True,
        (_host("mx.badaddr.secure.test", "failed", None, ()),),
        "the only MX host's A RRset is bogus: no usable host",
    ),
    Case(
        "skipfail.secure.test", "dane", 4, True,
        (
            _host("mx1.skipfail.secure.test", "failed", None, (), "127.0.0.19"),
            _host("mx2.skipfail.secure.test", "dane", "mx2.skipfail.secure.test", (SKIP2,),
                  "127.0.0.20"),
        ),
        "bogus TLSA on MX 10 skips that host; the remaining host is DANE-TA",
    ),
    Case(
        "cname-exp.secure.test", "dane", 4, True,
        (_host("mx.cname-exp.secure.test", "dane", "srv1.hosting.test",
               (CNAME_EXP_TARGET,), "127.0.0.21"),),
        "secure CNAME chain: TLSA at the expanded name is used first (DANE-TA there, "
        "DANE-EE at the original name is not consulted)",
    ),
    Case(
        "cname-orig.secure.test", "dane", 8, True,
        (_host("mx.cname-orig.secure.test", "dane", "mx.cname-orig.secure.test",
               (CNAME_ORIG,), "127.0.0.22"),),
        "secure CNAME chain, no TLSA at the expanded name: the original name's TLSA",
    ),
    Case(
        "cname-insec.secure.test", "dane", 8, True,
        (_host("mx.cname-insec.secure.test", "dane", "mx.cname-insec.secure.test",
               (CNAME_INSEC_ORIG,), "127.0.0.23"),),
        "CNAME into an unsigned zone: the expanded name's (insecure) TLSA is ignored, "
        "the original name's secure TLSA applies",
    ),
    Case("nullmx.secure.test", "nullmx", 0, True, (), "RFC 7505 null MX"),
    Case(
        "nomx.secure.test", "dane", 8, True,
        (_host("nomx.secure.test", "dane", "nomx.secure.test", (NOMX,),
               "127.0.0.24", "::1"),),
        "no MX (secure NODATA): implicit MX, the domain itself with its own TLSA",
    ),
    Case("nxdomain.secure.test", "nxdomain", 0, True, (), "secure NXDOMAIN"),
    Case(
        "unusable.secure.test", "unusable-tlsa", 0, True,
        (_host("mx.unusable.secure.test", "unusable", "mx.unusable.secure.test",
               (UNUSABLE_PKIX_TA, UNUSABLE_PKIX_EE, UNUSABLE_SHORT, UNUSABLE_512),
               "127.0.0.25"),),
        "PKIX-TA, PKIX-EE, a 31-octet SHA2-256 and a 32-octet SHA2-512 digest: all unusable",
    ),
    Case(
        "partial.secure.test", "partial", 8, True,
        (
            _host("mx1.partial.secure.test", "none", None, (), "127.0.0.26"),
            _host("mx2.partial.secure.test", "dane", "mx2.partial.secure.test", (PARTIAL,),
                  "127.0.0.27"),
        ),
        "MX 10 has no TLSA, MX 20 is DANE-EE",
    ),
    Case(
        "insec-mx.insecure.test", "dane", 8, False,
        (_host("mx.hosting.test", "dane", "mx.hosting.test", (HOSTING_MX,), "127.0.0.28"),),
        "insecure MX RRset, MX host with secure DANE-EE TLSA: DANE still applies (§2.2.1)",
    ),
)

CASES_BY_DOMAIN: dict[str, Case] = {case.domain: case for case in CASES}
assert len(CASES_BY_DOMAIN) == len(CASES)
