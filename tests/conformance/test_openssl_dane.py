"""OpenSSL's DANE test vectors replayed through ``danemilter tlsa verify``.

The data stays in ../shared/conformance/openssl-dane (third-party, see its README);
expectations are the RFC 7672 SMTP ones recorded there, not OpenSSL's generic-DANE ones.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from danemilter.cli import main

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "conformance" / "openssl-dane"
CASES: list[dict[str, Any]] = json.loads((DATA / "danetest.cases.json").read_text())
EXPECTED_CASES = 55
_FILE_PREFIX = {"danetest.in": "danetest", "dane-cross.in": "dane-cross"}
# One per category, run as a real process to prove the installed command behaves the same.
SUBPROCESS_CASES = {"danetest-04", "danetest-19", "danetest-24", "danetest-49",
                    "danetest-52", "dane-cross-01"}


def _case_id(case: dict[str, Any]) -> str:
    return f"{_FILE_PREFIX[case['file']]}-{case['case']:02d}"


def _argv(case: dict[str, Any], chain_file: Path) -> list[str]:
    argv = ["tlsa", "verify", "--chain", str(chain_file), "--name", case["base_domain"], "--json"]
    for record in case["tlsa"]:
        argv += ["--tlsa", f"{record['usage']} {record['selector']} {record['mtype']} "
                           f"{record['data']}"]
    return argv


def _chain_file(case: dict[str, Any], directory: Path) -> Path:
    path = directory / "chain.pem"
    path.write_text("".join(case["chain_pem"]))
    return path


def _assert_expected(case: dict[str, Any], exit_code: int, output: dict[str, Any]) -> None:
    expectation = case["rfc7672_smtp_expectation"]
    outcome = expectation["outcome"]
    usable = sum(1 for record in case["tlsa"] if record["usage"] in (2, 3))
    assert output["usable_records"] == usable
    if outcome == "pass":
        assert (exit_code, output["verified"]) == (0, True), output
        assert output["depth"] == expectation["depth"]
    elif outcome == "no-usable-tlsa":
        assert (exit_code, output["verified"], output["depth"]) == (1, False, None), output
        assert output["usable_records"] == 0
        assert "no usable TLSA records" in output["reason"]
    elif outcome == "fail-no-match":
        assert (exit_code, output["verified"], output["depth"]) == (1, False, None), output
        assert "no TLSA record matches" in output["reason"]
    elif outcome == "fail-name-mismatch":
        assert (exit_code, output["verified"]) == (1, False), output
        assert output["depth"] == expectation["matched_depth"]
        assert output["reason"].startswith("name mismatch")
    else:
        pytest.fail(f"unknown expectation {outcome!r}")


def test_suite_is_complete() -> None:
    assert len(CASES) == EXPECTED_CASES
    assert len({_case_id(case) for case in CASES}) == EXPECTED_CASES
    assert {_case_id(case) for case in CASES} >= SUBPROCESS_CASES


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_case(case: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exit_code = main(_argv(case, _chain_file(case, tmp_path)))
    captured = capsys.readouterr()
    assert captured.err == ""
    _assert_expected(case, exit_code, json.loads(captured.out))


@pytest.mark.parametrize(
    "case", [c for c in CASES if _case_id(c) in SUBPROCESS_CASES], ids=_case_id
)
def test_case_as_process(case: dict[str, Any], tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "danemilter", *_argv(case, _chain_file(case, tmp_path))],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert completed.stderr == ""
    _assert_expected(case, completed.returncode, json.loads(completed.stdout))


@pytest.mark.parametrize(
    "case", [c for c in CASES if c["ignored_extra_tlsa_lines"]], ids=_case_id
)
def test_ignored_extra_records_do_not_change_the_verdict(
    case: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The README says cases 43-46 hold with or without the extra TLSA-looking line.
    argv = _argv(case, _chain_file(case, tmp_path))
    for record in case["ignored_extra_tlsa_lines"]:
        argv += ["--tlsa", f"{record['usage']} {record['selector']} {record['mtype']} "
                           f"{record['data']}"]
    exit_code = main(argv)
    output = json.loads(capsys.readouterr().out)
    expectation = case["rfc7672_smtp_expectation"]
    assert (exit_code, output["verified"], output["depth"]) == (0, True, expectation["depth"])
