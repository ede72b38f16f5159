"""``danemilter run`` (the milter daemon) and ``danemilter check-config``."""

from __future__ import annotations

import argparse
import grp
import logging
import os
import queue
import signal
import sys
import threading
from logging.handlers import QueueHandler, QueueListener
from pathlib import Path
from types import FrameType
from typing import Any

import Milter

from danemilter.config import DEFAULT_PATH, ConfigErrors, Settings, chosen_path, load
from danemilter.engine import Engine
from danemilter.errors import ConfigError, DanemilterError
from danemilter.milter import DaneMilter, Runtime, RuntimeRef

log = logging.getLogger(__name__)

# libmilter's I/O timeout towards the MTA; Postfix's own milter timeouts are shorter.
_MTA_TIMEOUT = 600
# A replaced engine is closed once every lookup already running on it has ended: each
# ends within its deadline plus the engine's own grace (engine._GRACE); this is more.
_RETIRE_GRACE = 5.0


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


def _socket_path(listen: str) -> Path | None:
    scheme, _, rest = listen.partition(":")
    return Path(rest) if scheme in ("unix", "local") else None


def _prepare_socket(settings: Settings) -> None:
    path = _socket_path(settings.listen)
    if path is None:
        return
    if not path.parent.is_dir():
        raise DanemilterError(f"socket directory {path.parent} does not exist")
    if settings.socket_mode is not None:
        # libmilter creates the socket itself: the umask is the race-free way to its mode.
        os.umask(0o777 & ~settings.socket_mode)


def _chgrp_socket_when_created(settings: Settings, stop: threading.Event) -> None:
    path = _socket_path(settings.listen)
    if path is None or settings.socket_group is None:
        return
    try:
        gid = grp.getgrnam(settings.socket_group).gr_gid
    except KeyError:
        raise DanemilterError(f"socket_group {settings.socket_group!r} does not exist") from None

    def watch() -> None:
        # libmilter offers no hook after bind(); wait for the socket to appear.
        while not stop.wait(0.05):
            try:
                os.chown(path, -1, gid)
                log.info("socket %s: group %s", path, settings.socket_group)
                return
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.error("cannot set group of %s: %s", path, exc)
                return

    threading.Thread(target=watch, name="socket-group", daemon=True).start()


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
    listener = _log_through_a_queue()
    try:
        return _serve(path, settings)
    finally:
        listener.stop()  # writes what is still queued


def _serve(path: str | None, settings: Settings) -> int:
    _prepare_socket(settings)
    engine = Engine(settings.resolver, settings.cache)
    ref = RuntimeRef(Runtime(settings, engine.domain_status, engine.domain_probe))
    DaneMilter.runtime_ref = ref
    Milter.factory = DaneMilter
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.QUARANTINE)

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
    # libmilter blocks signals in the thread that runs it and takes SIGHUP/SIGTERM
    # for itself; run it off the main thread so that Python's handlers see them.
    server = threading.Thread(target=serve, name="libmilter", daemon=True)
    _chgrp_socket_when_created(settings, stop)
    server.start()
    log.info("listening on %s (config: %s, resolver %s:%d)", settings.listen,
             settings.source, settings.resolver.address, settings.resolver.port)

    retiring: list[tuple[threading.Timer, Engine]] = []
    longest_deadline = settings.deadline  # connections may still run under any earlier one
    while True:
        stop.wait()
        if reload_requested.is_set() and server.is_alive():
            reload_requested.clear()
            stop.clear()
            replacement = _reload(path, ref, engine)
            longest_deadline = max(longest_deadline, ref.get().settings.deadline)
            # Engines already closed by their timers need not be kept for the exit.
            retiring = [(timer, old) for timer, old in retiring if timer.is_alive()]
            if replacement is not engine:
                engine.retire()
                timer = threading.Timer(longest_deadline + _RETIRE_GRACE, _retire, (engine,))
                timer.daemon = True
                timer.start()
                retiring.append((timer, engine))
                engine = replacement
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


def _retire(engine: Engine) -> None:
    engine.close()
    log.info("closed the resolver and cache replaced by a reload")


def _reload(path: str | None, ref: RuntimeRef, engine: Engine) -> Engine:
    """Swap in the re-read policy; an invalid file keeps the running one."""
    current = ref.get().settings
    try:
        settings = load(path)
    except ConfigError as exc:
        log.error("reload failed, keeping the current policy: %s", exc)
        return engine
    if settings.listen != current.listen:
        log.warning("listen changed to %s: takes effect after a restart", settings.listen)
    if settings.resolver != current.resolver or settings.cache != current.cache:
        engine = Engine(settings.resolver, settings.cache)
    ref.set(Runtime(settings, engine.domain_status, engine.domain_probe))
    _setup_logging(settings.log_level)
    log.info("reloaded %s", settings.source)
    return engine
