"""``danemilter run`` and ``check-config`` as processes: sockets, signals, bad files."""

from __future__ import annotations

import grp
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.milterproc import MilterProcess
from tests.support.ports import free_port
from tests.support.postfix import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

DANEMILTER = [sys.executable, "-m", "danemilter"]


def test_unix_socket_gets_configured_mode_and_group(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    sock = tmp_path / "milter.sock"
    config = tmp_path / "danemilter.yaml"
    config.write_text(f"listen: unix:{sock}\nsocket_mode: \"0660\"\nsocket_group: postfix\n")
    proc = subprocess.Popen([*DANEMILTER, "run", "--config", str(config)],
                            stderr=subprocess.PIPE, text=True)
    try:
        postfix_gid = grp.getgrnam("postfix").gr_gid
        wait_for(lambda: sock.exists() and os.stat(sock).st_gid == postfix_gid, 15,
                 "the socket with group postfix")
        info = os.stat(sock)
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o660
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err


def test_inet_socket_and_clean_sigterm(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "danemilter.yaml"
    config.write_text(f"listen: inet:{port}@127.0.0.1\n")
    proc = subprocess.Popen([*DANEMILTER, "run", "--config", str(config)],
                            stderr=subprocess.PIPE, text=True)

    def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            return False

    try:
        wait_for(listening, 15, "the milter's TCP port")
    finally:
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "stopped" in err
    assert time.monotonic() - started < 15


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("listen: [oops\n", "invalid YAML"),
        ("colour: blue\n", "unknown key 'colour'"),
        ("listen: unix:/nonexistent-dir/x.sock\n",
         "socket directory /nonexistent-dir does not exist"),
    ],
)
def test_run_with_a_bad_config_says_one_line_and_exits_2(
    tmp_path: Path, text: str, message: str
) -> None:
    config = tmp_path / "danemilter.yaml"
    config.write_text(text)
    result = subprocess.run([*DANEMILTER, "run", "--config", str(config)],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_check_config_reports_every_error_with_file_and_line(tmp_path: Path) -> None:
    config = tmp_path / "danemilter.yaml"
    config.write_text("listen: 5\ndeadline: soon\npolicy:\n  default: {dane: maybe}\n")
    result = subprocess.run([*DANEMILTER, "check-config", str(config)],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert [line.split(": ", 2)[1] for line in lines] == [f"{config}:1", f"{config}:2",
                                                          f"{config}:4"]


def test_check_config_accepts_the_shipped_file() -> None:
    shipped = Path(__file__).resolve().parents[2] / "etc" / "danemilter" / "danemilter.yaml"
    result = subprocess.run([*DANEMILTER, "check-config", str(shipped)],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_sighup_applies_a_new_policy_without_dropping_the_socket() -> None:
    milter = MilterProcess("policy:\n  default: {dane: try}\n")
    milter.start()
    try:
        milter.reload("policy:\n  default: {dane: require}\n")
        assert milter._accepting()
    finally:
        assert milter.stop() == 0


def _threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("Threads:")))


def test_an_engine_replaced_by_a_reload_is_released() -> None:
    # A reload that changes the resolver (or the cache) builds a new engine; the old one
    # (loop thread, workers, cache and its LRU) must go once its lookups can have ended,
    # or every such reload would leak ~20 MB with a warm LRU.
    policy = "deadline: 1\n{resolver}policy:\n  default: {{dane: try}}\n"
    milter = MilterProcess(policy.format(resolver=""))
    milter.start()
    try:
        assert milter.process is not None
        pid = milter.process.pid
        baseline = _threads(pid)
        for port in (5301, 5302, 5303):
            resolver = f"resolver: {{address: 127.0.0.1, port: {port}}}\n"
            milter.reload(policy.format(resolver=resolver))
        released = "closed the resolver and cache replaced by a reload"
        wait_for(lambda: milter.log().count(released) == 3, 20, "three engines released")
        wait_for(lambda: _threads(pid) <= baseline, 5, "the thread count back to its start")
    finally:
        assert milter.stop() == 0
