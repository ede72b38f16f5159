"""A pymilter daemon that negotiates what danemilter negotiates and then does nothing.

It is the baseline that separates the cost of being a pymilter at all (libmilter's
thread per connection, the protocol exchanges, the GIL) from the cost of danemilter's
own work. To be a fair baseline it must cause exactly the same exchanges with the
MTA: the same callbacks (connect, MAIL, RCPT, header, end of message; everything else
negotiated away), the same ``@noreply`` stages, the same macro lists per stage and the
same action flags. ``--check`` compares all of that with danemilter.milter.DaneMilter
and exits 1 on a difference, so a change to danemilter's negotiation shows up here.

    python bench/noop_milter.py --socket /path/milter.sock [--check]
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

import Milter
from common import add_noop_arguments, check_report

# danemilter's flags (commands/run.py): header edits and quarantine.
FLAGS = Milter.ADDHDRS | Milter.CHGHDRS | Milter.QUARANTINE


class NoopMilter(Milter.Base):
    """CONTINUE everywhere; decorators mirror danemilter.milter.DaneMilter one to one.

    With ``inserted_header`` set it also inserts that one header at end of message, as danemilter
    does for a one-domain message: the baseline for "all the work but the decision".
    """

    inserted_header: str | None = None

    def setsymlist(self, stage: int, *macros: str) -> None:
        # pymilter 1.0.5's own setsymlist hands bytes to its C module, which raises
        # TypeError on Python 3; negotiate() then gives up on every option, so no stage
        # is skipped. danemilter works around it the same way; without this the
        # baseline would negotiate differently (and be slower) than danemilter.
        if not self._actions & Milter.SETSYMLIST:
            return
        self._ctx.setsymlist(stage, " ".join(" ".join(macros).split()))

    @Milter.noreply
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    @Milter.symlist("{auth_authen}")
    def envfrom(self, mailfrom: str, *params: str) -> int:
        return Milter.CONTINUE

    @Milter.symlist("i")
    def envrcpt(self, recipient: str, *params: str) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    def header(self, name: str, value: str) -> int:
        return Milter.CONTINUE

    @Milter.symlist("i")
    def eom(self) -> int:
        if self.inserted_header is not None:
            self.addheader("X-DANE-Status", self.inserted_header, 1)
        return Milter.CONTINUE

    def abort(self) -> int:
        return Milter.CONTINUE


def negotiation(klass: type[Milter.Base]) -> tuple[int, dict[str, tuple[str, ...] | None]]:
    """The protocol mask a class negotiates away and the macro list of each stage."""
    # pymilter's stubs here declare neither of these; both exist in pymilter 1.0.5.
    stages: dict[str, int] = Milter.MACRO_CALLBACKS  # type: ignore[attr-defined]
    symlists = {name: getattr(getattr(klass, name), "_symlist", None) for name in stages}
    mask: int = klass.protocol_mask()  # type: ignore[attr-defined]
    return mask, symlists


def check_against_danemilter() -> list[str]:
    from danemilter.milter.libmilter import DaneMilter  # noqa: PLC0415 - only for --check

    ours, theirs = negotiation(NoopMilter), negotiation(DaneMilter)
    problems = []
    if ours[0] != theirs[0]:
        problems.append(f"protocol mask {ours[0]:#x} != danemilter's {theirs[0]:#x}")
    for stage, macros in theirs[1].items():
        if ours[1][stage] != macros:
            problems.append(f"macros at {stage}: {ours[1][stage]} != danemilter's {macros}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", help="unix socket path to listen on")
    add_noop_arguments(parser)
    args = parser.parse_args(argv)
    if args.check:
        return check_report("noop_milter", check_against_danemilter(),
                            "negotiates the same callbacks and macros as danemilter")
    if not args.socket:
        parser.error("--socket is required")
    # Postfix's smtpd runs as user postfix and must be able to connect; libmilter
    # creates the socket itself, so the umask sets its mode (as danemilter does).
    os.umask(0o000)
    NoopMilter.inserted_header = args.add_header
    Milter.factory = NoopMilter
    Milter.set_flags(FLAGS)
    stop = threading.Event()

    def serve() -> None:
        try:
            Milter.runmilter("noop", f"unix:{args.socket}", 600)
        finally:
            stop.set()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    # As danemilter does: libmilter blocks signals in its own thread, so it runs off
    # the main thread and Python's handlers still see SIGTERM.
    server = threading.Thread(target=serve, name="libmilter", daemon=True)
    server.start()
    stop.wait()
    if server.is_alive():
        Milter.stop()
        server.join(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
