"""Chain matching behaviour the OpenSSL vectors do not reach, on a PKI built at test time."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from danemilter.errors import InputError
from danemilter.tlsa import MatchResult, TLSARecord, generate, match_chain
from tests.support.pki import Issued, KeyKind, make_ca, make_leaf

NOW = datetime.now(UTC)
DAY = timedelta(days=1)


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _record(usage: int, selector: int, mtype: int, cert: x509.Certificate) -> TLSARecord:
    data = cert.public_bytes(serialization.Encoding.DER) if selector == 0 else _spki(cert)
    if mtype == 1:
        data = hashlib.sha256(data).digest()
    elif mtype == 2:
        data = hashlib.sha512(data).digest()
    return TLSARecord(usage, selector, mtype, data)


def _wrong(usage: int, selector: int, mtype: int) -> TLSARecord:
    return TLSARecord(usage, selector, mtype, b"\x5a" * {1: 32, 2: 64}[mtype])


@pytest.fixture(scope="module")
def root() -> Issued:
    return make_ca("Test Root")


@pytest.fixture(scope="module")
def issuer(root: Issued) -> Issued:
    return make_ca("Test Issuer", issuer=root)


@pytest.fixture(scope="module")
def server(issuer: Issued) -> Issued:
    return make_leaf(issuer, ["mx.example.com"], cn="mx.example.com")


def _check(
    chain: list[Issued], records: list[TLSARecord], names: list[str] | None = None,
    now: datetime = NOW,
) -> MatchResult:
    return match_chain([i.cert for i in chain], records, names or ["mx.example.com"], now)


# --- digest algorithm agility (RFC 7671 §9) ---------------------------------------------------

@pytest.mark.parametrize(
    ("records", "verified"),
    [
        # A SHA2-512 record present: SHA2-256 records of the same usage+selector no longer count.
        (lambda c: [_wrong(3, 1, 2), _record(3, 1, 1, c)], False),
        (lambda c: [_record(3, 1, 2, c), _wrong(3, 1, 1)], True),
        # Full(0) is not a digest, so it is never pruned.
        (lambda c: [_record(3, 1, 0, c), _wrong(3, 1, 2), _record(3, 1, 1, c)], True),
        # Agility is per usage and selector: other pairs keep their SHA2-256 records.
        (lambda c: [_wrong(3, 0, 2), _record(3, 1, 1, c)], True),
        (lambda c: [_wrong(2, 1, 2), _record(3, 1, 1, c)], True),
        # A malformed (short) SHA2-512 record is unusable and hides nothing.
        (lambda c: [TLSARecord(3, 1, 2, b"\x01" * 32), _record(3, 1, 1, c)], True),
    ],
    ids=["sha512-hides-sha256", "sha512-match", "full-always-used", "other-selector",
         "other-usage", "malformed-sha512"],
)
def test_digest_agility(
    server: Issued, issuer: Issued,
    records: Callable[[x509.Certificate], list[TLSARecord]], verified: bool,
) -> None:
    result = _check([server, issuer], records(server.cert))
    assert result.verified is verified, result.reason


def test_agility_applies_to_dane_ta(server: Issued, issuer: Issued) -> None:
    result = _check([server, issuer], [_wrong(2, 0, 2), _record(2, 0, 1, issuer.cert)])
    assert (result.verified, result.depth) == (False, None)
    result = _check([server, issuer], [_record(2, 0, 2, issuer.cert), _wrong(2, 0, 1)])
    assert (result.verified, result.depth) == (True, 1)


# --- reference names (RFC 6125 as profiled by RFC 7672 §3.2.3) -------------------------------

@pytest.mark.parametrize(
    ("san", "name", "verified"),
    [
        ("*.example.com", "mx.example.com", True),
        ("*.example.com", "MX.Example.COM", True),
        ("*.EXAMPLE.com", "mx.example.com", True),
        ("*.example.com", "a.b.example.com", False),
        ("*.example.com", "example.com", False),
        ("f*.example.com", "foo.example.com", False),
        ("*oo.example.com", "foo.example.com", False),
        ("mx.*.com", "mx.example.com", False),
        ("*.com", "example.com", False),
        ("mx.example.com", "mx.example.com.", True),
        ("mx.example.com", "mx.example.net", False),
        ("xn--bcher-kva.example", "xn--bcher-kva.example", True),
    ],
)
def test_name_checks(root: Issued, san: str, name: str, verified: bool) -> None:
    leaf = make_leaf(root, [san])
    result = _check([leaf, root], [_record(2, 1, 1, root.cert)], [name])
    assert result.verified is verified, result.reason
    assert result.depth == 1
    if not verified:
        assert result.reason.startswith("name mismatch")


def test_any_reference_name_may_match(root: Issued) -> None:
    leaf = make_leaf(root, ["mail.example.net"])
    names = ["example.com", "mx.example.com", "mail.example.net"]
    assert _check([leaf, root], [_record(2, 0, 1, root.cert)], names).verified


@pytest.mark.parametrize(
    ("sans", "ips", "verified"),
    [
        ([], [], True),                          # no SAN at all: CN counts
        ([], ["192.0.2.1"], True),               # SAN without dNSName: CN still counts
        (["other.example.com"], [], False),      # a dNSName exists: CN is ignored
    ],
    ids=["no-san", "ip-san-only", "dns-san"],
)
def test_common_name_only_without_dns_san(
    root: Issued, sans: list[str], ips: list[str], verified: bool
) -> None:
    leaf = make_leaf(root, sans, cn="mx.example.com", ip_addresses=ips)
    result = _check([leaf, root], [_record(2, 0, 1, root.cert)])
    assert result.verified is verified, result.reason


def test_dane_ee_ignores_names(root: Issued) -> None:
    leaf = make_leaf(root, ["unrelated.example.org"])
    result = _check([leaf], [_record(3, 1, 1, leaf.cert)], ["mx.example.com"])
    assert (result.verified, result.depth) == (True, 0)


# --- validity dates -------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("not_before", "not_after", "problem"),
    [
        (NOW - 30 * DAY, NOW - DAY, "leaf certificate expired"),
        (NOW + DAY, NOW + 30 * DAY, "leaf certificate is not yet valid"),
    ],
    ids=["expired", "not-yet-valid"],
)
def test_leaf_dates_matter_for_dane_ta_only(
    issuer: Issued, not_before: datetime, not_after: datetime, problem: str
) -> None:
    leaf = make_leaf(issuer, ["mx.example.com"], not_before, not_after)
    under_ta = _check([leaf, issuer], [_record(2, 1, 1, issuer.cert)])
    assert (under_ta.verified, under_ta.depth) == (False, 1)
    assert under_ta.reason.startswith(problem)
    under_ee = _check([leaf, issuer], [_record(3, 1, 1, leaf.cert)])
    assert (under_ee.verified, under_ee.depth) == (True, 0)


def test_dates_are_checked_at_the_given_time(issuer: Issued) -> None:
    leaf = make_leaf(issuer, ["mx.example.com"], NOW - 30 * DAY, NOW - DAY)
    records = [_record(2, 1, 1, issuer.cert)]
    assert _check([leaf, issuer], records, now=NOW - 2 * DAY).verified
    naive_past = (NOW - 2 * DAY).replace(tzinfo=None)  # naive means UTC
    assert _check([leaf, issuer], records, now=naive_past).verified


def test_expired_intermediate_fails_under_a_root_anchor(root: Issued) -> None:
    old = make_ca("Old Issuer", issuer=root, not_before=NOW - 30 * DAY, not_after=NOW - DAY)
    leaf = make_leaf(old, ["mx.example.com"])
    result = _check([leaf, old, root], [_record(2, 0, 1, root.cert)])
    assert (result.verified, result.depth) == (False, 2)
    assert "intermediate certificate CN=Old Issuer at depth 1 expired" in result.reason


def test_expired_anchor_is_still_an_anchor(root: Issued) -> None:
    # The record, not the anchor's dates, vouches for the anchor (RFC 5280 §6.1 TA handling).
    old = make_ca("Old Issuer", issuer=root, not_before=NOW - 30 * DAY, not_after=NOW - DAY)
    leaf = make_leaf(old, ["mx.example.com"])
    result = _check([leaf, old], [_record(2, 0, 1, old.cert)])
    assert (result.verified, result.depth) == (True, 1)


# --- DANE-TA anchors and signature paths ----------------------------------------------------

@pytest.mark.parametrize("kind", ["ec", "rsa", "ed25519"])
@pytest.mark.parametrize(
    ("selector", "depth"),
    # A full certificate sits above the certificate it signed; a bare key has no
    # position of its own, so the certificate it signed is reported.
    [(0, 1), (1, 0)],
    ids=["full-cert", "bare-spki"],
)
def test_anchor_carried_in_the_record(kind: KeyKind, selector: int, depth: int) -> None:
    ca = make_ca(f"Record {kind} CA", kind=kind)
    leaf = make_leaf(ca, ["mx.example.com"])
    result = _check([leaf], [_record(2, selector, 0, ca.cert)])
    assert (result.verified, result.depth) == (True, depth), result.reason


def test_record_anchor_replacing_a_cross_signed_copy(root: Issued) -> None:
    other_root = make_ca("Other Root")
    cross = make_ca("Test Root", issuer=other_root, key=root.key)  # same name and key
    issuer = make_ca("Cross Issuer", issuer=root)
    leaf = make_leaf(issuer, ["mx.example.com"])
    chain = [leaf, issuer, cross, other_root]
    result = _check(chain, [_record(2, 0, 0, root.cert)])
    assert (result.verified, result.depth) == (True, 2)


def test_unordered_chain_is_followed_by_signatures(root: Issued, issuer: Issued,
                                                   server: Issued) -> None:
    # Depth is the anchor's position in the path built, as OpenSSL (so Postfix) reports it,
    # not its position in the server's message.
    result = _check([server, root, issuer], [_record(2, 1, 1, root.cert)])
    assert (result.verified, result.depth) == (True, 2)


def test_nearest_anchor_wins(root: Issued, issuer: Issued, server: Issued) -> None:
    records = [_record(2, 0, 1, root.cert), _record(2, 0, 1, issuer.cert)]
    assert _check([server, issuer, root], records).depth == 1


@pytest.mark.parametrize("selector", [0, 1])
def test_bad_signature_in_chain(root: Issued, selector: int) -> None:
    impostor = make_ca("Test Root")  # same name, different key
    leaf = make_leaf(impostor, ["mx.example.com"])
    in_chain = _check([leaf, root], [_record(2, selector, 1, root.cert)])
    assert (in_chain.verified, in_chain.depth) == (False, 1)
    assert "no chain of valid signatures" in in_chain.reason
    from_record = _check([leaf], [_record(2, selector, 0, root.cert)])
    assert (from_record.verified, from_record.depth) == (False, None)


def test_missing_intermediate(root: Issued, server: Issued) -> None:
    result = _check([server, root], [_record(2, 0, 1, root.cert)])
    assert (result.verified, result.depth) == (False, 1)


def test_non_ca_intermediate_cannot_issue(root: Issued) -> None:
    not_a_ca = make_ca("Plain Server", issuer=root, ca=False)
    leaf = make_leaf(not_a_ca, ["mx.example.com"])
    result = _check([leaf, not_a_ca, root], [_record(2, 0, 1, root.cert)])
    assert (result.verified, result.depth) == (False, 2)
    assert "is not a CA certificate" in result.reason


@pytest.mark.parametrize(("selector", "mtype"), [(0, 1), (1, 1), (0, 0), (1, 2)])
def test_self_signed_leaf_is_not_a_dane_ta_match(selector: int, mtype: int) -> None:
    # A self-signed server certificate belongs in a DANE-EE record (RFC 7671 §5.1-5.2);
    # OpenSSL, so Postfix, never matches DANE-TA at depth 0.
    leaf = make_leaf(None, ["mx.example.com"], cn="mx.example.com")
    result = _check([leaf], [_record(2, selector, mtype, leaf.cert)])
    assert (result.verified, result.depth) == (False, None)
    assert "DANE-EE" in result.reason


def test_self_signed_leaf_signed_by_a_bare_dane_ta_key() -> None:
    # "2 1 0" is a bare key: the top certificate of the path only has to be signed by it
    # (RFC 7671 §5.2.2), which a self-signed leaf is; OpenSSL accepts this at depth 0 and
    # the leaf still gets DANE-TA name and date checks, unlike DANE-EE.
    leaf = make_leaf(None, ["mx.example.com"], cn="mx.example.com")
    result = _check([leaf], [_record(2, 1, 0, leaf.cert)])
    assert (result.verified, result.depth) == (True, 0)
    assert not _check([leaf], [_record(2, 1, 0, leaf.cert)], ["other.example"]).verified


def test_issued_leaf_cannot_be_its_own_dane_ta_anchor(server: Issued) -> None:
    result = _check([server], [_record(2, 1, 1, server.cert)])
    assert (result.verified, result.depth) == (False, None)
    assert "DANE-EE" in result.reason


def test_dane_ee_matches_only_the_leaf(server: Issued, issuer: Issued) -> None:
    result = _check([server, issuer], [_record(3, 1, 1, issuer.cert)])
    assert (result.verified, result.depth) == (False, None)
    assert result.reason == "no TLSA record matches the certificate chain"


# --- usability and odd input ----------------------------------------------------------------

@pytest.mark.parametrize(
    "record",
    [
        TLSARecord(3, 1, 1, b"\x01" * 31),   # SHA2-256 needs 32 octets
        TLSARecord(3, 1, 2, b"\x01" * 32),   # SHA2-512 needs 64
        TLSARecord(3, 2, 1, b"\x01" * 32),   # unknown selector
        TLSARecord(3, 1, 3, b"\x01" * 32),   # unknown matching type
        TLSARecord(4, 1, 1, b"\x01" * 32),   # unknown usage
    ],
    ids=["short-sha256", "short-sha512", "selector-2", "mtype-3", "usage-4"],
)
def test_malformed_records_are_unusable(server: Issued, record: TLSARecord) -> None:
    result = _check([server], [record])
    assert result == MatchResult(False, None, 0, "no usable TLSA records (1 unusable)")


@pytest.mark.parametrize("usage", [0, 1])
def test_pkix_usages_are_unusable_for_smtp(server: Issued, issuer: Issued, usage: int) -> None:
    target = server.cert if usage == 1 else issuer.cert
    result = _check([server, issuer], [_record(usage, 1, 1, target)])
    assert (result.verified, result.usable_records) == (False, 0)


def test_usable_records_counts_before_agility(server: Issued) -> None:
    result = _check([server], [_record(3, 1, 1, server.cert), _record(3, 1, 2, server.cert),
                               _record(1, 1, 1, server.cert)])
    assert (result.verified, result.usable_records) == (True, 2)


def test_no_records_and_empty_chain(server: Issued) -> None:
    assert _check([server], []) == MatchResult(False, None, 0, "no usable TLSA records")
    empty = match_chain([], [_record(3, 1, 1, server.cert)], ["mx.example.com"], NOW)
    assert (empty.verified, empty.usable_records) == (False, 1)


def test_garbage_anchor_data_in_full_records_is_not_an_anchor(server: Issued,
                                                               issuer: Issued) -> None:
    records = [TLSARecord(2, 0, 0, b"\x30\x03\x02\x01\x01"), TLSARecord(2, 1, 0, b"junk")]
    result = _check([server, issuer], records)
    assert (result.verified, result.depth) == (False, None)


# --- TLSARecord.from_text and generate ------------------------------------------------------

@pytest.mark.parametrize(
    "text",
    ["", "3 1 1", "three 1 1 ab", "3 1 1 zz", "3 1 1 abc", "256 1 1 ab", "3 -1 1 ab", "3 1 1.5 ab"],
)
def test_from_text_rejects(text: str) -> None:
    with pytest.raises(InputError):
        TLSARecord.from_text(text)


def test_from_text_accepts_split_and_upper_case_hex() -> None:
    record = TLSARecord.from_text("3 1 1 AB cd\tEF")
    assert record == TLSARecord(3, 1, 1, bytes.fromhex("abcdef"))
    assert record.to_text() == "3 1 1 abcdef"


@pytest.mark.parametrize("selector", [0, 1])
@pytest.mark.parametrize("mtype", [0, 1, 2])
def test_generate_round_trip(server: Issued, issuer: Issued, selector: int, mtype: int) -> None:
    ee = generate(server.cert, 3, selector, mtype)
    assert ee == _record(3, selector, mtype, server.cert)
    assert TLSARecord.from_text(ee.to_text()) == ee
    assert _check([server, issuer], [ee]).verified
    ta = generate(issuer.cert, 2, selector, mtype)
    assert _check([server, issuer], [ta]) == MatchResult(
        True, 1, 1, f"matched DANE-TA 2 {selector} {mtype} at depth 1"
    )


def test_generate_defaults_to_3_1_1(server: Issued) -> None:
    record = generate(server.cert)
    assert (record.usage, record.selector, record.mtype) == (3, 1, 1)
    assert record.data == hashlib.sha256(_spki(server.cert)).digest()


@pytest.mark.parametrize(("selector", "mtype"), [(2, 1), (1, 3)])
def test_generate_rejects_unknown_parameters(server: Issued, selector: int, mtype: int) -> None:
    with pytest.raises(InputError):
        generate(server.cert, 3, selector, mtype)


def test_hostile_chain_of_mutually_signing_certificates_is_bounded() -> None:
    # Twelve certificates with one name and one key all sign each other: without bounds the
    # issuer search would walk 12! orderings, each with signature checks.
    loop = make_ca("Loop")
    copies = [make_ca("Loop", key=loop.key) for _ in range(12)]
    leaf = make_leaf(loop, ["mx.example.com"])
    stranger = make_ca("Stranger")
    records = [_record(2, 0, 1, stranger.cert), _record(2, 1, 0, stranger.cert)]
    started = time.monotonic()
    result = _check([leaf, *copies], records)
    assert (result.verified, result.depth) == (False, None)
    assert time.monotonic() - started < 5


# --- where OpenSSL (so Postfix) decides what the RFCs leave open: issue 12 -------------------

def _invalid_ec_point_spki(cert: x509.Certificate) -> bytes:
    spki = bytearray(_spki(cert))
    spki[-1] ^= 0x01  # the point's last y octet: no longer on the curve
    return bytes(spki)


@pytest.mark.parametrize("usage", [2, 3])
@pytest.mark.parametrize(
    ("selector", "damage"),
    [
        (0, lambda c: c.public_bytes(serialization.Encoding.DER)[:-7]),
        (0, lambda c: c.public_bytes(serialization.Encoding.DER) + b"\x00"),
        (1, lambda c: _spki(c)[:-1]),
        (1, lambda c: _spki(c) + b"\x05\x00"),
        (1, _invalid_ec_point_spki),
        (0, lambda c: b"\x30\x03\x02\x01\x01"),
    ],
    ids=["cert-truncated", "cert-trailing", "spki-truncated", "spki-trailing",
         "spki-invalid-ec-point", "cert-garbage"],
)
def test_damaged_full_records_are_unusable(
    server: Issued, usage: int, selector: int, damage: Callable[[x509.Certificate], bytes]
) -> None:
    record = TLSARecord(usage, selector, 0, damage(server.cert))
    assert not record.usable
    result = _check([server], [record])
    assert result == MatchResult(False, None, 0, "no usable TLSA records (1 unusable)")
    # Beside a good record it is simply not counted.
    both = _check([server], [record, _record(3, 1, 1, server.cert)])
    assert (both.verified, both.usable_records) == (True, 1)


def test_intact_full_records_stay_usable(server: Issued) -> None:
    assert all(_record(u, s, 0, server.cert).usable for u in (2, 3) for s in (0, 1))


@pytest.mark.parametrize("selector", [0, 1])
def test_non_ca_anchor_certificate_is_refused(root: Issued, selector: int) -> None:
    # RFC 5280 §4.2.1.9: a certificate without the CA bit must not issue, anchor or not.
    plain = make_ca("Plain Issuer", issuer=root, ca=False)
    leaf = make_leaf(plain, ["mx.example.com"])
    result = _check([leaf, plain], [_record(2, selector, 1, plain.cert)])
    assert (result.verified, result.depth) == (False, 1)
    assert result.reason == "DANE-TA anchor CN=Plain Issuer at depth 1 is not a CA certificate"


def test_non_ca_root_anchor_from_the_record_is_refused() -> None:
    plain_root = make_ca("Plain Root", ca=False)
    leaf = make_leaf(plain_root, ["mx.example.com"])
    result = _check([leaf], [_record(2, 0, 0, plain_root.cert)])
    assert (result.verified, result.depth) == (False, 1)
    assert "is not a CA certificate" in result.reason


@pytest.mark.parametrize("how", ["sent", "record"])
def test_self_signed_anchor_outside_its_dates_is_refused(how: str) -> None:
    old_root = make_ca("Old Root", not_before=NOW - 30 * DAY, not_after=NOW - DAY)
    issuer = make_ca("Issuer Under Old Root", issuer=old_root,
                     not_after=NOW + 30 * DAY)
    leaf = make_leaf(issuer, ["mx.example.com"])
    if how == "sent":
        result = _check([leaf, issuer, old_root], [_record(2, 0, 1, old_root.cert)])
    else:
        result = _check([leaf, issuer], [_record(2, 0, 0, old_root.cert)])
    assert (result.verified, result.depth) == (False, 2)
    assert result.reason.startswith("DANE-TA anchor CN=Old Root at depth 2 expired")


def test_cross_signed_alternative_path_is_not_searched() -> None:
    # The leaf's issuer exists twice (same name and key): under the root the server sent
    # first, and cross-signed by the root the TLSA record names. OpenSSL takes the first
    # and never backtracks, so Postfix does not deliver; neither may we say "verified".
    first_root, named_root = make_ca("First Root"), make_ca("Named Root")
    issuer = make_ca("Shared Issuer", issuer=first_root)
    cross = make_ca("Shared Issuer", issuer=named_root, key=issuer.key)
    leaf = make_leaf(issuer, ["mx.example.com"])
    result = _check([leaf, issuer, cross, named_root], [_record(2, 0, 1, named_root.cert)])
    assert not result.verified
    # The path through the first copy works when that is the one sent first.
    reordered = _check([leaf, cross, issuer, named_root], [_record(2, 0, 1, named_root.cert)])
    assert (reordered.verified, reordered.depth) == (True, 2)


def test_issuer_within_its_dates_is_preferred() -> None:
    root = make_ca("Preferring Root")
    expired = make_ca("Twice Issued", issuer=root, not_before=NOW - 30 * DAY,
                      not_after=NOW - DAY)
    current = make_ca("Twice Issued", issuer=root, key=expired.key)
    leaf = make_leaf(current, ["mx.example.com"])
    result = _check([leaf, expired, current, root], [_record(2, 0, 1, root.cert)])
    assert (result.verified, result.depth) == (True, 2)


def test_depth_does_not_depend_on_record_order(issuer: Issued, server: Issued) -> None:
    sha512 = _record(2, 1, 2, issuer.cert)
    full = _record(2, 1, 0, issuer.cert)
    for records in ([sha512, full], [full, sha512]):
        result = _check([server, issuer], records)
        assert (result.verified, result.depth) == (True, 1), records


def test_rsa_key_openssl_decodes_but_cryptography_refuses_keeps_its_record_usable() -> None:
    # An even public exponent: OpenSSL's d2i_PUBKEY decodes n and e without judging them, so
    # Postfix counts "3 1 0" with this key as usable (it matches nothing); the differential
    # suite found cryptography refusing to load it.
    rsa_leaf = make_leaf(None, ["mx.example.com"], kind="rsa")
    spki = _spki(rsa_leaf.cert)
    assert spki.endswith(b"\x01\x00\x01")
    even = spki[:-1] + b"\x00"
    with pytest.raises(ValueError):
        serialization.load_der_public_key(even)
    for usage in (2, 3):
        record = TLSARecord(usage, 1, 0, even)
        assert record.usable
        assert _check([rsa_leaf], [record]) == MatchResult(False, None, 1, _NO_MATCH_TEXT)
    assert not TLSARecord(3, 1, 0, even + b"\x00").usable


_NO_MATCH_TEXT = "no TLSA record matches the certificate chain"
