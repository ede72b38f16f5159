"""Issue 16 items 2, 6, 7, 8: hostile files and arguments get one line and a non-zero
exit from every command (no traceback, no hang); a reload keeps the running policy."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.milterproc import MilterProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

NESTED = "[" * 600 + "]" * 600 + "\n"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "danemilter", *args], check=False,
                          capture_output=True, text=True, timeout=20)


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0, done
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    made = {"nested": NESTED, "nested_key": "policy: " + NESTED, "empty": "",
            "comments": "# nothing here\n# at all\n",
            "libmilter_tcp": "transport: libmilter\nlisten: inet:8891@127.0.0.1\n",
            "no_group": f"listen: unix:{tmp_path}/m.sock\nsocket_group: no-such-group-x\n"
                         "resolver_check: off\n"}
    paths = {}
    for name, text in made.items():
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(text)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    paths["fifo"] = fifo
    return paths


@pytest.mark.parametrize("name", ["nested", "nested_key", "empty", "comments"])
def test_every_command_reading_the_policy_says_one_line(files: dict[str, Path],
                                                        name: str) -> None:
    path = str(files[name])
    for args in (["check-config", path], ["verify", "--config", path, "x.test"],
                 ["cache", "stats", "--config", path], ["run", "--config", path]):
        line = _one_line_error(_run(*args))
        assert path in line, (args, line)


def test_fifos_are_refused_not_waited_on(files: dict[str, Path], tmp_path: Path) -> None:
    fifo = str(files["fifo"])
    for args in (["check-config", fifo],
                 ["tlsa", "verify", "--chain", fifo, "--tlsa", "3 1 1 " + "00" * 32,
                  "--name", "x.test"],
                 ["ocsp", "check", "--response", fifo, "--cert", fifo, "--issuer", fifo]):
        _one_line_error(_run(*args))


@pytest.mark.parametrize("args", [
    ["ocsp", "check", "--max-age", "99999999999999d", "--response", "r", "--cert", "c",
     "--issuer", "i"],
    ["ocsp", "fetch", "--min-remaining", "99999999999999d", "--cert", "c", "--issuer", "i",
     "--out", "o"],
    ["verify", "--timeout", "inf", "x.test"],
    ["verify", "--timeout", "nan", "x.test"],
])
def test_out_of_range_arguments(args: list[str]) -> None:
    _one_line_error(_run(*args))


def test_libmilter_only_on_a_unix_socket(files: dict[str, Path]) -> None:
    line = _one_line_error(_run("check-config", str(files["libmilter_tcp"])))
    assert f"{files['libmilter_tcp']}:1:" in line and "unix" in line


def test_a_nonexistent_socket_group_is_one_line(files: dict[str, Path]) -> None:
    line = _one_line_error(_run("run", "--config", str(files["no_group"])))
    assert "no-such-group-x" in line


@pytest.fixture
def milter() -> Iterator[MilterProcess]:
    process = MilterProcess("policy:\n  default: {dane: require, on_fail: reject}\n")
    process.start()
    yield process
    assert process.stop() == 0


@pytest.mark.parametrize("text", [NESTED, "", "# comments only\n"])
def test_a_reload_keeps_the_running_policy(milter: MilterProcess, text: str) -> None:
    milter.config_path.write_text(text)
    milter.reload(expect="reload failed, keeping the current policy")
    assert milter.process is not None and milter.process.poll() is None
    milter.write_config("policy:\n  default: {dane: try}\n")
    milter.reload(expect="reloaded")
