"""``danemilter run`` (the milter daemon) and ``danemilter check-config``."""

from __future__ import annotations

import argparse
import asyncio
import grp
import logging
import os
import signal
import socket
import sys
import threading
from types import FrameType
from typing import Any

from danemilter.config import (
    DEFAULT_PATH,
    SYSTEMD_LISTEN,
    ConfigErrors,
    ResolverCheckMode,
    Settings,
    Transport,
    chosen_path,
    load,
)
from danemilter.errors import ConfigError, DanemilterError, ListenError, ResolverCheckFailed
from danemilter.logwriter import BatchingWriter
from danemilter.metrics import METRICS, MetricsServer
from danemilter.milter.listen import (
    ListenSpec,
    SystemdSockets,
    claim_unix_path,
    open_listener,
    refuse_systemd_for_libmilter,
    socket_gid,
    unix_socket_owner,
)
from danemilter.milter.server import MilterServer
from danemilter.milter.session import Runtime, RuntimeRef
from danemilter.policymap.server import PolicyServer
from danemilter.resolver_check import ResolverCheck, ResolverMonitor, check_resolver
from danemilter.sdnotify import Notifier, watchdog_interval
from danemilter.service import EventLoopThread, LoopThread, Service

log = logging.getLogger(__name__)

# libmilter's I/O timeout towards the MTA; Postfix's own milter timeouts are shorter.
_MTA_TIMEOUT = 600
# A replaced engine is closed once every lookup already running on it has ended: each
# ends within its deadline plus the engine's own grace (engine._GRACE); this is more.
_RETIRE_GRACE = 5.0
_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
# A libmilter reload waits this long for its re-read policy and resolver check.
_RELOAD_TIMEOUT = 60.0


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


def _run(args: argparse.Namespace) -> int:
    path = chosen_path(args.config)
    settings = load(path)
    _setup_logging(settings.log_level)
    first_check = _startup_resolver_check(settings)
    # Signals wait until their handlers are in place: a SIGTERM that arrives as soon
    # as the socket exists must stop the daemon cleanly, not kill it.
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    # Before anything starts: a socket another daemon serves, or one that cannot be
    # bound, is a one-line error (exit 2), never a takeover.
    policy_sock = None
    if settings.transport is Transport.ASYNCIO:
        passed = None
        if SYSTEMD_LISTEN in (settings.listen, settings.policy_listen()):
            passed = SystemdSockets.take("listen" if settings.listen == SYSTEMD_LISTEN
                                         else "policy_socket")
        sock = open_listener(settings.listen, settings.socket_mode, settings.socket_group,
                             systemd=passed)
        policy_sock = _open_policy_listener(settings, sock, passed)
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
        # After the claim: a socket that cannot be had is the one line on stderr.
        _no_policy_socket_under_libmilter(settings)
    # Off unless configured; bound before READY=1, a bind failure is a one-line error.
    metrics = MetricsServer(settings.metrics) if settings.metrics.listen else None
    # The loop and libmilter's threads only append records; one thread writes them.
    listener = BatchingWriter.install("danemilter: %(levelname)s %(message)s")
    try:
        if sock is not None:
            return asyncio.run(_Daemon(path, settings, first_check).serve(sock, policy_sock))
        return _serve_libmilter(path, settings, first_check)
    finally:
        if metrics is not None:
            metrics.close()
        listener.stop()  # writes what is still queued


def _open_policy_listener(settings: Settings, milter: socket.socket,
                          passed: SystemdSockets | None) -> socket.socket | None:
    listen = settings.policy_listen()
    if listen is None:
        return None
    mode = settings.policy_socket_mode
    group = settings.policy_socket_group
    try:
        if listen == SYSTEMD_LISTEN:
            assert passed is not None
            # Unset beside listen: systemd: danemilter-policy.socket's, if it is enabled.
            found = passed.policy(required=settings.policy_socket == SYSTEMD_LISTEN)
            if found is None:
                log.info("no policy socket: systemd passed none (danemilter-policy.socket)")
            return found
        return open_listener(listen, settings.socket_mode if mode is None else mode,
                             settings.socket_group if group is None else group)
    except ListenError as exc:
        milter.close()
        raise ListenError(f"policy_socket: {exc}") from None


