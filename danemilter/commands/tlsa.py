"""``danemilter tlsa verify`` and ``danemilter tlsa generate`` (DESIGN.md, stable contracts).

Front end only: reads files, calls :mod:`danemilter.tlsa`, prints one result.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from cryptography import x509

from danemilter.certs import load_certificates
from danemilter.files import read_regular_file
from danemilter.names import normalize_domain
from danemilter.tlsa import TLSARecord, generate, match_chain


def register(commands: argparse._SubParsersAction[Any]) -> None:
    tlsa = commands.add_parser("tlsa", help="check or generate TLSA records offline")
    actions = tlsa.add_subparsers(dest="tlsa_command", required=True,
                                 metavar="{verify,generate}")

    verify = actions.add_parser(
        "verify", help="match a certificate chain against TLSA records (SMTP semantics)"
    )
    verify.add_argument("--chain", required=True, metavar="FILE.pem",
                        help="PEM certificates, leaf first, as the server sends them")
    verify.add_argument("--tlsa", required=True, action="append", metavar='"U S M HEX"',
                        help="a TLSA record in presentation form; repeat for an RRset")
    verify.add_argument("--name", required=True, action="append", metavar="NAME",
                        help="a reference name for DANE-TA name checks; repeatable")
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.add_argument("--at", type=_unix_time, metavar="UNIX_TIME",
                        help="check validity dates at this time instead of now")
    verify.set_defaults(handler=_verify)

    make = actions.add_parser("generate", help="print the TLSA record data for a certificate")
    make.add_argument("--cert", required=True, metavar="FILE.pem")
    make.add_argument("--usage", type=int, default=3, choices=range(4))
    make.add_argument("--selector", type=int, default=1, choices=range(2))
    make.add_argument("--mtype", type=int, default=1, choices=range(3))
    make.set_defaults(handler=_generate)


def _verify(args: argparse.Namespace) -> int:
    records = [TLSARecord.from_text(text) for text in args.tlsa]
    names = [normalize_domain(name) for name in args.name]
    chain = _read_certificates(args.chain)
    now: datetime = args.at if args.at is not None else datetime.now(UTC)
    result = match_chain(chain, records, names, now)
    if args.json:
        _emit(json.dumps({
            "verified": result.verified,
            "depth": result.depth,
            "usable_records": result.usable_records,
            "reason": result.reason,
        }))
    else:
        _emit(f"{'verified' if result.verified else 'not verified'}: {result.reason}")
    return 0 if result.verified else 1


def _generate(args: argparse.Namespace) -> int:
    cert = _read_certificates(args.cert)[0]
    _emit(generate(cert, args.usage, args.selector, args.mtype).to_text())
    return 0


def _read_certificates(path: str) -> list[x509.Certificate]:
    return load_certificates(read_regular_file(path), path, der=False)


def _unix_time(text: str) -> datetime:
    try:
        return datetime.fromtimestamp(float(text), UTC)
    except (ValueError, OverflowError, OSError):
        raise argparse.ArgumentTypeError(f"not a UNIX time: {text!r}") from None


def _emit(line: str) -> None:
    sys.stdout.write(f"{line}\n")
