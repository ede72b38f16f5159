"""``danemilter run`` (the milter daemon) and ``danemilter check-config``."""

from __future__ import annotations

import argparse
import asyncio
import grp
import logging
import os
import queue
import signal
import socket
import sys
import threading
from logging.handlers import QueueHandler, QueueListener
from types import FrameType
from typing import Any

from danemilter.config import (
    DEFAULT_PATH,
    ConfigErrors,
    Settings,
    Transport,
    chosen_path,
    load,
)
from danemilter.errors import ConfigError, DanemilterError
from danemilter.milter.listen import (
    ListenSpec,
    claim_unix_path,
    open_listener,
    refuse_systemd_for_libmilter,
    socket_gid,
    unix_socket_owner,
)
from danemilter.milter.server import MilterServer
from danemilter.milter.session import Runtime, RuntimeRef
from danemilter.service import LoopThread, Service

log = logging.getLogger(__name__)

# libmilter's I/O timeout towards the MTA; Postfix's own milter timeouts are shorter.
_MTA_TIMEOUT = 600
# A replaced engine is closed once every lookup already running on it has ended: each
# ends within its deadline plus the engine's own grace (engine._GRACE); this is more.
_RETIRE_GRACE = 5.0
_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def register(commands: argparse._SubParsersAction[Any]) -> None:
    run = commands.add_parser("run", help="run the milter daemon")
    run.add_argument("--config", metavar="FILE",
                     help=f"policy file (default: {DEFAULT_PATH} if it exists, "
                     "else built-in defaults)")
    run.set_defaults(handler=_run)
    check = commands.add_parser("check-config", help="validate a policy file")
    check.add_argument("file", nargs="?", default=str(DEFAULT_PATH), metavar="FILE")
    check.set_defaults(handler=_check_config)


def _check_config(args: argparse.Namespace) -> int:
    try:
        settings = load(args.file)
    except ConfigErrors as exc:
        for error in exc.errors:
            print(f"danemilter: {error}", file=sys.stderr)
        return 1
    rules = len(settings.policy.domains)
    print(f"{args.file}: OK (listen {settings.listen}, default dane={settings.policy.default.dane}"
          f" on_fail={settings.policy.default.on_fail}, {rules} domain rule(s))")
    return 0


def _setup_logging(level: str) -> None:
    logging.getLogger().setLevel(level.upper())


def _log_through_a_queue() -> QueueListener:
    """Milter threads only enqueue log records; one thread writes them.

    With a handler writing to stderr directly, libmilter's callback threads queued on
    the handler's lock behind whichever one was writing its line: measured (py-spy,
    bench/throughput.py) as most of danemilter's cost per message at log_level info.
    """
    root = logging.getLogger()
    writers = [h for h in root.handlers if not isinstance(h, QueueHandler)]
    for handler in writers:
        handler.setFormatter(logging.Formatter("danemilter: %(levelname)s %(message)s"))
        root.removeHandler(handler)
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    root.addHandler(QueueHandler(records))
    listener = QueueListener(records, *writers, respect_handler_level=True)
    listener.start()
    return listener


def _run(args: argparse.Namespace) -> int:
    path = chosen_path(args.config)
    settings = load(path)
    _setup_logging(settings.log_level)
    # Signals wait until their handlers are in place: a SIGTERM that arrives as soon
    # as the socket exists must stop the daemon cleanly, not kill it.
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    # Before anything starts: a socket another daemon serves, or one that cannot be
    # bound, is a one-line error (exit 2), never a takeover.
    if settings.transport is Transport.ASYNCIO:
        sock = open_listener(settings.listen, settings.socket_mode, settings.socket_group)
    else:
        sock = None
        listen = ListenSpec.parse(settings.listen)
        if listen.kind == "systemd":
            refuse_systemd_for_libmilter()
        # libmilter sets no group itself: one that does not exist is refused here, as
        # the asyncio transport refuses it, not logged once the socket is served.
        socket_gid(settings.socket_group)
        if listen.path is not None:
            claim_unix_path(listen.path)
    listener = _log_through_a_queue()
    try:
        if sock is not None:
            return asyncio.run(_Daemon(path, settings).serve(sock))
        return _serve_libmilter(path, settings)
    finally:
        listener.stop()  # writes what is still queued