def _no_policy_socket_under_libmilter(settings: Settings) -> None:
    # The policy socket shares the service's loop; libmilter's is a loop thread that a
    # reload may replace, so only the asyncio transport serves it.
    if settings.policy_socket is not None and settings.policy_listen() is not None:
        raise ListenError("policy_socket needs transport: asyncio (or policy_socket: off)")
    if settings.policy_listen() is not None:
        log.info("no policy socket under transport: libmilter (it needs asyncio)")


def _startup_resolver_check(settings: Settings) -> ResolverCheck | None:
    """The self-check before anything listens: under ``refuse`` a failure is the one-line
    error (exit 2) that stops the start; under ``degrade`` it is logged and run on."""
    if settings.resolver_check.mode is ResolverCheckMode.OFF:
        return None
    result = asyncio.run(check_resolver(settings.resolver, settings.resolver_check))
    if result.passed:
        log.info("%s", result.line())
    elif settings.resolver_check.mode is ResolverCheckMode.REFUSE:
        raise ResolverCheckFailed(f"{result.line()}; not starting (resolver_check: refuse; "
                                  "'degrade' runs without DANE, 'off' skips the check)")
    return result


def _apply_check(service: object, result: ResolverCheck | None,
                 was: str | None = None) -> None:
    """The check's outcome on the service: a failed check degrades it (every status
    ``resolver-not-validating``); a passed one, or none (check off), ends that. ``was``:
    whether the service before (a reload may build a new one) was degraded."""
    assert isinstance(service, Service)
    if result is not None:
        METRICS.resolver_checked(result.state)
    if result is None or result.passed:
        service.degraded = None
        if was is not None:
            log.warning("%s; DANE verdicts again",
                        result.line() if result else "resolver check off")
        return
    service.degraded = result.line()
    log.error("%s; no domain can be dane until it validates (every verdict says "
              "resolver-not-validating)", result.line())


def _status_line(listen: str, check: ResolverCheck | None) -> str:
    """systemd's STATUS=: where the milter listens, and the last resolver check."""
    resolver = check.line() if check is not None else "resolver check off"
    return f"listening on {listen}; {resolver}"


def _report_check(ref: RuntimeRef, notifier: Notifier, result: ResolverCheck) -> None:
    """A periodic check's outcome, under either transport: applied to the current
    service (degraded or not), and in systemd's status line."""
    service = ref.get().service
    _apply_check(service, result, getattr(service, "degraded", None))
    notifier.status(_status_line(ref.get().settings.listen, result))


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


async def _prepare_reload(path: str | None, current: Settings
                          ) -> tuple[Settings, ResolverCheck | None] | None:
    """A reload up to the swap, for both transports: the re-read policy and its resolver
    check, or None (logged) when the running policy stays (an invalid file, or a resolver
    that fails its check under ``resolver_check: refuse``). Says what a reload cannot
    change."""
    settings = _load_for_reload(path)
    if settings is None:
        return None
    check = None
    if settings.resolver_check.mode is not ResolverCheckMode.OFF:
        check = await check_resolver(settings.resolver, settings.resolver_check)
        if not check.passed and settings.resolver_check.mode is ResolverCheckMode.REFUSE:
            log.error("reload failed, keeping the current policy: %s (resolver_check: "
                      "refuse)", check.line())
            return None
    if (settings.listen, settings.transport, settings.policy_listen()) != \
            (current.listen, current.transport, current.policy_listen()):
        log.warning("listen, policy_socket or transport changed: takes effect after "
                    "a restart")
    if settings.limits != current.limits and current.transport is Transport.ASYNCIO:
        log.warning("limits changed: they apply to connections after a restart")
    return settings, check


def _service_settings(settings: Settings) -> tuple[object, ...]:
    """What a Service is built from: a reload that changes any of it needs a new one."""
    return settings.resolver, settings.cache, settings.mta_sts


