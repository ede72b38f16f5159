"""The ``danemilter`` command: argument parsing and the one place errors become exit codes."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from danemilter import __version__
from danemilter.commands import cache as cache_commands
from danemilter.commands import check_resolver as check_resolver_commands
from danemilter.commands import ocsp as ocsp_commands
from danemilter.commands import policy_query as policy_query_commands
from danemilter.commands import run as run_commands
from danemilter.commands import tlsa as tlsa_commands
from danemilter.commands import verify as verify_commands
from danemilter.errors import DanemilterError, UsageError


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.partition(" ")[2]
        raise UsageError(f"{command}: {message}" if command else message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="danemilter", description=__doc__)
    parser.add_argument("--version", action="version", version=f"danemilter {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    tlsa_commands.register(commands)
    ocsp_commands.register(commands)
    verify_commands.register(commands)
    run_commands.register(commands)
    policy_query_commands.register(commands)
    check_resolver_commands.register(commands)
    cache_commands.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.WARNING,
            format="danemilter: %(levelname)s: %(message)s",
        )
        status: int = args.handler(args)
        return status
    except DanemilterError as exc:
        print(f"danemilter: {_one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def _one_line(message: str) -> str:
    return " ".join(message.split())
