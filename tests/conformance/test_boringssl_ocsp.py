"""BoringSSL's OCSP test vectors replayed through ``danemilter ocsp check``.

The 36 cases live in ``../shared/conformance/ocsp-boringssl`` (never copied here).
Each is checked in-process at the suite's verify time (2017-03-05) with the suite's
``max_age`` (7 days), as BoringSSL's own test does.

BoringSSL reports GOOD / REVOKED / UNKNOWN, where UNKNOWN also covers every
verification failure; we distinguish ``unknown`` (the responder said so) from
``invalid`` (a rule failed). ``good``→GOOD, ``revoked``→REVOKED and
``unknown``/``invalid``→UNKNOWN is the comparison. Where we differ, the case is in
DIVERGENCES with the reason, asserted exactly (docs/ocsp.md has the same table).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from danemilter.cli import main

SUITE = Path(__file__).resolve().parents[2].parent / "shared" / "conformance" / "ocsp-boringssl"



def test_suite_is_present() -> None:
    # The vectors live in ../shared, beside the checkout; without them this file must fail.
    assert (SUITE / "expectations.json").is_file(), f"BoringSSL OCSP vectors missing: {SUITE}"


@dataclass(frozen=True)
class Result:
    exit_code: int
    status: str | None  # None: no verdict (input error, exit 2)
    reason: str | None


def verdict(status: str, reason: str) -> Result:
    return Result(0 if status == "good" else 1, status, reason)


# Our exact result for every case, with the suite's max_age.
EXPECTED: dict[str, Result] = {
    "good_response.pem": verdict("good", "ok"),
    "good_response_sha256.pem": verdict("good", "ok"),
    "good_response_invalid_serial.pem": Result(2, None, None),
    "no_response.pem": verdict("invalid", "no-matching-response"),
    "malformed_request.pem": verdict("invalid", "responder-error"),
    "bad_status.pem": verdict("invalid", "malformed"),
    "bad_ocsp_type.pem": verdict("invalid", "malformed"),
    "bad_signature.pem": verdict("invalid", "bad-signature"),
    "ocsp_sign_direct.pem": verdict("good", "ok"),
    "ocsp_sign_indirect.pem": verdict("good", "ok"),
    "ocsp_sign_indirect_missing.pem": verdict("invalid", "signer-not-found"),
    "ocsp_sign_bad_indirect.pem": verdict("invalid", "signer-not-authorized"),
    "ocsp_extra_certs.pem": verdict("good", "ok"),
    "has_version.pem": verdict("good", "ok"),
    "responder_name.pem": verdict("good", "ok"),
    "responder_id.pem": verdict("good", "ok"),
    "has_extension.pem": verdict("good", "ok"),
    "good_response_next_update.pem": verdict("good", "ok"),
    "revoke_response.pem": verdict("revoked", "ok"),
    "revoke_response_reason.pem": verdict("revoked", "ok"),
    "unknown_response.pem": verdict("unknown", "ok"),
    "multiple_response.pem": verdict("unknown", "ok"),
    "other_response.pem": verdict("invalid", "no-matching-response"),
    "has_single_extension.pem": verdict("good", "ok"),
    "has_critical_single_extension.pem": verdict("invalid", "critical-extension"),
    "has_critical_response_extension.pem": verdict("invalid", "critical-extension"),
    # The critical extension is the RFC 6962 SCT list, which we know (and which
    # cannot change a status), so its critical flag is harmless, as for BoringSSL.
    "has_critical_ct_extension.pem": verdict("good", "ok"),
    "missing_response.pem": verdict("invalid", "no-matching-response"),
    "stale_response.pem": verdict("invalid", "expired"),
    "future_response.pem": verdict("invalid", "not-yet-valid"),
    "old_response.pem": verdict("invalid", "too-old"),
    "produced_early_response.pem": verdict("invalid", "produced-at-outside-validity"),
    "produced_late_response.pem": verdict("invalid", "produced-at-outside-validity"),
    "invalid_response.pem": verdict("invalid", "malformed"),
    "invalid_response_data.pem": verdict("invalid", "malformed"),
    # Both SingleResponses match; the strictest (revoked) wins, as in BoringSSL.
    "multiple_response_good_revoked.pem": verdict("revoked", "ok"),
}

# Cases where our answer differs from BoringSSL's, and why.
DIVERGENCES: dict[str, str] = {
    "good_response_invalid_serial.pem": (
        "the certificate's serial INTEGER is not valid DER (BoringSSL parses it with "
        "allow_invalid_serial_numbers); cryptography refuses the certificate and the "
        "response, so `ocsp check` reports an input error (exit 2): a certificate we "
        "cannot parse cannot be matched to a CertID, and accepting non-DER serials "
        "would let two encodings name one certificate"
    ),
}

# Without a max_age, DESIGN.md's rule applies: nextUpdate is required. Every response
# of the suite that reaches the date checks lacks nextUpdate except these two, so all
# others become `invalid: no-next-update` (good_response_next_update stays good;
# stale_response is already expired by its nextUpdate).
STRICT_UNCHANGED = {"good_response_next_update.pem", "stale_response.pem",
                    "future_response.pem"}

BORINGSSL_EQUIVALENT = {"good": "GOOD", "revoked": "REVOKED", "unknown": "UNKNOWN",
                        "invalid": "UNKNOWN"}

# BoringSSL's response_status (why it said what it said) against our reason.
REASONS_FOR_RESPONSE_STATUS = {
    "PROVIDED": {"ok", "bad-signature", "signer-not-found", "signer-not-authorized"},
    "ERROR_RESPONSE": {"responder-error"},
    "PARSE_RESPONSE_ERROR": {"malformed"},
    "PARSE_RESPONSE_DATA_ERROR": {"malformed"},
    "NO_MATCHING_RESPONSE": {"no-matching-response"},
    "UNHANDLED_CRITICAL_EXTENSION": {"critical-extension"},
    "INVALID_DATE": {"expired", "not-yet-valid", "too-old"},
    "BAD_PRODUCED_AT": {"produced-at-outside-validity"},
}


def _expectations() -> dict[str, object]:
    if not (SUITE / "expectations.json").is_file():
        return {"cases": [], "verify_time_epoch": 0, "max_age_seconds": 0}
    loaded: dict[str, object] = json.loads((SUITE / "expectations.json").read_text())
    return loaded


EXPECTATIONS = _expectations()
CASES: list[dict[str, str]] = EXPECTATIONS["cases"]  # type: ignore[assignment]
BY_FILE = {case["file"]: case for case in CASES}

_BLOCK = re.compile(r"-----BEGIN ([A-Z ]+)-----\n(.*?)-----END \1-----", re.DOTALL)


def _write_certificates(case_file: Path, directory: Path) -> tuple[Path, Path]:
    """The case's CERTIFICATE and CA CERTIFICATE blocks as ordinary PEM files."""
    blocks = {m.group(1): m.group(2) for m in _BLOCK.finditer(case_file.read_text())}
    paths = []
    for label, name in (("CERTIFICATE", "cert.pem"), ("CA CERTIFICATE", "issuer.pem")):
        path = directory / name
        path.write_text(f"-----BEGIN CERTIFICATE-----\n{blocks[label]}"
                        "-----END CERTIFICATE-----\n")
        paths.append(path)
    return paths[0], paths[1]