def _log_started(settings: Settings) -> None:
    log.info("listening on %s (transport %s, config: %s, resolver %s:%d)", settings.listen,
             settings.transport, settings.source, settings.resolver.address,
             settings.resolver.port)


class _Daemon:
    """``transport: asyncio``: the milter, the service and the reloads on one loop."""

    def __init__(self, path: str | None, settings: Settings,
                 first_check: ResolverCheck | None = None) -> None:
        self.path = path
        self.settings = settings
        self.longest_deadline = settings.deadline
        self.retiring: set[asyncio.Task[None]] = set()
        self.notifier = Notifier()
        self.first_check = first_check
        self.reloading = asyncio.Lock()
        self.reloads: set[asyncio.Task[None]] = set()

    async def serve(self, sock: socket.socket, policy_sock: socket.socket | None = None
                    ) -> int:
        loop = asyncio.get_running_loop()
        service = Service(self.settings.resolver, self.settings.cache, self.settings.mta_sts)
        ref = RuntimeRef(Runtime(self.settings, service))
        self.ref = ref
        METRICS.service = lambda: ref.get().service
        _apply_check(service, self.first_check)
        self.monitor = ResolverMonitor(self.settings.resolver, self.settings.resolver_check,
                                       self._checked, self.first_check)
        self.monitor.start()
        server = MilterServer(ref, self.settings.limits)
        METRICS.connections = server.connections
        await server.start(sock)
        policy = PolicyServer(ref, self.settings.limits)
        if policy_sock is not None:
            await policy.start(policy_sock)
            log.info("policy socket listening on %s", self.settings.policy_listen())
        _log_started(self.settings)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup, ref)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        # Listening, and the resolver checked: systemd may start Postfix now.
        self.notifier.ready(self._status_line())
        watchdog = self._start_watchdog()
        try:
            await stop.wait()
        finally:
            self.notifier.stopping()
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            for task in [*self.reloads, *([watchdog] if watchdog else [])]:
                task.cancel()
            await self.monitor.aclose()
            await server.close()
            await policy.close()
            for task in self.retiring:
                task.cancel()
            await asyncio.gather(*self.retiring, return_exceptions=True)
            await ref.get().service.aclose()  # type: ignore[attr-defined]
            self.notifier.close()
        log.info("stopped")
        return 0

    def _status_line(self) -> str:
        return _status_line(self.settings.listen, self.monitor.last)

    def _checked(self, result: ResolverCheck) -> None:
        _report_check(self.ref, self.notifier, result)

    def _start_watchdog(self) -> asyncio.Task[None] | None:
        interval = watchdog_interval(os.environ)
        if interval is None or not self.notifier.enabled:
            return None

        async def ping() -> None:
            # From the loop itself: a loop that stalls stops the pings, and systemd
            # restarts the daemon (WatchdogSec in danemilter.service).
            while True:
                self.notifier.watchdog()
                await asyncio.sleep(interval)

        return asyncio.ensure_future(ping())

    def _on_sighup(self, ref: RuntimeRef) -> None:
        task = asyncio.ensure_future(self._reload(ref))
        self.reloads.add(task)
        task.add_done_callback(self.reloads.discard)

    async def _reload(self, ref: RuntimeRef) -> None:
        async with self.reloading:  # one reload at a time, in the order asked
            self.notifier.reloading()
            try:
                await self._reload_now(ref)
            except Exception:  # a reload must never end the daemon
                log.exception("reload failed, keeping the current policy")
            finally:
                self.notifier.ready(self._status_line())

    async def _reload_now(self, ref: RuntimeRef) -> None:
        current = ref.get()
        prepared = await _prepare_reload(self.path, current.settings)
        if prepared is None:
            return
        settings, check = prepared
        was = getattr(current.service, "degraded", None)
        service = current.service
        if _service_settings(settings) != _service_settings(current.settings):
            old = current.service
            service = Service(settings.resolver, settings.cache, settings.mta_sts)
            assert isinstance(old, Service)
            old.retire()
            METRICS.retire(old)
            task = asyncio.ensure_future(self._retire(old))
            self.retiring.add(task)
            task.add_done_callback(self.retiring.discard)
        self.longest_deadline = max(self.longest_deadline, settings.deadline)
        ref.set(Runtime(settings, service))
        self.settings = settings
        _setup_logging(settings.log_level)
        self.monitor.replace(settings.resolver, settings.resolver_check, check)
        _apply_check(service, check, was)
        log.info("reloaded %s", settings.source)

    async def _retire(self, old: Service) -> None:
        # Lookups already running on the old service end within their deadline.
        await asyncio.sleep(self.longest_deadline + _RETIRE_GRACE)
        await old.aclose()
        log.info("closed the resolver and cache replaced by a reload")


