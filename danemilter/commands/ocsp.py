"""``danemilter ocsp check`` and ``danemilter ocsp fetch``: the OCSP front end.

No verification logic here: ``danemilter.ocsp`` judges, ``danemilter.ocsp_fetch`` asks
responders and writes the staple; this module reads files and maps results to output
and exit codes.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.parse
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509

from danemilter.certs import load_certificate, load_certificates
from danemilter.errors import InputError, UsageError
from danemilter.files import read_regular_file
from danemilter.ocsp import CheckStatus, OCSPVerdict, response_der_from_file, verify_response
from danemilter.ocsp_fetch import Outcome, refresh_staple

EXIT_GOOD = 0
EXIT_NOT_GOOD = 1
# 2 (usage or input error) comes from danemilter.errors.InputError,
# 3 from ocsp_fetch.TemporaryFetchError, 4 from ocsp_fetch.NoOCSPURLError.

_CHECK_EPILOG = """\
exit status: 0 the response is good for the certificate; 1 it is revoked, unknown or
invalid (the reason names the rule that failed); 2 usage or input error.
"""

_FETCH_EPILOG = """\
exit status (for cron and systemd):
  0  the staple was replaced, or the current staple is good and the responder's new
     answer is not better (older, shorter-lived, or signed by a certificate that
     expires sooner), so the current one is kept;
  1  the responder's answer was refused (revoked, unknown, invalid, e.g. a delegated
     signer that expires before nextUpdate, or too short-lived); the current file is
     kept untouched;
  2  usage or input error (unreadable certificate, unwritable output directory);
  3  temporary failure: responder unreachable, timed out, HTTP error, or it answered
     tryLater/internalError; the current file is kept; retry later;
  4  the certificate has no OCSP URL and --url was not given.
