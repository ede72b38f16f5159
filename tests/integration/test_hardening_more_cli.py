"""Issue 16 items 6, 7 and 8, what the first pass left:

* ``cache stats|show`` only ever read the cache: a corrupt SQLite file gets one line and
  a non-zero exit and is left exactly as it was (same inode, same bytes, no file created
  beside it); a healthy file is read without creating its -wal/-shm files.
* ``ocsp fetch --url`` with a URL that cannot be parsed: one line, exit 2.
* ``run`` with a socket_group that does not exist: one line, exit 2, under both
  transports (libmilter used to log it and serve the socket with the wrong group).
* ``transport: libmilter`` with ``listen: systemd``: refused at start-up with the reason;
  a TCP socket passed by systemd is named as such.
* A header whose name is not UTF-8, over the raw milter protocol: end of message is
  still answered (asyncio transport).
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from danemilter.cache.sqlite import SQLiteBackend
from danemilter.milter import protocol as p
from tests.integration.test_milter_process import SOCKET_ACTIVATION
from tests.support.milterproc import MilterProcess
from tests.support.mtaclient import ALL_ACTIONS, ALL_STEPS, MtaClient
from tests.support.ocsp_pki import issue, make_ca
from tests.support.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SEED = int(os.environ.get("DANEMILTER_SEED") or random.SystemRandom().getrandbits(32))


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "danemilter", *args], check=False,
                          capture_output=True, text=True, timeout=30, env=env)


def _one_line_error(done: subprocess.CompletedProcess[str], code: int | None = None) -> str:
    assert done.returncode != 0, done
    if code is not None:
        assert done.returncode == code, done
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    return lines[0]


def _snapshot(directory: Path) -> dict[str, tuple[int, str]]:
    """Every file in ``directory``: inode and SHA-256 of its bytes."""
    return {entry.name: (entry.stat().st_ino, hashlib.sha256(entry.read_bytes()).hexdigest())
            for entry in directory.iterdir()}


def _cache_config(tmp_path: Path, cache: Path) -> Path:
    config = tmp_path / "danemilter.yaml"
    config.write_text(f"resolver_check: off\ncache: {{backend: sqlite, path: {cache}}}\n")
    return config


@pytest.mark.parametrize("command", [["stats"], ["show", "ee.secure.test"],
                                     ["stats", "--json"], ["show", "--json", "x.test"]])
def test_inspecting_a_corrupt_cache_file_changes_nothing(tmp_path: Path,
                                                          command: list[str]) -> None:
    print(f"seed {SEED}")
    store = tmp_path / "store"
    store.mkdir()
    cache = store / "cache.sqlite3"
    cache.write_bytes(random.Random(SEED).randbytes(8192))
    config = _cache_config(tmp_path, cache)
    before = _snapshot(store)
    line = _one_line_error(_run("cache", *command, "--config", str(config)))
    assert str(cache) in line and "cannot use" in line, line
    assert _snapshot(store) == before


def test_inspecting_a_healthy_cache_file_creates_nothing(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    cache = store / "cache.sqlite3"
    backend = SQLiteBackend(cache, 100)
    backend.put("status:x.test", b"not a status", time.time() + 3600)
    backend.close()
    assert sorted(entry.name for entry in store.iterdir()) == ["cache.sqlite3"]
    before = _snapshot(store)
    config = _cache_config(tmp_path, cache)
    done = _run("cache", "stats", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert "entries: 1" in done.stdout
    # The undecodable entry is a miss for show, and is not removed by looking.
    done = _run("cache", "show", "x.test", "--config", str(config))
    assert done.returncode == 1 and "not cached" in done.stdout, done
    assert _snapshot(store) == before


def test_an_unparsable_ocsp_url_is_one_line(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    ca = make_ca(now)
    leaf = issue(ca, now, "leaf.test", ocsp_url="http://127.0.0.1:9/")
    cert, _ = leaf.write(tmp_path, "leaf")
    issuer, _ = ca.write(tmp_path, "ca")
    for url in ("http://[::1", "http://127.0.0.1:99999/", "http://[::1]:x/"):
        line = _one_line_error(_run("ocsp", "fetch", "--url", url, "--cert", str(cert),
                                    "--issuer", str(issuer), "--out",
                                    str(tmp_path / "staple.der")), code=2)
        assert "--url" in line, line
    assert not (tmp_path / "staple.der").exists()


@pytest.mark.parametrize("transport", ["asyncio", "libmilter"])
def test_a_nonexistent_socket_group_is_one_line_and_exit_2(tmp_path: Path,
                                                            transport: str) -> None:
    config = tmp_path / "danemilter.yaml"
    config.write_text(f"transport: {transport}\nlisten: unix:{tmp_path}/m.sock\n"
                      "socket_group: no-such-group-h16\nresolver_check: off\n"
                      "policy_socket: off\ncache: {backend: memory}\n")
    line = _one_line_error(_run("run", "--config", str(config)), code=2)
    assert "no-such-group-h16" in line
    assert not (tmp_path / "m.sock").exists()


@pytest.mark.parametrize(("family", "reason"), [("inet", "TCP socket"),
                                                ("unix", "needs transport: asyncio")])
def test_libmilter_under_systemd_is_refused_saying_why(tmp_path: Path, family: str,
                                                        reason: str) -> None:
    config = tmp_path / "danemilter.yaml"
    config.write_text("transport: libmilter\nlisten: systemd\nresolver_check: off\n"
                      "policy_socket: off\ncache: {backend: memory}\n")
    address = str(tmp_path / "passed.sock") if family == "unix" else str(free_port())
    done = subprocess.run([sys.executable, "-c", SOCKET_ACTIVATION, family, address,
                           str(config)], check=False, capture_output=True, text=True,
                          timeout=30)
    line = _one_line_error(done, code=2)
    assert reason in line, line


def _raw_header(name: bytes, value: bytes) -> bytes:
    body = b"L" + name + b"\0" + value + b"\0"
    return struct.pack(">I", len(body)) + body


def test_a_header_name_that_is_not_utf8_still_gets_end_of_message() -> None:
    milter = MilterProcess("transport: asyncio\npolicy:\n  default: {dane: off}\n"
                           "  domains:\n    tagged.test: {dane: try}\n", log_level="info")
    milter.start()
    try:
        with MtaClient(milter.listen, timeout=10) as mta:
            mta.negotiate(ALL_ACTIONS, ALL_STEPS)
            assert mta.steps & p.Step.NR_HDR  # no answer per header: only EOM tells
            mta.send(p.Connect("client.test", "4", 25, "192.0.2.1"),
                     p.Mail("<a@client.test>", ()), p.Rcpt("<b@tagged.test>", ()))
            assert mta.read() == [p.Response(b"c", b"")]
            mta.send(_raw_header(b"X-\xff\xfe-Bad", b"v\xff"),
                     _raw_header(b"X-DANE-Status\xc3", b"\xc3("),
                     _raw_header(b"Subject", b"hi"),
                     p.Macros(b"E", (("i", "Q1"),)), p.EndOfMessage())
            insert, done = mta.read(2)
            assert insert.code == b"i", insert
            assert b"tagged.test; status=" in insert.data
            assert done == p.Response(b"c", b"")
            # The connection is still good for the next message.
            mta.send(p.Mail("<a@client.test>", ()), p.Rcpt("<c@tagged.test>", ()))
            assert mta.read() == [p.Response(b"c", b"")]
        assert milter.process is not None and milter.process.poll() is None
        assert "Traceback" not in milter.log()
    finally:
        milter.stop()
