"""Judging what a STARTTLS probe saw: the chain against TLSA, the staple against OCSP rules.

Pure code (DESIGN.md "DANE semantics" 4 and "OCSP semantics"): takes certificates,
records, names, the stapled bytes and ``now``; performs no I/O. ``danemilter.probe``
does the network part and hands its findings here, so the same verdicts can be
reproduced offline and table-tested.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from cryptography import x509

from danemilter import certs, ocsp, tlsa
from danemilter.errors import CertificateError
from danemilter.ocsp import CheckStatus
from danemilter.tlsa import TLSARecord


class DaneVerdict(StrEnum):
    """A probe's ``dane`` (``danemilter verify --json``)."""

    VERIFIED = "verified"
    MISMATCH = "mismatch"
    NOT_APPLICABLE = "not-applicable"
    FAILED = "failed"


class OcspState(StrEnum):
    """A probe's ``ocsp``: what the staple proved (``danemilter verify --json``)."""

    GOOD = "good"
    REVOKED = "revoked"
    INVALID = "invalid"
    STALE = "stale"
    ABSENT = "absent"
    NOT_REQUESTED = "not-requested"


class PkixVerdict(StrEnum):
    """A probe's ``pkix``: whether the chain is valid under PKIX for the MX host name, as
    an MTA-STS sender checks it (RFC 8461 §4.2); judged for hosts without DANE only."""

    VERIFIED = "verified"
    FAILED = "failed"
    NOT_CHECKED = "not-checked"


# OCSP verdict reasons that mean "was a proof once, has lapsed" rather than "never was".
_STALE_REASONS = frozenset({"expired", "too-old"})


@dataclass(frozen=True, slots=True)
class Judgement:
    """Verdicts on one presented chain (and staple)."""

    dane: DaneVerdict
    depth: int | None
    dane_reason: str
    ocsp: OcspState
    ocsp_reason: str
    ocsp_url: str | None
    must_staple: bool


def usage_bits(records: Iterable[TLSARecord]) -> int:
    """Exim's ``$tls_out_tlsa_usage`` for one host: bit n per usable record of usage n."""
    bits = 0
    for record in records:
        if record.usable:
            bits |= 1 << record.usage
    return bits


def wants_staple(records: Iterable[TLSARecord]) -> bool:
    """Exim's default ``hosts_request_ocsp``: only where a staple can be checked.

    That is no DANE (bitfield 0) or DANE-TA only (4); a DANE-EE certificate has no
    trusted issuer, so its staple proves nothing (DESIGN.md "OCSP semantics").
    """
    return usage_bits(records) in (0, 1 << tlsa.Usage.DANE_TA)


def reference_names(domain: str, mx_secure: bool, host_name: str,
                    tlsa_base: str | None, canonical: str | None = None) -> tuple[str, ...]:
    """Names a DANE-TA certificate may carry (RFC 7672 §3.2.3, DESIGN.md "DANE semantics" 4).

    The TLSA base domain (the MX host, or its CNAME expansion when that is where the
    records were found) and the MX host name as published; the next-hop domain only when
    the MX lookup was secure, since an insecure MX RRset could have been forged to pair
    any host with any domain; then also the next-hop domain's CNAME expansion
    (``canonical``), which the secure MX lookup followed.
    """
    names: list[str] = []
    for name in (tlsa_base, host_name, domain if mx_secure else None,
                 canonical if mx_secure else None):
        if name and name.lower() not in names:
            names.append(name.lower())
    return tuple(names)


def find_issuer(chain: Sequence[x509.Certificate],
                records: Iterable[TLSARecord] = ()) -> x509.Certificate | None:
    """The certificate that signed the leaf: a presented one, else a DANE-TA ``2 0 0`` anchor.

    Presented certificates may come in any order, so the issuer is found by name and
    signature; when none verifies, ``chain[1]`` is returned (the CertID check will then
    say why the staple does not fit) so a staple is never judged without an issuer.
    """
    if not chain:
        return None
    candidates = list(chain[1:])
    for record in records:
        if record.usage == tlsa.Usage.DANE_TA and record.selector == tlsa.Selector.CERT \
                and record.mtype == tlsa.MatchingType.FULL:
            try:
                candidates.append(certs.load_der_certificate(record.data, "DANE-TA record"))
            except CertificateError:
                continue
    issuer = certs.find_issuer(chain[0], candidates)
    if issuer is not None:
        return issuer
    return chain[1] if len(chain) > 1 else None