"""

_DURATION = re.compile(r"(\d+)([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


_MAX_DURATION = 100 * 366 * 86_400  # beyond it, datetime arithmetic overflows


def parse_duration(text: str) -> timedelta:
    """``90``, ``90s``, ``15m``, ``2h``, ``7d``, ``1w``, or sums such as ``1h30m``."""
    position = 0
    seconds = 0
    spec = text.strip().lower()
    while position < len(spec):
        match = _DURATION.match(spec, position)
        if match is None:
            raise UsageError(f"bad duration {text!r} (examples: 3600, 90m, 2h, 7d, 1h30m)")
        seconds += int(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if not spec:
        raise UsageError("empty duration")
    if seconds > _MAX_DURATION:
        raise UsageError(f"duration {text!r} is longer than 100 years")
    return timedelta(seconds=seconds)


def register(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser("ocsp", help="check or fetch OCSP responses (staples)")
    sub = parser.add_subparsers(dest="ocsp_command", required=True,
                                parser_class=type(parser))

    check = sub.add_parser(
        "check", help="verify an OCSP response for a certificate",
        description="Verify an OCSP response (DER, or PEM with an OCSP RESPONSE block) for "
                    "a certificate and its issuer (PEM or DER); the rules are in docs/ocsp.md.",
        epilog=_CHECK_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("--response", required=True, metavar="FILE")
    check.add_argument("--cert", required=True, metavar="FILE")
    check.add_argument("--issuer", required=True, metavar="FILE")
    check.add_argument("--at", metavar="UNIX_TIME", type=_unix_time,
                       help="verify as of this time instead of now")
    check.add_argument("--max-age", metavar="DURATION", type=parse_duration,
                       help="accept responses without nextUpdate up to this age, and "
                            "refuse any response older than this")
    check.add_argument("--signer", metavar="FILE", action="append", default=[],
                       help="a delegated responder certificate the response may omit")
    check.add_argument("--json", action="store_true", help="print a JSON object")
    check.set_defaults(handler=_check)

    fetch = sub.add_parser(
        "fetch", help="fetch a staple for tls_ocsp_file and replace it atomically",
        description="Ask the certificate's OCSP responder for a response, verify it "
                    "fully, and replace --out atomically when the new response is good "
                    "and not worse than the current one.",
        epilog=_FETCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    fetch.add_argument("--cert", required=True, metavar="FILE")
    fetch.add_argument("--issuer", required=True, metavar="FILE")
    fetch.add_argument("--out", required=True, metavar="FILE", type=Path,
                       help="the DER staple file the MTA serves (Exim tls_ocsp_file)")
    fetch.add_argument("--url", type=_url,
                       help="responder URL (default: the certificate's AIA)")
    fetch.add_argument("--min-remaining", metavar="DURATION", type=parse_duration,
                       default=timedelta(hours=2),
                       help="refuse responses with less life left; renew a staple with "
                            "less left even when the new one is otherwise worse "
                            "(default 2h)")
    fetch.add_argument("--timeout", metavar="S", type=_seconds, default=10.0,
                       help="HTTP timeout in seconds (default 10)")
    fetch.add_argument("--method", choices=("auto", "get", "post"), default="auto",
                       help="auto: GET for small requests, POST otherwise or when GET "
                            "is refused")
    fetch.add_argument("--signer", metavar="FILE", action="append", default=[],
                       help="delegated responder certificate, for responders that omit it "
                            "(it is then added to the staple)")
    fetch.add_argument("--quiet", action="store_true", help="print nothing on exit 0")
    fetch.set_defaults(handler=_fetch)


def _unix_time(text: str) -> datetime:
    try:
        value = float(text)
        return datetime.fromtimestamp(value, UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise UsageError(f"--at: not a UNIX time: {text!r}") from exc


def _url(text: str) -> str:
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port  # a bad port raises only when asked for
    except ValueError as exc:
        raise UsageError(f"--url: not a URL: {text!r} ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise UsageError(f"--url: not an http(s) URL with a host: {text!r}")
    return text


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise UsageError(f"--timeout: not a number of seconds: {text!r}") from exc
    if not 0 < value <= 300:
        raise UsageError("--timeout must be between 0 and 300 seconds")
    return value


def _read(path: str | Path) -> bytes:
    return read_regular_file(path)


def _load_cert(path: str, what: str) -> x509.Certificate:
    return load_certificate(_read(path), f"{what} {path}")


def _load_signers(paths: list[str]) -> tuple[x509.Certificate, ...]:
    certs: list[x509.Certificate] = []
    for path in paths:
        certs.extend(load_certificates(_read(path), f"--signer {path}"))
    return tuple(certs)


def _summary(verdict: OCSPVerdict) -> str:
    if verdict.status == CheckStatus.INVALID:
        return f"invalid ({verdict.reason}): {verdict.detail}"
    parts = [f"{verdict.status}: {verdict.detail}"]
    if verdict.expires is not None:
        parts.append(f"valid until {verdict.expires:%Y-%m-%dT%H:%M:%SZ}")
    if verdict.signer is not None:
        parts.append(f"signed by {verdict.signer}")
    return "; ".join(parts)


def _check(args: argparse.Namespace) -> int:
    response = response_der_from_file(_read(args.response))
    cert = _load_cert(args.cert, "--cert")
    issuer = _load_cert(args.issuer, "--issuer")
    signers = _load_signers(args.signer)
    now = args.at if args.at is not None else datetime.now(UTC)
    verdict = verify_response(response, cert, issuer, now, max_age=args.max_age,
                              extra_certs=signers)
    if args.json:
        print(json.dumps(verdict.to_dict(), sort_keys=True))
    else:
        print(_summary(verdict))
    return EXIT_GOOD if verdict.good else EXIT_NOT_GOOD


def _fetch(args: argparse.Namespace) -> int:
    cert = _load_cert(args.cert, "--cert")
    issuer = _load_cert(args.issuer, "--issuer")
    signers = _load_signers(args.signer)
    if not args.out.parent.is_dir():
        raise InputError(f"--out: directory {args.out.parent} does not exist")
    result = refresh_staple(
        cert, issuer, args.out, now=datetime.now(UTC), url=args.url,
        min_remaining=args.min_remaining, timeout=args.timeout, method=args.method,
        signer_certs=signers,
    )
    if result.outcome is Outcome.REFUSED:
        print(f"danemilter: ocsp fetch: refused the new response, kept {args.out}: "
              f"{result.message}", file=sys.stderr)
        return EXIT_NOT_GOOD
    if not args.quiet:
        verb = "replaced" if result.outcome is Outcome.REPLACED else "kept"
        print(f"{verb} {args.out}: {result.message}; new response {_summary(result.new)}")
    return EXIT_GOOD
