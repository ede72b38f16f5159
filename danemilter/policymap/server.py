"""The policy socket (asyncio): Postfix's TLS-policy socketmap and Exim's RCPT line, on
the daemon's one event loop, asking the same service as the milter.

* socketmap ``dane KEY`` (socketmap_table(5)): the delivery's TLS policy
  (:mod:`danemilter.policymap.answers`), from the shared cache when fresh, else
  evaluated (joined with the milter's own lookups) within :data:`LOOKUP_DEADLINE`;
  a lookup that does not finish by then answers ``TEMP``, never a weaker policy.
* ``rcpt DOMAIN``: the milter's verdict for a recipient of DOMAIN, under the milter's
  deadline, as one ``KEY=VALUE`` line; then the connection closes.

A peer costs what the milter's limits allow (``max_connections`` of these at once,
``idle_timeout`` of silence) and at most :data:`MAX_REQUEST` octets per request; bad
input closes that one connection with one log line; nothing a peer sends raises out
of here or holds the loop. Requests on one connection are answered in order.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

from danemilter.config.model import DaneMode, ErrorAction, MilterLimits, Rule
from danemilter.deadline import Deadline
from danemilter.errors import InputError
from danemilter.metrics import METRICS
from danemilter.milter.session import INTERNAL_ERROR, Runtime, RuntimeRef
from danemilter.names import normalize_domain
from danemilter.policy import apply_exceptions, decide_domain, wants_sts
from danemilter.policymap import answers
from danemilter.policymap.answers import NeedsStatus, RcptLine, TlsPolicy
from danemilter.policymap.netstring import (
    LineQuery,
    NetstringError,
    Request,
    RequestDecoder,
    SocketmapQuery,
    netstring,
)

log = logging.getLogger(__name__)

# Postfix's keys are domains or [host]:port next hops; Exim's line is one domain.
MAX_REQUEST = 1024
# A delivery agent waits for this answer; past it the message waits in the queue (TEMP)
# while the lookup goes on and fills the cache for the retry.
LOOKUP_DEADLINE = 3.0


class PolicyServer:
    """Serves one listening socket (made by danemilter.milter.listen.open_listener); one
    task per connection, reading requests and answering them in order."""

    def __init__(self, ref: RuntimeRef, limits: MilterLimits) -> None:
        self.ref = ref
        self.limits = limits
        self.open: set[asyncio.Task[Any]] = set()
        self.refused = 0
        self.errors = 0
        self._last_refusal_log = 0.0
        self._server: asyncio.Server | None = None

    async def start(self, sock: socket.socket) -> None:
        if sock.family == socket.AF_UNIX:
            self._server = await asyncio.start_unix_server(self._serve, sock=sock)
        else:
            self._server = await asyncio.start_server(self._serve, sock=sock)

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self.open):
            task.cancel()
        await asyncio.gather(*self.open, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self.open) >= self.limits.max_connections:
            self._refuse()
            writer.transport.abort()
            return
        self.open.add(task)
        try:
            await self._converse(reader, writer)
        except NetstringError as exc:
            self.errors += 1
            log.warning("policy socket connection: %s; closing it", exc)
        except (ConnectionError, TimeoutError) as exc:
            log.info("policy socket connection: %s", exc or type(exc).__name__)
        except Exception:
            log.exception("policy socket connection: internal error; closing it")
        finally:
            self.open.discard(task)
            writer.close()

    def _refuse(self) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._last_refusal_log >= 10:
            log.warning("refused policy socket connection(s): %d open, the limit "
                        "(limits.max_connections); %d refused so far", len(self.open),
                        self.refused)
            self._last_refusal_log = now

    async def _converse(self, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        decoder = RequestDecoder(MAX_REQUEST)
        idle = self.limits.idle_timeout
        while True:
            try:
                data = await asyncio.wait_for(reader.read(65536), idle)
            except TimeoutError:
                log.info("policy socket connection idle for %g s; closing it", idle)
                return
            requests = decoder.feed(data) if data else decoder.end()
            for request in requests:
                answer = self._answer(request)
                if not isinstance(answer, bytes):
                    answer = await answer
                writer.write(answer)
                # A peer that does not read its answers is dropped like a silent one.
                await asyncio.wait_for(writer.drain(), idle)
            if decoder.error is not None:
                raise decoder.error
            if not data or (decoder.mode == "line" and requests):
                return  # a line client gets one answer; a socketmap client closed

    def _answer(self, request: Request) -> bytes | Coroutine[Any, Any, bytes]:
        runtime = self.ref.get()
        if isinstance(request, SocketmapQuery):
            METRICS.policy_queries["socketmap"] += 1
            return self._socketmap(runtime, request)
        METRICS.policy_queries["line"] += 1
        return self._line(runtime, request)

    def _socketmap(self, runtime: Runtime, query: SocketmapQuery
                   ) -> bytes | Coroutine[Any, Any, bytes]:
        if query.name != answers.MAP_NAME:
            log.warning("policy socket: unknown socketmap name %r (key %r); the map is "
                        "socketmap:unix:PATH:%s", query.name, query.key, answers.MAP_NAME)
            return netstring(f"PERM unknown map name {query.name[:64]}; use "
                             f"{answers.MAP_NAME}".encode())
        policy = answers.for_key(runtime.settings, query.key)
        if not isinstance(policy, NeedsStatus):
            return self._reply(query.key, policy)
        service = runtime.service
        status = service.cached_status(policy.domain)
        if status is not None:
            if not wants_sts(status, policy.rule):
                return self._reply(query.key, answers.for_status(status, policy.rule))
            sts = service.cached_sts(policy.domain)
            if sts is not None:
                return self._reply(query.key, answers.for_status(status, policy.rule, sts))
        return self._socketmap_lookup(runtime, query.key, policy)

    async def _socketmap_lookup(self, runtime: Runtime, key: str, need: NeedsStatus) -> bytes:
        deadline = Deadline.after(min(LOOKUP_DEADLINE, runtime.settings.deadline))
        try:
            status = await runtime.service.status(need.domain, deadline)
            sts = (await runtime.service.sts(need.domain, deadline)
                   if wants_sts(status, need.rule) else None)
        except Exception:
            log.exception("policy socket: looking up %s failed", need.domain)
            return self._reply(key, TlsPolicy.TEMP, "internal error")
        return self._reply(key, answers.for_status(status, need.rule, sts), status.reason)

    @staticmethod
    def _reply(key: str, policy: answers.TlsAnswer, why: str = "") -> bytes:
        log.debug("policy socket: socketmap %s -> %s", key, policy)
        return netstring(answers.socketmap_reply(policy, " ".join(why.split())[:200]))

    def _line(self, runtime: Runtime, query: LineQuery) -> bytes | Coroutine[Any, Any, bytes]:
        if query.verb != "rcpt":
            log.warning("policy socket: unknown request %r", query.verb[:32])
            return RcptLine("error", "unknown", TlsPolicy.TEMP, 451, "4.3.0",
                            f"unknown policy request {query.verb[:32]!r}").encode()
        settings = runtime.settings
        try:
            # Exim's $domain, after its own rewriting; an address is taken at its last "@".
            domain = normalize_domain(query.argument.rpartition("@")[2], underscore=True)
        except InputError as exc:
            log.info("policy socket: not checking %r: %s", query.argument[:80], exc)
            return RcptLine("accept", "skipped", TlsPolicy.NONE).encode()
        tls = answers.for_key(settings, domain)
        rule = settings.policy.rule_for(domain)
        if settings.skips(domain) or rule.dane is DaneMode.OFF:
            return answers.rcpt_line(settings, None, TlsPolicy.NONE).encode()
        return self._rcpt(runtime, domain, rule, tls)

    async def _rcpt(self, runtime: Runtime, domain: str, rule: Rule,
                    tls: TlsPolicy | NeedsStatus) -> bytes:
        settings = runtime.settings
        # The same deadline and decision path as the milter's RCPT (Session.rcpt).
        deadline = Deadline.after(settings.deadline)
        service = runtime.service
        try:
            decision, status, sts = await decide_domain(service, domain, rule, settings,
                                                        deadline)
            delivery = (answers.for_status(status, rule, sts) if isinstance(tls, NeedsStatus)
                        else tls)
            decision = apply_exceptions(decision, settings.policy, datetime.now(UTC).date(),
                                        "policy socket")
        except Exception:
            log.exception("policy socket: internal error deciding for %s", domain)
            if settings.on_error is ErrorAction.ACCEPT:
                return answers.rcpt_line(settings, None, TlsPolicy.TEMP).encode()
            reply = INTERNAL_ERROR
            return RcptLine("defer", "error", TlsPolicy.TEMP, reply.code, reply.xcode,
                            reply.text).encode()
        line = answers.rcpt_line(settings, decision, delivery)
        log.info("policy socket: rcpt domain=%s status=%s action=%s tls=%s (%s)", domain,
                 decision.status, line.action, line.tls, decision.reason)
        return line.encode()
