"""``danemilter cache show | purge | stats`` run as a real command against real caches."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from danemilter.cache import CacheSettings, RedisBackend, SQLiteBackend, StatusCache
from danemilter.cache.probes import probe_key
from danemilter.cache.status import status_key
from danemilter.cache.sts import StsCache, sts_key
from danemilter.dane import DomainState, DomainStatus, HostState, HostStatus
from danemilter.mtasts import CachedPolicy, StsMode, StsPolicy
from danemilter.tlsa import TLSARecord
from tests.support.redisd import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

EE = TLSARecord.from_text("3 1 1 " + "ab" * 32)
ENFORCE = StsPolicy(StsMode.ENFORCE, 86400, ("mx1.example.net", "*.example.net"))


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
    assert json.loads(result.stdout) == {"domain": "unknown.example", "cached": False,
                                         "sts": None}


@pytest.fixture
def sts_config(sqlite_config: Path, tmp_path: Path) -> tuple[Path, float]:
    """sqlite_config with MTA-STS policies, stored as the milter stores them: one for a
    domain with a cached status, one for a domain with nothing else cached."""
    backend = SQLiteBackend(tmp_path / "cache.sqlite3", 1000)
    sts = StsCache(backend, 10)
    fetched_at = time.time()
    sts.store("example.org", CachedPolicy(ENFORCE, "20240601", fetched_at))
    sts.store("sts-only.example", CachedPolicy(
        StsPolicy(StsMode.TESTING, 3600, ("mx.sts-only.example",)), "T1", fetched_at))
    backend.close()
    return sqlite_config, fetched_at


def iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds")


def policy_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stdout.splitlines() if "MTA-STS" in line]
    assert len(lines) == 1, result.stdout
    return lines[0]


def test_show_prints_the_cached_policy_after_the_status(sts_config: tuple[Path, float]
                                                       ) -> None:
    config, fetched_at = sts_config
    result = run("show", "example.org", "--config", str(config))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("example.org: dane (usage 8, MX secure)")
    assert "s left)" in lines[-2] and lines[-1] == policy_line(result)
    prefix = (f"  MTA-STS policy id 20240601: mode enforce, mx mx1.example.net, "
              f"*.example.net, max_age 86400: fetched {iso(fetched_at)}, expires "
              f"{iso(fetched_at + 86400)} (")
    assert lines[-1].startswith(prefix) and lines[-1].endswith(" s left)")
    assert 86000 < int(lines[-1][len(prefix):-len(" s left)")]) <= 86400


def test_a_domain_with_only_a_policy_is_cached(sts_config: tuple[Path, float]) -> None:
    config, fetched_at = sts_config
    result = run("show", "STS-only.example.", "--config", str(config))
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()
    assert first == "sts-only.example: status not cached"
    assert second.startswith("  MTA-STS policy id T1: mode testing, mx mx.sts-only.example, "
                             f"max_age 3600: fetched {iso(fetched_at)}, expires "
                             f"{iso(fetched_at + 3600)} (")
    result = run("show", "sts-only.example", "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "domain": "sts-only.example", "cached": True,
        "sts": {"id": "T1", "mode": "testing", "mx": ["mx.sts-only.example"], "max_age": 3600,
                "fetched_at": fetched_at, "expires_at": fetched_at + 3600}}


def test_show_json_with_a_policy(sts_config: tuple[Path, float]) -> None:
    config, fetched_at = sts_config
    result = run("show", "example.org", "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["cached"] is True and document["status"]["status"] == "dane"
    assert document["sts"] == {"id": "20240601", "mode": "enforce",
                               "mx": ["mx1.example.net", "*.example.net"], "max_age": 86400,
                               "fetched_at": fetched_at, "expires_at": fetched_at + 86400}
    # A status without a policy (a domain DANE decides): still cached, sts null.
    result = run("show", "example.net", "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert (document["cached"], document["sts"]) == (True, None)
    assert "MTA-STS" not in run("show", "example.net", "--config", str(config)).stdout


def test_show_leaves_a_corrupt_policy_and_the_file_alone(sts_config: tuple[Path, float],
                                                          tmp_path: Path) -> None:
    config, _ = sts_config
    cache_path = tmp_path / "cache.sqlite3"
    backend = SQLiteBackend(cache_path, 1000)
    backend.put(sts_key("sts-only.example"), b'{"policy": "mode: enforce"}', time.time() + 600)
    backend.close()
    before = cache_path.read_bytes()
    result = run("show", "sts-only.example", "--config", str(config))
    assert (result.returncode, result.stdout) == (1, "sts-only.example: not cached\n")
    assert "leaving a corrupt cached MTA-STS policy of sts-only.example" in result.stderr
    assert "Traceback" not in result.stderr
    assert cache_path.read_bytes() == before
    backend = SQLiteBackend(cache_path, 1000)
    try:
        kept = backend.get(sts_key("sts-only.example"))
        assert kept is not None and kept[0] == b'{"policy": "mode: enforce"}'
    finally:
        backend.close()


def test_purge_of_a_domain_takes_its_policy(sts_config: tuple[Path, float]) -> None:
    config, _ = sts_config
    result = run("purge", "sts-only.example", "--config", str(config))
    assert (result.returncode, result.stdout) == (0, "sts-only.example: purged\n")
    assert run("show", "sts-only.example", "--config", str(config)).returncode == 1
    result = run("purge", "example.org", "--json", "--config", str(config))
    assert json.loads(result.stdout) == {"domain": "example.org", "purged": 2}
    assert run("show", "example.org", "--config", str(config)).returncode == 1


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


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.kill()


def redis_config(tmp_path: Path, server: RedisServer) -> Path:
    config = tmp_path / "danemilter.yaml"
    config.write_text(f"cache: {{backend: redis, url: '{server.url}', key_prefix: 'cli:'}}\n")
    return config


def test_redis_backend(tmp_path: Path, redis_server: RedisServer) -> None:
    config = redis_config(tmp_path, redis_server)
    backend = RedisBackend(redis_server.url, "cli:", 100)
    StatusCache(backend, CacheSettings(backend="redis")).put(dane("example.org"), time.time())
    backend.close()
    shown = run("show", "example.org", "--json", "--config", str(config))
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["status"]["status"] == "dane"
    stats = json.loads(run("stats", "--json", "--config", str(config)).stdout)
    assert (stats["backend"], stats["entries"], stats["connected"]) == ("redis", 1, True)
    assert run("purge", "--config", str(config)).stdout == (
        "purged 1 cached entry (statuses, probes, MTA-STS policies)\n")
    redis_server.kill()
    down = run("stats", "--config", str(config))
    assert down.returncode == 1
    assert "is unreachable" in one_line_error(down)


def test_redis_show_with_a_policy(tmp_path: Path, redis_server: RedisServer) -> None:
    config = redis_config(tmp_path, redis_server)
    backend = RedisBackend(redis_server.url, "cli:", 100)
    fetched_at = time.time()
    StsCache(backend, 10).store("example.org", CachedPolicy(ENFORCE, "R1", fetched_at))
    backend.put(sts_key("broken.example"), b"not json", fetched_at + 600)
    try:
        shown = run("show", "example.org", "--json", "--config", str(config))
        assert shown.returncode == 0, shown.stderr
        document = json.loads(shown.stdout)
        assert "status" not in document and document["cached"] is True
        assert (document["sts"]["id"], document["sts"]["mode"]) == ("R1", "enforce")
        assert document["sts"]["expires_at"] == fetched_at + 86400
        text = run("show", "example.org", "--config", str(config))
        assert text.returncode == 0, text.stderr
        assert text.stdout.startswith("example.org: status not cached\n  MTA-STS policy id R1:")
        # Redis is not opened read-only: show itself must leave a corrupt entry in place.
        broken = run("show", "broken.example", "--config", str(config))
        assert (broken.returncode, broken.stdout) == (1, "broken.example: not cached\n")
        assert backend.get(sts_key("broken.example")) == (b"not json", fetched_at + 600)
    finally:
        backend.close()


def test_redis_show_leaves_corrupt_status_and_probe_entries(tmp_path: Path,
                                                           redis_server: RedisServer) -> None:
    config = redis_config(tmp_path, redis_server)
    backend = RedisBackend(redis_server.url, "cli:", 100)
    expires = time.time() + 600
    backend.put(status_key("broken.example"), b"{not json", expires)
    backend.put(probe_key("broken.example"), b"[]", expires)
    try:
        shown = run("show", "broken.example", "--config", str(config))
        assert (shown.returncode, shown.stdout) == (1, "broken.example: not cached\n")
        assert "leaving a corrupt cache entry for broken.example" in shown.stderr
        assert backend.get(status_key("broken.example")) == (b"{not json", expires)
        assert backend.get(probe_key("broken.example")) == (b"[]", expires)
        # The milter's own reads do drop it: it would only be read again.
        assert StatusCache(backend, CacheSettings(backend="redis")).lookup(
            "broken.example", time.time()) is None
        assert backend.get(status_key("broken.example")) is None
    finally:
        backend.close()


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
