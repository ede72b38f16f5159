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
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.oid import AuthorityInformationAccessOID

from danemilter import ocsp, tlsa
from danemilter.tlsa import TLSARecord

DaneVerdict = Literal["verified", "mismatch", "not-applicable", "failed"]
OcspState = Literal["good", "revoked", "invalid", "stale", "absent", "not-requested"]

# RFC 7633: the TLS Feature extension; value 5 is status_request (OCSP must-staple).
_TLS_FEATURE_STATUS_REQUEST = 5
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


def ocsp_url(cert: x509.Certificate) -> str | None:
    """The first OCSP responder URL in the certificate's AIA extension, if any."""
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except (x509.ExtensionNotFound, ValueError):
        return None
    for description in aia:
        if (description.access_method == AuthorityInformationAccessOID.OCSP
                and isinstance(description.access_location, x509.UniformResourceIdentifier)):
            return str(description.access_location.value)
    return None


def must_staple(cert: x509.Certificate) -> bool:
    """RFC 7633 TLS Feature ``status_request``: the certificate demands a staple."""
    try:
        feature = cert.extensions.get_extension_for_class(x509.TLSFeature).value
    except (x509.ExtensionNotFound, ValueError):
        return False
    return any(int(f.value) == _TLS_FEATURE_STATUS_REQUEST for f in feature)


def find_issuer(chain: Sequence[x509.Certificate],
                records: Iterable[TLSARecord] = ()) -> x509.Certificate | None:
    """The certificate that signed the leaf: a presented one, else a DANE-TA ``2 0 0`` anchor.

    Presented certificates may come in any order, so the issuer is found by name and
    signature; when none verifies, ``chain[1]`` is returned (the CertID check will then
    say why the staple does not fit) so a staple is never judged without an issuer.
    """
    if not chain:
        return None
    leaf = chain[0]
    candidates = list(chain[1:])
    for record in records:
        if record.usage == tlsa.Usage.DANE_TA and record.selector == tlsa.Selector.CERT \
                and record.mtype == tlsa.MatchingType.FULL:
            try:
                candidates.append(x509.load_der_x509_certificate(record.data))
            except ValueError:
                continue
    for candidate in candidates:
        if candidate.subject != leaf.issuer:
            continue
        try:
            leaf.verify_directly_issued_by(candidate)
        except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
            continue
        return candidate
    return chain[1] if len(chain) > 1 else None


def judge_dane(chain: Sequence[x509.Certificate], records: Sequence[TLSARecord],
               names: Sequence[str], now: datetime) -> tuple[DaneVerdict, int | None, str]:
    """The chain against the host's TLSA records with SMTP semantics."""
    usable = [r for r in records if r.usable]
    if not usable:
        return "not-applicable", None, "no usable TLSA records: DANE does not apply"
    if not chain:
        return "failed", None, "the server presented no certificate"
    result = tlsa.match_chain(chain, records, names, now)
    if result.verified:
        return "verified", result.depth, result.reason
    return "mismatch", result.depth, result.reason


def judge_staple(staple: bytes | None, chain: Sequence[x509.Certificate],
                 records: Sequence[TLSARecord], now: datetime) -> tuple[OcspState, str]:
    """A stapled OCSP response for the leaf. ``None`` means no staple was requested."""
    if staple is None:
        return "not-requested", "no staple requested"
    if not staple:
        return "absent", "the server stapled no OCSP response"
    if not chain:
        return "invalid", "a staple without a certificate to check it against"
    issuer = find_issuer(chain, records)
    if issuer is None:
        return "invalid", "the server sent no issuer certificate to check the staple against"
    verdict = ocsp.verify_response(staple, chain[0], issuer, now)
    if verdict.status == "good":
        return "good", verdict.detail or "the staple says good"
    if verdict.status == "revoked":
        return "revoked", verdict.detail
    if verdict.status == "unknown":
        return "invalid", f"the responder does not know the certificate ({verdict.detail})"
    if verdict.reason in _STALE_REASONS:
        return "stale", verdict.detail
    return "invalid", f"{verdict.reason}: {verdict.detail}"


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
        ocsp_url=ocsp_url(leaf) if leaf is not None else None,
        must_staple=must_staple(leaf) if leaf is not None else False,
    )
