"""``danemilter run`` behind a private Postfix that relays to smtp-sink: one context."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from tests.support.milterproc import MilterProcess
from tests.support.postfix import PrivatePostfix, SmtpSink


@dataclass
class MailStack:
    milter: MilterProcess
    postfix: PrivatePostfix
    sink: SmtpSink


@contextlib.contextmanager
def mail_stack(config: str, log_level: str = "debug") -> Iterator[MailStack]:
    """Sink, milter (``config`` after MilterProcess's header), Postfix; stopped in reverse.
    On leaving, the milter must have exited cleanly (0) on SIGTERM."""
    sink = SmtpSink()
    sink.start()
    milter = MilterProcess(config, log_level)
    postfix = PrivatePostfix(milter.postfix_address, sink.port)
    code = None
    try:
        milter.start()
        postfix.start()
        yield MailStack(milter, postfix, sink)
    finally:
        postfix.stop()
        code = milter.stop()
        sink.stop()
    assert code == 0, "the milter must exit cleanly on SIGTERM"