def _load_for_reload(path: str | None) -> Settings | None:
    """The re-read policy, or None (logged) when it cannot be used: the running one stays."""
    try:
        return load(path)
    except ConfigError as exc:
        log.error("reload failed, keeping the current policy: %s", exc)
    except Exception as exc:  # a hostile file (deep nesting...) must not end the daemon
        log.error("reload failed, keeping the current policy: %s: %s", path,
                  type(exc).__name__)
    return None


def _log_started(settings: Settings) -> None:
    log.info("listening on %s (transport %s, config: %s, resolver %s:%d)", settings.listen,
             settings.transport, settings.source, settings.resolver.address,
             settings.resolver.port)


class _Daemon:
    """``transport: asyncio``: the milter, the service and the reloads on one loop."""

    def __init__(self, path: str | None, settings: Settings) -> None:
        self.path = path
        self.settings = settings
        self.longest_deadline = settings.deadline
        self.retiring: set[asyncio.Task[None]] = set()

    async def serve(self, sock: socket.socket) -> int:
        loop = asyncio.get_running_loop()
        service = Service(self.settings.resolver, self.settings.cache)
        ref = RuntimeRef(Runtime(self.settings, service))
        server = MilterServer(ref, self.settings.limits)
        await server.start(sock)
        _log_started(self.settings)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload, ref)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        try:
            await stop.wait()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            await server.close()
            for task in self.retiring:
                task.cancel()
            await asyncio.gather(*self.retiring, return_exceptions=True)
            await ref.get().service.aclose()  # type: ignore[attr-defined]
        log.info("stopped")
        return 0

    def _reload(self, ref: RuntimeRef) -> None:
        settings = _load_for_reload(self.path)
        if settings is None:
            return
        current = ref.get()
        if settings.listen != current.settings.listen or \
                settings.transport != current.settings.transport:
            log.warning("listen or transport changed: takes effect after a restart")
        if settings.limits != current.settings.limits:
            log.warning("limits changed: they apply to connections after a restart")
        service = current.service
        if settings.resolver != current.settings.resolver or \
                settings.cache != current.settings.cache:
            old = current.service
            service = Service(settings.resolver, settings.cache)
            assert isinstance(old, Service)
            old.retire()
            task = asyncio.ensure_future(self._retire(old))
            self.retiring.add(task)
            task.add_done_callback(self.retiring.discard)
        self.longest_deadline = max(self.longest_deadline, settings.deadline)
        ref.set(Runtime(settings, service))
        self.settings = settings
        _setup_logging(settings.log_level)
        log.info("reloaded %s", settings.source)

    async def _retire(self, old: Service) -> None:
        # Lookups already running on the old service end within their deadline.
        await asyncio.sleep(self.longest_deadline + _RETIRE_GRACE)
        await old.aclose()
        log.info("closed the resolver and cache replaced by a reload")


