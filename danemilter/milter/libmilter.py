"""The libmilter transport (``transport: libmilter``): pymilter callbacks → the Session.

libmilter runs one thread per MTA connection and gives no hook for socket options
(shared/notes/milter-performance.md: over TCP it loses most of Postfix's throughput to
Nagle and delayed ACKs); it stays as the fallback behind the same session handler as
the asyncio transport. Only the callbacks the session needs are negotiated, every one
that need not answer is ``@noreply``, and each stage asks only for the macros it reads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar

import Milter

from danemilter.milter.session import (
    RcptAnswer,
    Runtime,
    RuntimeRef,
    Session,
    fold_header,
)

__all__ = ["DaneMilter", "Runtime", "RuntimeRef", "fold_header"]

log = logging.getLogger(__name__)

# The session bounds its own lookups by the recipient's deadline; this is only the
# last resort for a loop that does not answer at all.
_GRACE = 1.0

Runner = Callable[[Coroutine[Any, Any, RcptAnswer], float], RcptAnswer]


def _run_here(coro: Coroutine[Any, Any, RcptAnswer], timeout: float) -> RcptAnswer:
    """Without a daemon's loop thread (tests): a loop of the calling thread's own."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


class DaneMilter(Milter.Base):
    """One instance per SMTP connection (libmilter calls the factory on connect)."""

    runtime_ref: ClassVar[RuntimeRef]
    # How a callback thread waits for a lookup: the daemon sets its loop thread's call.
    runner: ClassVar[Runner] = _run_here

    def __init__(self) -> None:
        self.session = Session(self.runtime_ref)

    def setsymlist(self, stage: int, *macros: str) -> None:
        """Ask the MTA for only these macros at ``stage`` (called from negotiate).

        pymilter 1.0.5's own version hands bytes to its C module, which wants str on
        Python 3: the TypeError made negotiate() give up on every option, so no stage
        was skipped and no reply saved. Without SETSYMLIST from the MTA (old Sendmail)
        the MTA's default macros are fine: nothing to do.
        """
        if not self._actions & Milter.SETSYMLIST:
            return
        names = " ".join(macros).split()
        if len(names) > 5:
            raise ValueError("an MTA takes at most 5 macros per stage")
        self._ctx.setsymlist(stage, " ".join(names))

    def _queue_id(self) -> None:
        self.session.note_queue_id(str(self.getsymval("i") or ""))

    # --- callbacks ------------------------------------------------------------

    @Milter.noreply
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        # libmilter passes (address, port[, ...]) for inet families; a bare string otherwise.
        address = hostaddr[0] if isinstance(hostaddr, tuple) and hostaddr else hostaddr
        self.session.connect(str(address) if address is not None else None)
        return Milter.CONTINUE

    @Milter.noreply
    @Milter.symlist("{auth_authen}")
    def envfrom(self, mailfrom: str, *params: str) -> int:
        self.session.mail(bool(self.getsymval("{auth_authen}")))
        return Milter.CONTINUE

    @Milter.symlist("i")
    def envrcpt(self, recipient: str, *params: str) -> int:
        self._queue_id()
        answer = self.session.rcpt(recipient)
        if isinstance(answer, Coroutine):
            limit = self.session.runtime.settings.deadline + _GRACE
            try:
                answer = DaneMilter.runner(answer, limit)
            except Exception:
                log.exception("%s: no verdict within %.1f s", self.session.queue_id, limit)
                answer = self.session.on_error_answer()
        if answer is None:
            return Milter.CONTINUE
        self.setreply(str(answer.code), answer.xcode, answer.text)
        return Milter.TEMPFAIL if answer.code < 500 else Milter.REJECT

    @Milter.noreply
    def header(self, name: str, value: str) -> int:
        self.session.header(name)
        return Milter.CONTINUE

    @Milter.symlist("i")
    def eom(self) -> int:
        self._queue_id()
        edits = self.session.end_of_message()
        if edits.reply is not None:
            reply = edits.reply
            self.setreply(str(reply.code), reply.xcode, reply.text)
            return Milter.TEMPFAIL
        for edit in edits.headers:
            if edit.insert:
                self.addheader(edit.name, edit.value, edit.index)
            else:
                self.chgheader(edit.name, edit.index, edit.value)
        if edits.quarantine is not None:
            self.quarantine(edits.quarantine)
        return Milter.CONTINUE

    def abort(self) -> int:
        self.session.abort()
        return Milter.CONTINUE

