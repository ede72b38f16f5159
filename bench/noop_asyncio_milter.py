"""A do-nothing asyncio milter: danemilter's asyncio transport without danemilter.

The baseline for danemilter's own asyncio transport (issue 11, "Benchmark"): it costs
the MTA exactly the exchanges danemilter causes and does none of danemilter's work. It
is its own :class:`asyncio.Protocol` over the sans-I/O codec
(``danemilter.milter.protocol``: Decoder, negotiate_reply, CONTINUE, insert_header) and
uses nothing of danemilter's server or session. What it copies from danemilter's
server (danemilter/milter/server.py):

* the negotiation: actions ADDHDRS|CHGHDRS|QUARANTINE (+SETSYMLIST when offered),
  steps NOHELO|NODATA|NOEOH|NOBODY|NOUNKNOWN|NR_CONN|NR_MAIL|NR_HDR, macro lists
  ENVFROM ``{auth_authen}``, ENVRCPT ``i``, EOM ``i``; ``--check`` compares its answer
  to a range of MTA offers with ``danemilter.milter.server.negotiation`` and exits 1 on
  a difference, so a change to danemilter's negotiation shows up here;
* the socket handling: TCP_NODELAY on every TCP connection, TCP_QUICKACK re-armed after
  every read, all responses to one read in one write;
* with ``--add-header VALUE``, the one header danemilter inserts for a one-domain
  message: ``X-DANE-Status`` at index 1 (SMFIR_INSHEADER), then CONTINUE.

What it leaves out, being a baseline: the order check (protocol.Sequencer), the idle
timer, the connection limit and every decision (RCPT is always CONTINUE).

    python bench/noop_asyncio_milter.py --socket PATH | --port N [--add-header VALUE]
    python bench/noop_asyncio_milter.py --check
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from common import add_noop_arguments, check_report

from danemilter.milter import protocol as p

HEADER = "X-DANE-Status"
ACTIONS = p.Action.ADDHDRS | p.Action.CHGHDRS | p.Action.QUARANTINE
STEPS = (p.Step.NOHELO | p.Step.NODATA | p.Step.NOEOH | p.Step.NOBODY | p.Step.NOUNKNOWN
         | p.Step.NR_CONN | p.Step.NR_MAIL | p.Step.NR_HDR)
MACROS = {p.MacroStage.ENVFROM: ("{auth_authen}",), p.MacroStage.ENVRCPT: ("i",),
          p.MacroStage.EOM: ("i",)}
# The stages that answer unless negotiated to no-reply (RCPT and EOM always answer).
NO_REPLY: dict[type, p.Step] = {
    p.Connect: p.Step.NR_CONN, p.Helo: p.Step.NR_HELO, p.Mail: p.Step.NR_MAIL,
    p.Data: p.Step.NR_DATA, p.Header: p.Step.NR_HDR, p.EndOfHeaders: p.Step.NR_EOH,
    p.Body: p.Step.NR_BODY, p.Unknown: p.Step.NR_UNKN,
}
SILENT = (p.Macros, p.Abort, p.QuitNewConnection)
MAX_PACKET = 1024 * 1024
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def negotiate(offer: p.OptionNegotiation) -> tuple[bytes, p.Step]:
    """The answer to the MTA's offer and the steps agreed on (as danemilter's server)."""
    version = min(offer.version, p.MILTER_VERSION)
    if version < 2 or ACTIONS & offer.actions != ACTIONS:
        raise p.ProtocolError(f"offer {offer} lacks what this milter needs")
    actions, macros = ACTIONS, None
    if offer.actions & p.Action.SETSYMLIST:
        actions |= p.Action.SETSYMLIST
        macros = MACROS
    return p.negotiate_reply(version, actions, STEPS & offer.steps, macros), STEPS & offer.steps


class NoopConnection(asyncio.Protocol):
    def __init__(self, header: bytes) -> None:
        self._decoder = p.Decoder(MAX_PACKET)
        self._steps = p.Step(0)
        self._eom = header + p.CONTINUE
        self._transport: asyncio.Transport | None = None
        self._sock: socket.socket | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if _TCP_QUICKACK is not None:
                self._sock = sock
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        out: list[bytes] = []
        try:
            for command in self._decoder.feed(data):
                kind = type(command)
                if kind is p.Rcpt:
                    out.append(p.CONTINUE)
                elif kind is p.EndOfMessage:
                    out.append(self._eom)
                elif kind in SILENT:
                    pass
                elif isinstance(command, p.OptionNegotiation):
                    reply, self._steps = negotiate(command)
                    out.append(reply)
                elif kind is p.Quit:
                    self._transport.close()
                    return
                elif not self._steps & NO_REPLY[kind]:
                    out.append(p.CONTINUE)
        except p.ProtocolError as exc:
            print(f"noop_asyncio_milter: {exc}; closing the connection", file=sys.stderr)
            self._transport.close()
            return
        if out:
            self._transport.write(b"".join(out))
        if self._sock is not None:
            self._sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)  # type: ignore[arg-type]


def check_against_danemilter() -> list[str]:
    """Differences between our answers and danemilter's server's to a range of offers."""
    from danemilter.config.model import Settings  # noqa: PLC0415 - only for --check
    from danemilter.milter.server import negotiation  # noqa: PLC0415 - only for --check

    problems = []
    every_step = p.Step(sum(int(s) for s in p.Step))
    every_action = p.Action(0x1FF)
    offers = [p.OptionNegotiation(6, every_action, every_step),  # Postfix 3.x, Sendmail 8.17
              p.OptionNegotiation(6, every_action & ~p.Action.SETSYMLIST, every_step),
              p.OptionNegotiation(6, every_action, every_step & ~(p.Step.NR_MAIL
                                                                  | p.Step.NOHELO)),
              p.OptionNegotiation(2, every_action, p.Step(0x7F))]
    for offer in offers:
        if negotiate(offer) != negotiation(offer):
            problems.append(f"answer to {offer}: {negotiate(offer)} != danemilter's "
                            f"{negotiation(offer)}")
    if Settings().header != HEADER:
        problems.append(f"header {HEADER} != danemilter's default {Settings().header}")
    return problems


async def serve(args: argparse.Namespace) -> None:
    header = b"" if args.add_header is None else p.insert_header(1, HEADER, args.add_header)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set_result, None)
    if args.socket:
        Path(args.socket).unlink(missing_ok=True)
        server = await loop.create_unix_server(lambda: NoopConnection(header), args.socket)
        os.chmod(args.socket, 0o666)  # smtpd runs as user postfix
    else:
        server = await loop.create_server(lambda: NoopConnection(header), "127.0.0.1",
                                          args.port)
    async with server:
        await stop


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--socket", help="unix socket path to listen on")
    where.add_argument("--port", type=int, help="TCP port to listen on, on 127.0.0.1")
    add_noop_arguments(parser)
    args = parser.parse_args(argv)
    if args.check:
        return check_report("noop_asyncio_milter", check_against_danemilter(),
                            "negotiates what danemilter's asyncio server does")
    if not args.socket and args.port is None:
        parser.error("--socket or --port is required")
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