def _run(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
         *, max_age: bool = True) -> Result:
    case_file = SUITE / case
    cert, issuer = _write_certificates(case_file, tmp_path)
    argv = ["ocsp", "check", "--response", str(case_file), "--cert", str(cert),
            "--issuer", str(issuer), "--at", str(EXPECTATIONS["verify_time_epoch"]), "--json"]
    if max_age:
        argv += ["--max-age", str(EXPECTATIONS["max_age_seconds"])]
    code = main(argv)
    out, err = capsys.readouterr()
    if code == 2:
        assert out == ""
        assert err.startswith("danemilter: ") and err.count("\n") == 1
        return Result(code, None, None)
    document = json.loads(out)
    assert {"status", "reason"} <= document.keys()
    return Result(code, document["status"], document["reason"])


def test_the_suite_is_complete() -> None:
    assert len(CASES) == 36
    assert set(BY_FILE) == set(EXPECTED)
    assert {p.name for p in SUITE.glob("*.pem")} == set(BY_FILE)
    assert set(DIVERGENCES) <= set(EXPECTED)


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_case(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = _run(case, tmp_path, capsys)
    assert result == EXPECTED[case]

    boringssl = BY_FILE[case]
    ours = BORINGSSL_EQUIVALENT.get(result.status or "", "INPUT-ERROR")
    if case in DIVERGENCES:
        assert ours != boringssl["expected_revocation_status"], "divergence no longer holds"
    else:
        assert ours == boringssl["expected_revocation_status"]
        assert result.reason in REASONS_FOR_RESPONSE_STATUS[
            boringssl["expected_response_status"]]


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_case_without_max_age_requires_next_update(
        case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected = EXPECTED[case]
    # old_response is too old only by max_age; without one it lacks nextUpdate too.
    if (expected.status in ("good", "revoked", "unknown")
            and case not in STRICT_UNCHANGED) or case == "old_response.pem":
        expected = verdict("invalid", "no-next-update")
    assert _run(case, tmp_path, capsys, max_age=False) == expected
