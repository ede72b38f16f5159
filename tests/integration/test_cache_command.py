"""``danemilter cache show | purge | stats`` run as a real command against real caches."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from danemilter.cache import CacheSettings, RedisBackend, SQLiteBackend, StatusCache
from danemilter.dane import DomainState, DomainStatus, HostState, HostStatus
from danemilter.tlsa import TLSARecord
from tests.support.redisd import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

EE = TLSARecord.from_text("3 1 1 " + "ab" * 32)


def dane(domain: str, ttl: int = 3600) -> DomainStatus:
    host = HostStatus(f"mx.{domain}", 10, ("192.0.2.1",), True, HostState.DANE,
                      f"mx.{domain}", (EE,), "usable secure TLSA", ttl)
    return DomainStatus(domain, DomainState.DANE, 8, True, (host,), "every host has DANE", ttl)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "danemilter", "cache", *args],
                          capture_output=True, text=True, timeout=30, check=False)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("danemilter: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def sqlite_config(tmp_path: Path) -> Iterator[Path]:
    cache_path = tmp_path / "cache.sqlite3"
    config = tmp_path / "danemilter.yaml"
    config.write_text(f"cache:\n  backend: sqlite\n  path: {cache_path}\n")
    backend = SQLiteBackend(cache_path, 1000)
    cache = StatusCache(backend, CacheSettings(path=str(cache_path)))
    now = time.time()
    for name in ("example.org", "example.net", "xn--bcher-kva.example"):
        cache.put(dane(name), now)
    backend.close()
    yield config


def test_show_prints_the_cached_status(sqlite_config: Path) -> None:
    result = run("show", "Example.ORG.", "--config", str(sqlite_config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("example.org: dane (usage 8, MX secure)")
    assert "mx.example.org [10] 192.0.2.1: dane" in result.stdout
    assert "expires" in result.stdout and "s left)" in result.stdout


def test_show_json(sqlite_config: Path) -> None:
    before = time.time()
    result = run("show", "bücher.example", "--json", "--config", str(sqlite_config))
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["domain"] == "xn--bcher-kva.example" and document["cached"] is True
    assert document["status"] == dane("xn--bcher-kva.example").to_json()
    assert 3500 < document["ttl_left"] <= 3600
    assert document["expires_at"] - document["stored_at"] == pytest.approx(3600)
    assert document["stored_at"] <= before


def test_show_not_cached_exits_1(sqlite_config: Path) -> None:
    result = run("show", "unknown.example", "--config", str(sqlite_config))
    assert (result.returncode, result.stdout) == (1, "unknown.example: not cached\n")
    result = run("show", "unknown.example", "--json", "--config", str(sqlite_config))
    assert result.returncode == 1
    assert json.loads(result.stdout) == {"domain": "unknown.example", "cached": False}


def test_purge_one_then_all(sqlite_config: Path) -> None:
    result = run("purge", "example.net", "--config", str(sqlite_config))
    assert (result.returncode, result.stdout) == (0, "example.net: purged\n")
    assert run("show", "example.net", "--config", str(sqlite_config)).returncode == 1
    result = run("purge", "example.net", "--config", str(sqlite_config))
    assert result.stdout == "example.net: was not cached\n"
    result = run("purge", "--json", "--config", str(sqlite_config))
    assert result.returncode == 0
    assert json.loads(result.stdout) == {"domain": None, "purged": 2}
    stats = json.loads(run("stats", "--json", "--config", str(sqlite_config)).stdout)
    assert stats["entries"] == 0


def test_stats(sqlite_config: Path, tmp_path: Path) -> None:
    result = run("stats", "--json", "--config", str(sqlite_config))
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["backend"] == "sqlite" and stats["entries"] == 3
    assert stats["path"] == str(tmp_path / "cache.sqlite3")
    assert stats["fallback"] is False
    text = run("stats", "--config", str(sqlite_config))
    assert "entries: 3" in text.stdout.splitlines()


def test_redis_backend(tmp_path: Path) -> None:
    server = RedisServer()
    server.start()
    try:
        config = tmp_path / "danemilter.yaml"
        config.write_text(f"cache: {{backend: redis, url: '{server.url}', key_prefix: 'cli:'}}\n")
        backend = RedisBackend(server.url, "cli:", 100)
        StatusCache(backend, CacheSettings(backend="redis")).put(dane("example.org"), time.time())
        backend.close()
        shown = run("show", "example.org", "--json", "--config", str(config))
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["status"]["status"] == "dane"
        stats = json.loads(run("stats", "--json", "--config", str(config)).stdout)
        assert (stats["backend"], stats["entries"], stats["connected"]) == ("redis", 1, True)
        assert run("purge", "--config", str(config)).stdout == "purged 1 cached status(es)\n"
        server.kill()
        down = run("stats", "--config", str(config))
        assert down.returncode == 1
        assert "is unreachable" in one_line_error(down)
    finally:
        server.kill()


@pytest.mark.parametrize(("args", "config_text", "expected"), [
    (["show", "bad..domain"], None, "invalid label length"),
    (["show", "user@example.org"], None, "not a DNS domain name"),
    (["show"], None, "the following arguments are required: DOMAIN"),
    (["flush"], None, "invalid choice: 'flush'"),
    (["stats", "--limit", "3"], None, "unrecognized arguments"),
    (["stats"], "cache:\n  backend: mongodb\n", "danemilter.yaml:2: cache.backend must be"),
    (["stats"], "cache:\n  max_ttl: -5\n", "danemilter.yaml:2: cache.max_ttl must be"),
    (["stats"], "cache: {backend: memory}\n", "memory backend lives inside the milter"),
    (["stats"], "cache: [\n", "invalid YAML"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str],
                                          config_text: str | None, expected: str) -> None:
    config = tmp_path / "danemilter.yaml"
    config.write_text(config_text or f"cache: {{path: {tmp_path / 'c.sqlite3'}}}\n")
    result = run(*args, "--config", str(config)) if args != ["flush"] else run(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert expected in one_line_error(result)
    assert result.stdout == ""


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    result = run("stats", "--config", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2
    assert "absent.yaml: cannot read" in one_line_error(result)


def test_missing_cache_file_is_not_created(tmp_path: Path) -> None:
    cache_path = tmp_path / "cache.sqlite3"
    config = tmp_path / "danemilter.yaml"
    config.write_text(f"cache: {{path: {cache_path}}}\n")
    result = run("show", "example.org", "--config", str(config))
    assert result.returncode == 1
    assert f"no cache file at {cache_path}" in one_line_error(result)
    assert not cache_path.exists()
