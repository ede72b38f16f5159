"""The asyncio milter transport: one event loop for every MTA connection.

Each connection is an :class:`asyncio.Protocol` over the sans-I/O codec
(danemilter.milter.protocol) and a :class:`~danemilter.milter.session.Session`.
Transport costs measured on these machines (shared/notes/milter-performance.md) shape
it: TCP_NODELAY on every accepted TCP socket, and TCP_QUICKACK re-armed after every
read (Linux clears it), so the MTA's back-to-back writes (a macro packet, then the
command) never wait for a delayed ACK. All responses to one read leave in one write.

A peer can cost only what the limits allow: one packet at most ``max_packet`` octets,
``idle_timeout`` of silence, ``max_connections`` at once (the one past it is closed at
once). A protocol error closes that one connection with one log line; nothing a peer
sends raises out of here or holds the loop.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from danemilter.config.model import MilterLimits
from danemilter.milter import protocol as p
from danemilter.milter.session import MessageEdits, RcptAnswer, RuntimeRef, Session

log = logging.getLogger(__name__)

T = TypeVar("T")

_ACTIONS = p.Action.ADDHDRS | p.Action.CHGHDRS | p.Action.QUARANTINE
# Steps the session has no use for are skipped; those it only listens to get no reply.
_STEPS = (p.Step.NOHELO | p.Step.NODATA | p.Step.NOEOH | p.Step.NOBODY | p.Step.NOUNKNOWN
          | p.Step.NR_CONN | p.Step.NR_MAIL | p.Step.NR_HDR)
# Only what each stage reads: the queue ID, and whether the client authenticated.
MACROS: dict[p.MacroStage, tuple[str, ...]] = {
    p.MacroStage.ENVFROM: ("{auth_authen}",),
    p.MacroStage.ENVRCPT: ("i",),
    p.MacroStage.EOM: ("i",),
}
# As plain ints: an IntFlag operation costs an enum construction on every packet.
_NO_REPLY: dict[type, int] = {
    p.Connect: int(p.Step.NR_CONN),
    p.Helo: int(p.Step.NR_HELO),
    p.Mail: int(p.Step.NR_MAIL),
    p.Data: int(p.Step.NR_DATA),
    p.Header: int(p.Step.NR_HDR),
    p.EndOfHeaders: int(p.Step.NR_EOH),
    p.Body: int(p.Step.NR_BODY),
    p.Unknown: int(p.Step.NR_UNKN),
}
_NR_HDR, _NR_MAIL, _NR_CONN = _NO_REPLY[p.Header], _NO_REPLY[p.Mail], _NO_REPLY[p.Connect]
_READ_QUEUE_LIMIT = 64  # commands held while a RCPT decision is pending
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def negotiation(offer: p.OptionNegotiation) -> tuple[bytes, p.Step]:
    """Our answer to the MTA's offer, and the steps agreed on."""
    version = min(offer.version, p.MILTER_VERSION)
    if version < 2:
        raise p.ProtocolError(f"milter protocol version {offer.version} is too old")
    actions = _ACTIONS & offer.actions
    if actions != _ACTIONS:
        missing = _ACTIONS & ~offer.actions
        raise p.ProtocolError(f"the MTA does not allow the actions {missing!r}")
    steps = _STEPS & offer.steps
    macros = None
    if offer.actions & p.Action.SETSYMLIST:
        actions |= p.Action.SETSYMLIST
        macros = MACROS
    return p.negotiate_reply(version, actions, steps, macros), steps


class Connections:
    """The server's count of open connections, and its refusals (logged sparingly: a
    flood must not become a flood of log lines)."""

    def __init__(self, limits: MilterLimits) -> None:
        self.limits = limits
        self.open: set[MilterConnection] = set()
        self.refused = 0
        self._refusals_unlogged = 0
        self._last_refusal_log = 0.0
        self.protocol_errors = 0

    def admit(self, connection: MilterConnection) -> bool:
        if len(self.open) >= self.limits.max_connections:
            self.refused += 1
            self._refusals_unlogged += 1
            now = time.monotonic()
            if now - self._last_refusal_log >= 10:
                log.warning("refused %d MTA connection(s): %d open, the limit "
                            "(limits.max_connections)", self._refusals_unlogged,
                            len(self.open))
                self._refusals_unlogged = 0
                self._last_refusal_log = now
            return False
        self.open.add(connection)
        return True