def _serve_libmilter(path: str | None, settings: Settings,
                     first_check: ResolverCheck | None = None) -> int:
    """``transport: libmilter``: libmilter's threads, the service on a loop thread, and
    the resolver monitor on a loop of its own (it outlives the engines reloads replace)."""
    import Milter  # noqa: PLC0415 - only this transport needs the C library

    from danemilter.milter.libmilter import DaneMilter  # noqa: PLC0415

    engine = LoopThread(settings.resolver, settings.cache, settings.mta_sts)
    _apply_check(engine.service, first_check)
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
    notifier = Notifier()
    monitor = _MonitorThread(settings, first_check, ref, notifier)
    if _wait_until_listening(settings, stop):
        _set_socket_group(settings)
        _log_started(settings)
        notifier.ready(_status_line(settings.listen, first_check))
    # The watchdog pings come from this thread, which also serves the reloads.
    ping_every = watchdog_interval(os.environ) if notifier.enabled else None

    retiring: list[tuple[threading.Timer, LoopThread]] = []
    longest_deadline = settings.deadline  # connections may still run under any earlier one
    while True:
        while not stop.wait(ping_every):
            notifier.watchdog()
        if reload_requested.is_set() and server.is_alive():
            reload_requested.clear()
            stop.clear()
            notifier.reloading()
            replacement = _reload_libmilter(path, ref, engine, monitor)
            notifier.ready(f"listening on {ref.get().settings.listen}")
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

    notifier.stopping()
    monitor.close()
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


def _reload_libmilter(path: str | None, ref: RuntimeRef, engine: LoopThread,
                      monitor: _MonitorThread) -> LoopThread:
    """Swap in the re-read policy as the asyncio transport does (the same preparation,
    resolver check included, on the engine's loop); an invalid file keeps the running one."""
    current = ref.get().settings
    try:
        prepared = engine.call(_prepare_reload(path, current), timeout=_RELOAD_TIMEOUT)
    except Exception:  # a reload must never end the daemon
        log.exception("reload failed, keeping the current policy")
        return engine
    if prepared is None:
        return engine
    settings, check = prepared
    was = engine.service.degraded
    if _service_settings(settings) != _service_settings(current):
        engine = LoopThread(settings.resolver, settings.cache, settings.mta_sts)
    ref.set(Runtime(settings, engine.service))
    _setup_logging(settings.log_level)
    _apply_check(engine.service, check, was)
    monitor.replace(settings, check)
    log.info("reloaded %s", settings.source)
    return engine


class _MonitorThread(EventLoopThread):
    """The asyncio transport's periodic resolver check, for libmilter: a ResolverMonitor
    on a loop thread of its own, applying each outcome to whichever service is current."""

    def __init__(self, settings: Settings, first_check: ResolverCheck | None,
                 ref: RuntimeRef, notifier: Notifier) -> None:
        super().__init__("danemilter-resolver-check")

        async def start() -> ResolverMonitor:
            monitor = ResolverMonitor(settings.resolver, settings.resolver_check,
                                      lambda result: _report_check(ref, notifier, result),
                                      first_check)
            monitor.start()
            return monitor

        self.monitor = self.call(start(), timeout=_RELOAD_TIMEOUT)

    def replace(self, settings: Settings, check: ResolverCheck | None) -> None:
        self.loop.call_soon_threadsafe(self.monitor.replace, settings.resolver,
                                       settings.resolver_check, check)

    async def _aclose(self) -> None:
        await self.monitor.aclose()
