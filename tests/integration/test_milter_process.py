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

from danemilter.milter import protocol as p
from tests.support.milterproc import InetMilterProcess, MilterProcess
from tests.support.mtaclient import MtaClient
from tests.support.ports import free_port
from tests.support.postfix import wait_for
from tests.support.procstat import thread_count
from tests.support.socketmap import SocketmapClient

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

DANEMILTER = [sys.executable, "-m", "danemilter"]
# The resolver self-check runs before the socket is claimed; these tests are about the
# socket and the process (as MilterProcess configs, they say nothing of a resolver).
NO_CHECK = "resolver_check: off\n"


def test_unix_socket_gets_configured_mode_and_group(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    sock = tmp_path / "milter.sock"
    config = tmp_path / "danemilter.yaml"
    config.write_text(f"listen: unix:{sock}\nsocket_mode: \"0660\"\nsocket_group: postfix\n"
                      f"{NO_CHECK}")
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
    config.write_text(f"listen: inet:{port}@127.0.0.1\n{NO_CHECK}")
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
        (f"listen: unix:/nonexistent-dir/x.sock\n{NO_CHECK}",
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
        baseline = thread_count(pid)
        for port in (5301, 5302, 5303):
            resolver = f"resolver: {{address: 127.0.0.1, port: {port}}}\n"
            milter.reload(policy.format(resolver=resolver))
        released = "closed the resolver and cache replaced by a reload"
        wait_for(lambda: milter.log().count(released) == 3, 20, "three engines released")
        wait_for(lambda: thread_count(pid) <= baseline, 5, "the thread count back to its start")
    finally:
        assert milter.stop() == 0


# --- socket safety (issue 11 item 5) ---------------------------------------------------

TRANSPORTS = ["asyncio", "libmilter"]
MILTER_LISTENING = "INFO listening on "  # the milter's line, not the policy socket's


def _exits_2_saying(config: Path, message: str, env: dict[str, str] | None = None) -> None:
    """``danemilter run`` exits 2 with one stderr line containing ``message``."""
    result = subprocess.run([*DANEMILTER, "run", "--config", str(config)], env=env,
                            capture_output=True, text=True, timeout=30, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert message in lines[0]


def _answers(listen: str) -> bool:
    """Whether a milter on ``listen`` answers an option negotiation."""
    with MtaClient(listen) as mta:
        return bool(mta.negotiate() & p.Step.NOHELO)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_second_daemon_on_a_served_unix_socket_exits_2_and_takes_nothing(
    tmp_path: Path, transport: str
) -> None:
    first = MilterProcess(f"transport: {transport}\n", log_level="info")
    first.start()
    try:
        assert first.process is not None
        second = tmp_path / "second.yaml"
        second.write_text(f"listen: {first.listen}\ntransport: {transport}\n{NO_CHECK}")
        _exits_2_saying(second, f"already served by PID {first.process.pid}")
        assert first.socket.exists()
        assert _answers(first.listen), "the first daemon must still answer"
    finally:
        assert first.stop() == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_stale_socket_file_is_replaced(tmp_path: Path, transport: str) -> None:
    milter = MilterProcess(f"transport: {transport}\n", log_level="info")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(milter.socket))  # bound, never listening, then closed: no process
    stale.close()
    assert stat.S_ISSOCK(os.lstat(milter.socket).st_mode)
    milter.start()
    try:
        assert _answers(milter.listen)
    finally:
        assert milter.stop() == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_regular_file_at_the_socket_path_is_left_alone(tmp_path: Path, transport: str) -> None:
    target = tmp_path / "milter.sock"
    target.write_text("precious\n")
    config = tmp_path / "danemilter.yaml"
    config.write_text(f"listen: unix:{target}\ntransport: {transport}\n{NO_CHECK}")
    _exits_2_saying(config, f"{target} exists and is not a socket")
    assert target.read_text() == "precious\n"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_missing_socket_directory_exits_2(tmp_path: Path, transport: str) -> None:
    config = tmp_path / "danemilter.yaml"
    config.write_text(f"listen: unix:{tmp_path}/absent/milter.sock\ntransport: {transport}\n"
                      f"{NO_CHECK}")
    _exits_2_saying(config, f"socket directory {tmp_path}/absent does not exist")


def test_an_inet_port_in_use_exits_2_saying_so(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen(1)
        config = tmp_path / "danemilter.yaml"
        config.write_text(f"listen: inet:{port}@127.0.0.1\ntransport: asyncio\n{NO_CHECK}")
        _exits_2_saying(config, f"cannot listen on inet:{port}@127.0.0.1: address in use")


# A stand-in for systemd: the listening socket on fd 3, LISTEN_PID = this process (which
# exec keeps), then danemilter in its place.
SOCKET_ACTIVATION = """
import os, socket, sys
family, address, config = sys.argv[1], sys.argv[2], sys.argv[3]
if family == "unix":
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(address)
else:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", int(address)))
sock.listen(16)
os.dup2(sock.fileno(), 3)
os.set_inheritable(3, True)
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDS"] = "1"
os.execv(sys.executable, [sys.executable, "-m", "danemilter", "run", "--config", config])
"""


@pytest.mark.parametrize("family", ["unix", "inet"])
def test_systemd_socket_activation_serves_the_passed_socket(tmp_path: Path, family: str) -> None:
    tmp_path.chmod(0o755)
    config = tmp_path / "danemilter.yaml"
    config.write_text(f"listen: systemd\ntransport: asyncio\nlog_level: info\n{NO_CHECK}")
    if family == "unix":
        address = str(tmp_path / "activated.sock")
        listen = f"unix:{address}"
    else:
        address = str(free_port())
        listen = f"inet:{address}@127.0.0.1"
    log = tmp_path / "milter.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", SOCKET_ACTIVATION, family, address,
                                 str(config)], stdout=out, stderr=out)
    try:
        wait_for(lambda: "listening on systemd" in log.read_text() or proc.poll() is not None,
                 20, "the activated milter")
        assert proc.poll() is None, log.read_text()
        assert _answers(listen)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert proc.returncode == 0, log.read_text()


@pytest.mark.parametrize("environment", [{}, {"LISTEN_FDS": "1"},
                                         {"LISTEN_FDS": "1", "LISTEN_PID": "1"}])
def test_systemd_without_a_passed_socket_exits_2(tmp_path: Path,
                                                  environment: dict[str, str]) -> None:
    config = tmp_path / "danemilter.yaml"
    config.write_text(f"listen: systemd\n{NO_CHECK}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    _exits_2_saying(config, "systemd passed no socket", {**env, **environment})


# Both shipped socket units at once: systemd passes their descriptors from fd 3 on, in an
# order of its own, named by FileDescriptorName= (LISTEN_FDNAMES).
NAMED_ACTIVATION = """
import os, socket, sys
config, pairs = sys.argv[1], sys.argv[2:]
names, parked = [], []
for pair in pairs:
    name, _, path = pair.partition("=")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(16)
    names.append(name)
    parked.append(os.dup2(sock.fileno(), 100 + len(parked)))  # clear of fds 3, 4, ...
    sock.close()
for index, fd in enumerate(parked):
    os.dup2(fd, 3 + index)
    os.set_inheritable(3 + index, True)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(pairs)),
                  LISTEN_FDNAMES=":".join(names))
os.execv(sys.executable, [sys.executable, "-m", "danemilter", "run", "--config", config])
"""
# Every domain dane: require: the socketmap answers without a DNS lookup.
REQUIRE_ALL = "policy:\n  default: {dane: require}\n"


def _activated(tmp_path: Path, config_text: str, names: list[str]
               ) -> tuple[subprocess.Popen[bytes], Path, dict[str, Path]]:
    tmp_path.chmod(0o755)
    config = tmp_path / "danemilter.yaml"
    config.write_text("listen: systemd\nlog_level: info\n" + NO_CHECK + config_text)
    paths = [(name, tmp_path / f"{name or 'unnamed'}-{i}.sock")
             for i, name in enumerate(names)]
    log = tmp_path / "milter.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", NAMED_ACTIVATION, str(config),
                                 *(f"{n}={path}" for n, path in paths)],
                                stdout=out, stderr=out)
    return proc, log, dict(paths)


