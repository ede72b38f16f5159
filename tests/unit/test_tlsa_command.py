"""``danemilter tlsa verify|generate`` as a user runs them: exit codes, output, bad input."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from danemilter.cli import main
from danemilter.tlsa import generate
from tests.support.pki import Issued, chain_pem, make_ca, make_leaf

NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def ca() -> Issued:
    # Valid at the --at times used below: a self-signed DANE-TA anchor's dates count.
    return make_ca("CLI Test CA", not_before=NOW - timedelta(days=40),
                   not_after=NOW + timedelta(days=30))


@pytest.fixture(scope="module")
def leaf(ca: Issued) -> Issued:
    return make_leaf(ca, ["mx.example.com"], NOW - timedelta(days=30), NOW - timedelta(days=1))


@pytest.fixture
def chain_file(tmp_path: Path, leaf: Issued, ca: Issued) -> Path:
    path = tmp_path / "chain.pem"
    path.write_bytes(b"subject=junk OpenSSL prints\n" + chain_pem(leaf, ca))
    return path


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_verify_json_contract(chain_file: Path, ca: Issued,
                              capsys: pytest.CaptureFixture[str]) -> None:
    record = generate(ca.cert, 2, 0, 1).to_text()
    at = str(int((NOW - timedelta(days=2)).timestamp()))
    code, out, err = _run(["tlsa", "verify", "--chain", str(chain_file), "--tlsa", record,
                           "--name", "MX.example.com.", "--json", "--at", at], capsys)
    assert (code, err) == (0, "")
    assert json.loads(out) == {"verified": True, "depth": 1, "usable_records": 1,
                               "reason": "matched DANE-TA 2 0 1 at depth 1"}


def test_verify_text_and_not_verified_exit(chain_file: Path, ca: Issued,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    record = generate(ca.cert, 2, 1, 1).to_text()
    code, out, err = _run(["tlsa", "verify", "--chain", str(chain_file), "--tlsa", record,
                           "--name", "mx.example.com"], capsys)
    assert (code, err) == (1, "")
    assert out.startswith("not verified: leaf certificate expired")
    assert out.count("\n") == 1


def test_verify_several_records_and_names(chain_file: Path, leaf: Issued,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["tlsa", "verify", "--chain", str(chain_file), "--json",
            "--tlsa", "1 1 1 " + "00" * 32, "--tlsa", generate(leaf.cert).to_text(),
            "--name", "example.com", "--name", "mx.example.com"]
    code, out, _ = _run(argv, capsys)
    assert code == 0
    assert json.loads(out)["usable_records"] == 1


def test_generate_prints_rr_data(tmp_path: Path, leaf: Issued,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "leaf.pem"
    path.write_bytes(leaf.pem())
    code, out, err = _run(["tlsa", "generate", "--cert", str(path)], capsys)
    assert (code, out, err) == (0, generate(leaf.cert).to_text() + "\n", "")
    code, out, _ = _run(["tlsa", "generate", "--cert", str(path), "--usage", "2",
                         "--selector", "0", "--mtype", "2"], capsys)
    assert (code, out) == (0, generate(leaf.cert, 2, 0, 2).to_text() + "\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--chain", "{missing}"], "cannot read"),
        (["--chain", "{garbage}"], "no PEM certificate found"),
        (["--chain", "{broken}"], "not a valid PEM certificate chain"),
        (["--chain", "{directory}"], "cannot read"),
        (["--chain", "{chain}", "--tlsa", "3 1 1 xyz"], "not hex"),
        (["--chain", "{chain}", "--tlsa", "3 1"], "needs 'usage selector mtype hex'"),
        (["--chain", "{chain}", "--tlsa", "300 1 1 ab"], "out of range"),
        (["--chain", "{chain}", "--name", "bad name!"], "invalid character"),
        (["--chain", "{chain}", "--at", "soon"], "not a UNIX time"),
        (["--chain", "{chain}", "--at", "1e300"], "not a UNIX time"),
    ],
    ids=["missing-file", "garbage-file", "broken-pem", "directory", "bad-hex", "short-tlsa",
         "usage-range", "bad-name", "bad-at", "huge-at"],
)
def test_verify_bad_input_is_one_line_exit_2(
    tmp_path: Path, chain_file: Path, capsys: pytest.CaptureFixture[str],
    args: list[str], message: str,
) -> None:
    (tmp_path / "garbage.pem").write_bytes(b"\x00\xffnot a certificate\n")
    (tmp_path / "broken.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    paths = {"missing": tmp_path / "missing.pem", "garbage": tmp_path / "garbage.pem",
             "broken": tmp_path / "broken.pem", "directory": tmp_path, "chain": chain_file}
    argv = ["tlsa", "verify", *(a.format(**paths) for a in args)]
    if "--tlsa" not in argv:
        argv += ["--tlsa", "3 1 1 " + "00" * 32]
    if "--name" not in argv:
        argv += ["--name", "mx.example.com"]
    code, out, err = _run(argv, capsys)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert err.startswith("danemilter: ")
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["tlsa"],
        ["tlsa", "verify", "--tlsa", "3 1 1 00", "--name", "a.example"],
        ["tlsa", "verify", "--chain", "x.pem", "--name", "a.example"],
        ["tlsa", "verify", "--chain", "x.pem", "--tlsa", "3 1 1 00"],
        ["tlsa", "generate"],
        ["tlsa", "generate", "--cert", "x.pem", "--selector", "2"],
        ["tlsa", "generate", "--cert", "x.pem", "--mtype", "one"],
    ],
    ids=["no-action", "no-chain", "no-tlsa", "no-name", "no-cert", "bad-selector", "bad-mtype"],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(argv, capsys)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert err.startswith("danemilter: tlsa")


def test_generate_bad_file_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(["tlsa", "generate", "--cert", str(tmp_path / "none.pem")], capsys)
    assert (code, out) == (2, "")
    assert err.startswith("danemilter: cannot read") and err.count("\n") == 1