def judge_dane(chain: Sequence[x509.Certificate], records: Sequence[TLSARecord],
               names: Sequence[str], now: datetime) -> tuple[DaneVerdict, int | None, str]:
    """The chain against the host's TLSA records with SMTP semantics."""
    usable = [r for r in records if r.usable]
    if not usable:
        return (DaneVerdict.NOT_APPLICABLE, None,
                "no usable TLSA records: DANE does not apply")
    if not chain:
        return DaneVerdict.FAILED, None, "the server presented no certificate"
    result = tlsa.match_chain(chain, records, names, now)
    if result.verified:
        return DaneVerdict.VERIFIED, result.depth, result.reason
    return DaneVerdict.MISMATCH, result.depth, result.reason


def judge_staple(staple: bytes | None, chain: Sequence[x509.Certificate],
                 records: Sequence[TLSARecord], now: datetime) -> tuple[OcspState, str]:
    """A stapled OCSP response for the leaf. ``None`` means no staple was requested."""
    if staple is None:
        return OcspState.NOT_REQUESTED, "no staple requested"
    if not staple:
        return OcspState.ABSENT, "the server stapled no OCSP response"
    if not chain:
        return OcspState.INVALID, "a staple without a certificate to check it against"
    issuer = find_issuer(chain, records)
    if issuer is None:
        return (OcspState.INVALID,
                "the server sent no issuer certificate to check the staple against")
    verdict = ocsp.verify_response(staple, chain[0], issuer, now)
    if verdict.status == CheckStatus.GOOD:
        return OcspState.GOOD, verdict.detail or "the staple says good"
    if verdict.status == CheckStatus.REVOKED:
        return OcspState.REVOKED, verdict.detail
    if verdict.status == CheckStatus.UNKNOWN:
        return (OcspState.INVALID,
                f"the responder does not know the certificate ({verdict.detail})")
    if verdict.reason in _STALE_REASONS:
        return OcspState.STALE, verdict.detail
    return OcspState.INVALID, f"{verdict.reason}: {verdict.detail}"


def judge_pkix(chain: Sequence[x509.Certificate], chain_error: str | None,
               name: str | None) -> tuple[PkixVerdict, str]:
    """RFC 8461 §4.2: the chain must lead to a trusted root and the leaf must carry a
    DNS-ID SAN valid for the MX host ``name`` (wildcards as RFC 6125 §6.4.3 has them,
    leftmost label only). No subject CN fallback: §4.2 says the certificate "MUST have
    a subject alternative name ... with a DNS-ID", where Postfix's ``secure`` level
    would still match a CN (docs/mta-sts.md).

    ``chain_error``: OpenSSL's first complaint about the presented chain against the
    trust store, with the purpose an SMTP client checks (``ssl_server``), None when it
    found a path to a trusted root: the chain part is exactly what Postfix's ``secure``
    level computes. ``name`` None: not to be checked (a DANE host).
    """
    if name is None:
        return PkixVerdict.NOT_CHECKED, "DANE host: not judged by PKIX"
    if not chain:
        return PkixVerdict.FAILED, "the server presented no certificate"
    if chain_error is not None:
        return PkixVerdict.FAILED, chain_error
    problem = certs.name_problem(chain[0], (name,), subject_cn=False)
    if problem is not None:
        if not certs.presented_names(chain[0], subject_cn=False):
            problem = ("name mismatch: the certificate has no DNS-ID (subjectAltName), "
                       "which RFC 8461 §4.2 requires; its subject CN does not count")
        return PkixVerdict.FAILED, problem
    return PkixVerdict.VERIFIED, f"chain valid under PKIX for {name.lower().rstrip('.')}"


def judge(chain: Sequence[x509.Certificate], records: Sequence[TLSARecord],
          names: Sequence[str], staple: bytes | None, now: datetime) -> Judgement:
    """Both verdicts for one handshake. ``staple``: None = not requested, b"" = none sent."""
    dane, depth, dane_reason = judge_dane(chain, records, names, now)
    state, ocsp_reason = judge_staple(staple, chain, records, now)
    leaf = chain[0] if chain else None
    return Judgement(
        dane=dane,
        depth=depth,
        dane_reason=dane_reason,
        ocsp=state,
        ocsp_reason=ocsp_reason,
        ocsp_url=certs.ocsp_url(leaf) if leaf is not None else None,
        must_staple=certs.must_staple(leaf) if leaf is not None else False,
    )