@pytest.mark.parametrize("names", [["milter", "policy"], ["policy", "milter"]])
def test_socket_activation_serves_the_milter_and_the_policy_socket_by_name(
        tmp_path: Path, names: list[str]) -> None:
    proc, log, paths = _activated(tmp_path, REQUIRE_ALL, names)
    try:
        wait_for(lambda: "INFO listening on systemd" in log.read_text()
                 or proc.poll() is not None, 20, "the activated milter")
        assert proc.poll() is None, log.read_text()
        assert _answers(f"unix:{paths['milter']}")
        with SocketmapClient(paths["policy"]) as client:
            assert client.query("example.org") == "OK dane-only"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert proc.returncode == 0, log.read_text()


def test_socket_activation_without_the_policy_unit_says_there_is_no_policy_socket(
        tmp_path: Path) -> None:
    proc, log, paths = _activated(tmp_path, "", ["milter"])
    try:
        wait_for(lambda: "INFO listening on systemd" in log.read_text()
                 or proc.poll() is not None, 20, "the activated milter")
        assert proc.poll() is None, log.read_text()
        assert "no policy socket: systemd passed none (danemilter-policy.socket)" in \
            log.read_text()
        assert _answers(f"unix:{paths['milter']}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert proc.returncode == 0, log.read_text()


@pytest.mark.parametrize(("config_text", "names", "message"), [
    ("policy_socket: systemd\n", ["milter"],
     "policy_socket: systemd passed no socket named policy (milter): enable "
     "danemilter-policy.socket"),
    ("", ["", ""], "listen: systemd passed 2 socket(s) (unnamed, unnamed) and none is the "
                   "milter's (FileDescriptorName=milter)"),
    ("", ["policy"], "none is the milter's"),
])
def test_socket_activation_with_the_wrong_sockets_exits_2_saying_which(
        tmp_path: Path, config_text: str, names: list[str], message: str) -> None:
    proc, log, _ = _activated(tmp_path, config_text, names)
    assert proc.wait(timeout=30) == 2, log.read_text()
    lines = log.read_text().strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_policy_query_asks_for_the_path_of_a_socket_systemd_passes(tmp_path: Path) -> None:
    config = tmp_path / "danemilter.yaml"
    config.write_text("listen: systemd\n")
    done = subprocess.run([*DANEMILTER, "policy-query", "example.org", "--config", str(config)],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"danemilter: {config}: systemd passes the policy socket; name its path with "
        "--socket (danemilter-policy.socket's ListenStream)"]


# libmilter must not be reachable over TCP (issue 16 item 8): the configuration refuses it,
# tests/integration/test_hardening_cli.py proves that; here it is not a listener at all.
@pytest.mark.parametrize(("transport", "kind"), [("asyncio", "unix"), ("asyncio", "inet"),
                                                 ("libmilter", "unix")])
def test_listening_is_logged_only_once_the_socket_accepts(transport: str, kind: str) -> None:
    milter = (InetMilterProcess if kind == "inet" else MilterProcess)(
        f"transport: {transport}\n", log_level="info")
    assert milter.log_path.parent.exists()
    log = milter.log_path.open("ab")
    proc = subprocess.Popen([*DANEMILTER, "run", "--config", str(milter.config_path)],
                            stdout=log, stderr=log)
    milter.process = proc
    log.close()
    try:
        # Poll the log, not the socket: the moment the line is there, a connection must work.
        wait_for(lambda: MILTER_LISTENING in milter.log() or proc.poll() is not None,
                 20, "the listening line")
        assert milter._accepting(), "logged 'listening' before the socket accepted"
        assert _answers(milter.listen)
        assert milter.log().count(MILTER_LISTENING) == 1
    finally:
        assert milter.stop() == 0
