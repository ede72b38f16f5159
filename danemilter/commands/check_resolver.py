"""``danemilter check-resolver``: the daemon's resolver self-check, run once and printed."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import replace
from typing import Any

from danemilter import config
from danemilter.errors import ConfigError, UsageError
from danemilter.resolver_check import ResolverCheck, ResolverState, check_resolver

# Exit status by outcome: scripts/run tells "nothing there" (install a resolver) from
# "a resolver that does not validate" (the operator's to fix).
EXIT_VALIDATING = 0
EXIT_NOT_VALIDATING = 1
EXIT_NO_ANSWER = 3


def register(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser(
        "check-resolver",
        help="check that the resolver validates DNSSEC (the daemon's self-check)",
        description="Ask the configured resolver the self-check's questions: a signed name "
        "must come back with the AD bit, and (with --bogus or resolver_check.bogus_name) a "
        "deliberately bogus name must come back SERVFAIL. Exit status: 0 the resolver "
        "validates; 1 it answers but does not validate (no AD bit, an error for the signed "
        "name, or an answer for the bogus one); 2 bad input or configuration; 3 no answer.",
    )
    parser.add_argument("--config", metavar="FILE",
                        help="take the resolver and the resolver_check names from FILE "
                        f"(default: {config.DEFAULT_PATH} when it exists)")
    parser.add_argument("--resolver", metavar="HOST[:PORT]",
                        help="ask this resolver instead of the configured one")
    parser.add_argument("--signed", metavar="NAME",
                        help="a signed name that must validate (default: the config's "
                        "resolver_check.signed_name, '.')")
    parser.add_argument("--signed-type", metavar="TYPE", help="its record type (default SOA)")
    parser.add_argument("--bogus", metavar="NAME",
                        help="a deliberately bogus name that must fail (default: the "
                        "config's resolver_check.bogus_name, none)")
    parser.add_argument("--bogus-type", metavar="TYPE", help="its record type (default A)")
    parser.add_argument("--timeout", type=float, metavar="S",
                        help="seconds for each question (default: the config's "
                        "resolver.timeout, 3)")
    parser.add_argument("--json", action="store_true",
                        help='print {"resolver", "state", "reason", "validating"}')
    parser.set_defaults(handler=_check)


def exit_code(result: ResolverCheck) -> int:
    if result.passed:
        return EXIT_VALIDATING
    if result.state is ResolverState.NO_ANSWER:
        return EXIT_NO_ANSWER
    return EXIT_NOT_VALIDATING


def _check(args: argparse.Namespace) -> int:
    settings = config.load(config.chosen_path(args.config))
    resolver = settings.resolver
    if args.timeout is not None:
        if not 0 < args.timeout <= 60:
            raise UsageError("check-resolver: --timeout must be between 0 and 60 seconds")
        resolver = replace(resolver, timeout=args.timeout)
    if args.resolver is not None:
        resolver = config.ResolverSettings.from_spec(args.resolver, timeout=resolver.timeout)
    overrides = {key: value for key, value in (
        ("signed_name", args.signed), ("signed_type", args.signed_type),
        ("bogus_name", args.bogus), ("bogus_type", args.bogus_type)) if value is not None}
    try:
        check = replace(settings.resolver_check, **{
            k: v.upper() if k.endswith("_type") else v for k, v in overrides.items()})
    except ConfigError as exc:
        raise UsageError(f"check-resolver: {str(exc).removeprefix('resolver_check.')}") from None
    result = asyncio.run(check_resolver(resolver, check))
    if args.json:
        json.dump({"resolver": result.resolver, "state": str(result.state),
                   "reason": result.reason, "validating": result.passed}, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(result.line())
    return exit_code(result)