def _serve_libmilter(path: str | None, settings: Settings) -> int:
    """``transport: libmilter``: libmilter's threads, the service on a loop thread."""
    import Milter  # noqa: PLC0415 - only this transport needs the C library

    from danemilter.milter.libmilter import DaneMilter  # noqa: PLC0415

    engine = LoopThread(settings.resolver, settings.cache)
    ref = RuntimeRef(Runtime(settings, engine.service))
    DaneMilter.runtime_ref = ref
    DaneMilter.runner = engine.call
    Milter.factory = DaneMilter
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.QUARANTINE)
    if settings.socket_mode is not None:
        # libmilter creates the socket itself: the umask is the race-free way to its mode.
        os.umask(0o777 & ~settings.socket_mode)

    stop = threading.Event()
    reload_requested = threading.Event()
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            Milter.runmilter("danemilter", settings.listen, _MTA_TIMEOUT)
        except BaseException as exc:  # the daemon must report why it stopped, whatever it was
            failure.append(exc)
        finally:
            stop.set()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def on_hup(signum: int, frame: FrameType | None) -> None:
        reload_requested.set()
        stop.set()  # wake the main loop; it clears the flag when it is only a reload

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, on_hup)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    # libmilter blocks signals in the thread that runs it and takes SIGHUP/SIGTERM
    # for itself; run it off the main thread so that Python's handlers see them.
    server = threading.Thread(target=serve, name="libmilter", daemon=True)
    server.start()
    if _wait_until_listening(settings, stop):
        _set_socket_group(settings)
        _log_started(settings)

    retiring: list[tuple[threading.Timer, LoopThread]] = []
    longest_deadline = settings.deadline  # connections may still run under any earlier one
    while True:
        stop.wait()
        if reload_requested.is_set() and server.is_alive():
            reload_requested.clear()
            stop.clear()
            replacement = _reload_libmilter(path, ref, engine)
            longest_deadline = max(longest_deadline, ref.get().settings.deadline)
            # Engines already closed by their timers need not be kept for the exit.
            retiring = [(timer, old) for timer, old in retiring if timer.is_alive()]
            if replacement is not engine:
                engine.service.retire()
                timer = threading.Timer(longest_deadline + _RETIRE_GRACE, _retire, (engine,))
                timer.daemon = True
                timer.start()
                retiring.append((timer, engine))
                engine = replacement
                DaneMilter.runner = engine.call
            continue
        break

    if server.is_alive():
        Milter.stop()
        server.join(timeout=10)
    for timer, old in retiring:
        timer.cancel()
        old.close()
    engine.close()
    if failure:
        raise DanemilterError(f"milter stopped: {failure[0]}")
    log.info("stopped")
    return 0


def _wait_until_listening(settings: Settings, stop: threading.Event) -> bool:
    """libmilter binds in its own thread and says nothing: wait until it accepts."""
    listen = ListenSpec.parse(settings.listen)
    while not stop.wait(0.02):
        if listen.path is not None:
            if unix_socket_owner(listen.path) is not None:
                return True
        else:
            host = "127.0.0.1" if listen.host in ("0.0.0.0", None) else listen.host
            host = "::1" if host == "::" else host
            try:
                socket.create_connection((host, listen.port), timeout=0.5).close()
                return True
            except OSError:
                continue
    return False


def _set_socket_group(settings: Settings) -> None:
    listen = ListenSpec.parse(settings.listen)
    if listen.path is None or settings.socket_group is None:
        return
    try:
        gid = grp.getgrnam(settings.socket_group).gr_gid
        os.chown(listen.path, -1, gid)
        log.info("socket %s: group %s", listen.path, settings.socket_group)
    except (KeyError, OSError) as exc:
        log.error("cannot set group of %s: %s", listen.path, exc)


def _retire(engine: LoopThread) -> None:
    engine.close()
    log.info("closed the resolver and cache replaced by a reload")


def _reload_libmilter(path: str | None, ref: RuntimeRef, engine: LoopThread) -> LoopThread:
    """Swap in the re-read policy; an invalid file keeps the running one."""
    current = ref.get().settings
    settings = _load_for_reload(path)
    if settings is None:
        return engine
    if settings.listen != current.listen or settings.transport != current.transport:
        log.warning("listen or transport changed: takes effect after a restart")
    if settings.resolver != current.resolver or settings.cache != current.cache:
        engine = LoopThread(settings.resolver, settings.cache)
    ref.set(Runtime(settings, engine.service))
    _setup_logging(settings.log_level)
    log.info("reloaded %s", settings.source)
    return engine
