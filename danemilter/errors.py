"""The one exception hierarchy of danemilter.

Front ends turn these into exit codes (cli) or milter verdicts (milter) in one
place each; library code raises them and never prints.
"""

from __future__ import annotations


class DanemilterError(Exception):
    """Base of every error danemilter raises on purpose."""

    exit_code = 1


class InputError(DanemilterError):
    """Input from a user or a peer is malformed: an address, a domain, a file."""

    exit_code = 2


class UsageError(InputError):
    """A command line that does not parse."""


class ConfigError(InputError):
    """The configuration file is unreadable or invalid; carries file and line."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None) -> None:
        self.path = path
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(f"{where}{message}")


class CertificateError(InputError):
    """A certificate or chain cannot be parsed."""


class ResolverError(DanemilterError):
    """The resolver could not be asked at all (bad address, socket failure)."""


class DeadlineExceeded(DanemilterError):
    """An evaluation ran out of its time budget."""


class ListenError(DanemilterError):
    """The milter cannot listen where it is told to (in use, no permission, no such
    directory): a start-up problem for the operator, not a crash."""

    exit_code = 2


class ResolverCheckFailed(DanemilterError):
    """The resolver failed its self-check under ``resolver_check: refuse``: the daemon
    does not start (a resolver that does not validate makes DANE impossible)."""

    exit_code = 2