class MilterConnection(asyncio.Protocol):
    def __init__(self, ref: RuntimeRef, connections: Connections) -> None:
        self._ref = ref
        self._connections = connections
        limits = connections.limits
        self._decoder = p.Decoder(limits.max_packet)
        self._sequencer = p.Sequencer()
        self._session = Session(ref)
        self._steps = 0  # the agreed SMFIP_* bits
        self._idle_timeout = limits.idle_timeout
        self._transport: asyncio.Transport | None = None
        self._sock: Any = None
        self._quickack = False
        self._queue: deque[p.Command] = deque()
        self._pending: asyncio.Task[RcptAnswer] | None = None
        self._out: list[bytes] = []
        self._last_read = time.monotonic()
        self._idle: asyncio.TimerHandle | None = None
        self._closing = False
        self._reading_paused = False
        self._peer = "?"
        self._auth = False
        self._rcpt_queue_id: str | None = None
        self._eom_queue_id: str | None = None

    # --- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if not self._connections.admit(self):
            self._closing = True
            transport.abort()
            return
        sock = transport.get_extra_info("socket")
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix"
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            self._sock = sock
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._quickack = _TCP_QUICKACK is not None
            self._rearm_quickack()
        self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._connections.open.discard(self)
        if self._idle is not None:
            self._idle.cancel()
        if self._pending is not None:
            self._pending.cancel()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._last_read = time.monotonic()
        self._safely(self._feed, data)
        if self._quickack:
            self._rearm_quickack()

    def _feed(self, data: bytes) -> None:
        self._queue.extend(self._decoder.feed(data))
        self._work()

    def eof_received(self) -> bool | None:
        self._close()
        return None

    def pause_writing(self) -> None:
        # The MTA is not reading what we answer: stop reading what it sends.
        self._pause_reading()

    def resume_writing(self) -> None:
        if self._pending is None:
            self._resume_reading()

    # --- the commands -------------------------------------------------------------

    def _work(self) -> None:
        """Answer queued commands in order until one needs a lookup."""
        while self._queue and self._pending is None and not self._closing:
            command = self._queue.popleft()
            self._sequencer.check(command)
            self._dispatch(command)
        if self._pending is not None and len(self._queue) > _READ_QUEUE_LIMIT:
            self._pause_reading()

    def _dispatch(self, command: p.Command) -> None:
        kind = type(command)
        if kind is p.Macros:
            self._macros(command)  # type: ignore[arg-type]
        elif kind is p.Rcpt:
            self._rcpt(command)  # type: ignore[arg-type]
        elif kind is p.Header:
            self._session.header(command.name)  # type: ignore[union-attr]
            self._answer_unless(_NR_HDR)
        elif kind is p.EndOfMessage:
            self._session.note_queue_id(self._eom_queue_id)
            self._end_of_message(self._session.end_of_message())
        elif kind is p.Mail:
            self._session.mail(self._auth)
            self._answer_unless(_NR_MAIL)
        elif kind is p.Abort:
            self._session.abort()
            self._rcpt_queue_id = self._eom_queue_id = None
        elif kind is p.Connect:
            family = command.family  # type: ignore[union-attr]
            self._session.connect(command.address if family in "46" else None)  # type: ignore[union-attr]
            self._answer_unless(_NR_CONN)
        elif kind is p.OptionNegotiation:
            reply, steps = negotiation(command)  # type: ignore[arg-type]
            self._steps = int(steps)
            self._out.append(reply)
        elif kind is p.Quit:
            self._close()
        elif kind is p.QuitNewConnection:
            # Another SMTP client on this connection: nothing of the last one carries over.
            self._session = Session(self._ref)
            self._auth = False
            self._rcpt_queue_id = self._eom_queue_id = None
        else:  # HELO, DATA, end of headers, body, unknown: nothing to decide
            self._answer_unless(_NO_REPLY[kind])

    def _answer_unless(self, no_reply: int) -> None:
        if not self._steps & no_reply:
            self._out.append(p.CONTINUE)

    def _macros(self, command: p.Macros) -> None:
        stage = command.for_command
        if stage == b"R":
            self._rcpt_queue_id = next((v for k, v in command.values if k == "i"), None)
        elif stage == b"E":
            self._eom_queue_id = next((v for k, v in command.values if k == "i"), None)
        elif stage == b"M":
            self._auth = any(k == "{auth_authen}" and v for k, v in command.values)
            self._rcpt_queue_id = self._eom_queue_id = None

    def _rcpt(self, command: p.Rcpt) -> None:
        self._session.note_queue_id(self._rcpt_queue_id)
        answer = self._session.rcpt(command.recipient)
        if isinstance(answer, Coroutine):
            self._wait_for(answer)
        else:
            self._out.append(_rcpt_reply(answer))

    def _wait_for(self, decision: Coroutine[Any, Any, RcptAnswer]) -> None:
        self._pending = asyncio.ensure_future(decision)
        self._pending.add_done_callback(self._decided)

    def _decided(self, task: asyncio.Task[RcptAnswer]) -> None:
        self._pending = None
        if self._closing or task.cancelled():
            return
        self._safely(self._answer_rcpt, task)
        if not self._closing and self._pending is None:
            self._resume_reading()

    def _answer_rcpt(self, task: asyncio.Task[RcptAnswer]) -> None:
        self._out.append(_rcpt_reply(task.result()))
        self._work()

    def _safely(self, step: Callable[[T], None], argument: T) -> None:
        """Run ``step``; whatever it raises ends this connection, and only this one."""
        try:
            step(argument)
        except p.ProtocolError as exc:
            self._fail(f"protocol error: {exc}")
        except Exception:
            log.exception("milter connection from %s: internal error; closing it", self._peer)
            self._close()
        self._flush()

    def _end_of_message(self, edits: MessageEdits) -> None:
        if edits.reply is not None:
            reply = edits.reply
            self._out.append(p.reply_code(reply.code, reply.xcode, reply.text))
            return
        for edit in edits.headers:
            if edit.insert:
                self._out.append(p.insert_header(edit.index, edit.name, edit.value))
            else:
                self._out.append(p.change_header(edit.index, edit.name, edit.value))
        if edits.quarantine is not None:
            self._out.append(p.quarantine(edits.quarantine))
        self._out.append(p.CONTINUE)

    # --- the connection -------------------------------------------------------------

    def _flush(self) -> None:
        if self._out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(self._out) if len(self._out) > 1 else self._out[0])
        self._out.clear()

    def _rearm_quickack(self) -> None:
        try:
            self._sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        except OSError:
            self._quickack = False

    def _arm_idle_timer(self) -> None:
        loop = asyncio.get_running_loop()
        self._idle = loop.call_at(self._last_read + self._idle_timeout, self._check_idle)

    def _check_idle(self) -> None:
        # One timer per connection, moved on lazily: re-arming it on every read would
        # cost more than the read.
        if self._closing:
            return
        if self._pending is None and time.monotonic() - self._last_read >= self._idle_timeout:
            log.info("milter connection from %s: idle for %g s; closing it", self._peer,
                     self._idle_timeout)
            self._close()
            return
        if self._pending is not None:
            self._last_read = time.monotonic()
        self._arm_idle_timer()

    def _fail(self, why: str) -> None:
        self._connections.protocol_errors += 1
        log.warning("milter connection from %s (%s): %s; closing it", self._peer,
                    self._session.queue_id, why)
        self._out.clear()
        self._close()

    def _close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._queue.clear()
        self._flush()
        if self._transport is not None:
            self._transport.close()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()


def _rcpt_reply(answer: RcptAnswer) -> bytes:
    if answer is None:
        return p.CONTINUE
    return p.reply_code(answer.code, answer.xcode, answer.text)


class MilterServer:
    """Serves one listening socket (made by danemilter.milter.listen)."""

    def __init__(self, ref: RuntimeRef, limits: MilterLimits) -> None:
        self.ref = ref
        self.connections = Connections(limits)
        self._server: asyncio.Server | None = None

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()

        def factory() -> MilterConnection:
            return MilterConnection(self.ref, self.connections)

        if sock.family == socket.AF_UNIX:
            self._server = await loop.create_unix_server(factory, sock=sock)
        else:
            self._server = await loop.create_server(factory, sock=sock)

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for connection in list(self.connections.open):
            connection._close()
        await self._server.wait_closed()
