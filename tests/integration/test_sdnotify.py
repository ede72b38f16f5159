"""systemd's notify protocol, against a NOTIFY_SOCKET of the test's own (no systemd runs
here): READY=1 only once the milter accepts and the resolver was checked, WATCHDOG=1 at
half WATCHDOG_USEC from the event loop, RELOADING=1 (MONOTONIC_USEC) then READY=1 around
SIGHUP, STOPPING=1 on SIGTERM; socket activation (LISTEN_FDS) with it; and the units as
systemd-analyze reads them."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from danemilter.sdnotify import Notifier, socket_address, watchdog_interval
from tests.support.dnsbed import DnssecTestBed
from tests.support.ports import unix_socket_accepts
from tests.support.postfix import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]


class NotifyListener:
    """The supervisor's end: a datagram socket, by path or in the abstract namespace."""

    def __init__(self, abstract: bool) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dm-notify-"))
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"danemilter-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.env = "@" + name
        else:
            path = self.dir / "notify"
            self.sock.bind(str(path))
            self.env = str(path)

    def next(self, timeout: float = 15.0) -> tuple[dict[str, str], float]:
        """One message as a dict, and when it arrived (time.monotonic)."""
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096)
        fields = dict(line.split("=", 1) for line in data.decode().splitlines())
        return fields, time.monotonic()

    def until(self, key: str, timeout: float = 15.0) -> tuple[dict[str, str], list[str]]:
        """Messages up to the first with ``key``; also the keys seen before it."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            fields, _ = self.next(max(deadline - time.monotonic(), 0.01))
            if key in fields:
                return fields, seen
            seen.extend(fields)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest) -> Iterator[NotifyListener]:
    notify = NotifyListener(request.param == "abstract")
    yield notify
    notify.close()


def _config(directory: Path, bed: DnssecTestBed, listen: str, check: str = "refuse",
            transport: str = "asyncio") -> Path:
    config = directory / "danemilter.yaml"
    config.write_text(
        f"listen: {listen}\ntransport: {transport}\nsocket_mode: \"0666\"\nlog_level: debug\n"
        f"resolver: {{address: 127.0.0.1, port: {bed.resolver_port}, timeout: 1}}\n"
        f"resolver_check: {{mode: {check}, signed_name: test.}}\n"
        "cache: {backend: memory}\n")
    return config


def _start(config: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "danemilter", "run", "--config",
                                 str(config)], env={**os.environ, **env}, stdout=out,
                                stderr=out)


@pytest.mark.parametrize("transport", ["asyncio", "libmilter"])
def test_ready_watchdog_reload_and_stop(tmp_path: Path, dns_bed: DnssecTestBed,
                                        listener: NotifyListener, transport: str) -> None:
    tmp_path.chmod(0o755)
    sock = tmp_path / "milter.sock"
    config = _config(tmp_path, dns_bed, f"unix:{sock}", transport=transport)
    proc = _start(config, {"NOTIFY_SOCKET": listener.env, "WATCHDOG_USEC": "400000"},
                  tmp_path / "log")
    try:
        ready, before = listener.until("READY")
        # READY=1 means "Postfix may connect now": the socket already accepts, and the
        # resolver was checked (its verdict is the STATUS).
        assert unix_socket_accepts(sock)
        assert ready["READY"] == "1" and "WATCHDOG" not in before
        assert f"resolver 127.0.0.1:{dns_bed.resolver_port}: validating" in ready["STATUS"]
        pings = []
        while len(pings) < 4:
            fields, at = listener.next()
            if "WATCHDOG" in fields:
                pings.append(at)
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert all(0.1 < gap < 0.4 for gap in gaps), gaps  # half of 0.4 s each

        asked = time.monotonic_ns() // 1000
        proc.send_signal(signal.SIGHUP)
        reloading, _ = listener.until("RELOADING")
        assert reloading["RELOADING"] == "1"
        # The same clock as ours (CLOCK_MONOTONIC), taken after the signal.
        assert asked <= int(reloading["MONOTONIC_USEC"]) <= time.monotonic_ns() // 1000
        after, _ = listener.until("READY")
        assert after["READY"] == "1"
        # Logged by the log thread, so possibly a moment after READY=1.
        wait_for(lambda: "reloaded" in (tmp_path / "log").read_text(), 10, "the reload line")

        proc.send_signal(signal.SIGTERM)
        stopping, _ = listener.until("STOPPING")
        assert stopping["STOPPING"] == "1"
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_refused_start_sends_no_ready(tmp_path: Path, dns_bed: DnssecTestBed) -> None:
    notify = NotifyListener(abstract=False)
    config = tmp_path / "danemilter.yaml"
    config.write_text(f"listen: unix:{tmp_path / 'm.sock'}\n"
                      "resolver: {address: 127.0.0.1, port: 9, timeout: 0.3}\n")
    try:
        proc = _start(config, {"NOTIFY_SOCKET": notify.env}, tmp_path / "log")
        assert proc.wait(timeout=30) == 2
        notify.sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            notify.sock.recv(4096)
    finally:
        notify.close()


def test_socket_activation_with_notify(tmp_path: Path, dns_bed: DnssecTestBed) -> None:
    # What danemilter.socket does: systemd binds, passes fd 3 with LISTEN_PID/LISTEN_FDS.
    tmp_path.chmod(0o755)
    path = tmp_path / "activated.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(16)
    notify = NotifyListener(abstract=True)
    config = _config(tmp_path, dns_bed, "systemd")
    fd = server.fileno()
    # exec keeps the PID: LISTEN_PID names the daemon, as systemd's would.
    script = (f"import os, sys; os.dup2({fd}, 3); os.environ.update(LISTEN_PID=str(os.getpid()),"
              " LISTEN_FDS='1', LISTEN_FDNAMES='danemilter.socket'); "
              "os.execv(sys.executable, [sys.executable, '-m', 'danemilter', 'run', "
              f"'--config', {str(config)!r}])")
    with (tmp_path / "log").open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-c", script], pass_fds=(fd,), stdout=out,
                                stderr=out, env={**os.environ, "NOTIFY_SOCKET": notify.env})
    server.close()  # only the daemon holds the socket now
    try:
        ready, _ = notify.until("READY")
        assert "listening on systemd" in ready["STATUS"]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(5)
            client.connect(str(path))
            client.sendall(b"\x00\x00\x00\x01Q")  # SMFIC_QUIT: a real, if short, session
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, (tmp_path / "log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()


def test_the_environment_is_read_as_sd_notify_reads_it() -> None:
    assert socket_address({"NOTIFY_SOCKET": "@name"}) == "\0name"
    assert socket_address({"NOTIFY_SOCKET": "/run/systemd/notify"}) == "/run/systemd/notify"
    assert socket_address({"NOTIFY_SOCKET": "vsock:2:1"}) is None
    assert socket_address({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, pid=7) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "8"}, pid=7) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert not Notifier({}).ready()  # no socket: nothing sent, nothing raised


def test_a_vanished_supervisor_is_no_error(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.enabled
    assert notifier.ready() is False and notifier.watchdog() is False
    notifier.close()


def test_the_units_are_valid_for_systemd(tmp_path: Path) -> None:
    # systemd-analyze reads units without a running systemd; the commands must exist,
    # so the copies name this checkout's console script instead of /usr/local/bin.
    script = Path(sys.executable).parent / "danemilter"
    units = ("danemilter.service", "danemilter.socket", "danemilter-policy.socket")
    for name in units:
        text = (ROOT / "packaging" / "systemd" / name).read_text()
        (tmp_path / name).write_text(text.replace("/usr/local/bin/danemilter", str(script)))
    result = subprocess.run(["systemd-analyze", "verify", *(str(tmp_path / u) for u in units)],
                            capture_output=True, text=True, timeout=30, check=False)
    problems = [line for line in result.stderr.splitlines()
                if "Command 'man " not in line]  # the man pages are the package's
    assert problems == [], result.stderr
    service = (ROOT / "packaging" / "systemd" / "danemilter.service").read_text()
    assert "Type=notify\n" in service and "WatchdogSec=" in service
