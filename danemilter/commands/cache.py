"""``danemilter cache show DOMAIN | purge [DOMAIN] | stats``: the shared cache of
domain statuses, TLS probes and MTA-STS policies.

Front end only: opens the backend named by the policy file's ``cache:`` section and
reports. It never creates a cache file (one created by root would lock the milter's
user out of it), and ``show``/``stats`` change nothing in it. Exit status: 0 done, 1 not
cached (``show``: neither a status nor an MTA-STS policy) or the cache is unusable,
2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from danemilter.cache import (
    BackendName,
    CacheBackend,
    RedisBackend,
    SQLiteBackend,
    StatusCache,
    open_backend,
)
from danemilter.cache.codec import ProbeEntry
from danemilter.cache.probes import ProbeCache, fingerprint, probe_key
from danemilter.cache.sts import StsCache, sts_key
from danemilter.commands.verify import describe, probe_line
from danemilter.config import DEFAULT_PATH, chosen_path, load
from danemilter.errors import DanemilterError, UsageError
from danemilter.mtasts import CachedPolicy
from danemilter.names import normalize_domain


def register(commands: argparse._SubParsersAction[Any]) -> None:
    cache = commands.add_parser(
        "cache", help="show, purge or count the shared status cache",
        description="Inspect the cache the milter and the helper share: domain statuses, "
        "their TLS probes and MTA-STS policies. Exit status: 0 done, 1 not cached (show: "
        "neither a status nor an MTA-STS policy) or cache unusable, 2 bad input.")
    actions = cache.add_subparsers(dest="cache_command", required=True,
                                   metavar="{show,purge,stats}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE",
                        help=f"policy file with a cache: section (default: {DEFAULT_PATH} if "
                        "it exists, else built-in defaults)")
    common.add_argument("--json", action="store_true", help="print JSON")

    show = actions.add_parser("show", parents=[common],
                              help="print a domain's cached status, probes and MTA-STS policy")
    show.add_argument("domain", metavar="DOMAIN")
    show.set_defaults(handler=_show)
    purge = actions.add_parser("purge", parents=[common],
                               help="forget one domain (status, probes, MTA-STS policy), "
                               "or the whole cache")
    purge.add_argument("domain", metavar="DOMAIN", nargs="?")
    purge.set_defaults(handler=_purge)
    stats = actions.add_parser("stats", parents=[common], help="print cache statistics")
    stats.set_defaults(handler=_stats)


def _open(args: argparse.Namespace, *, inspect: bool = False) -> StatusCache:
    """The configured cache; ``inspect``: for reading only (show, stats), a SQLite file
    is opened read-only and never repaired, so looking changes nothing."""
    settings = load(chosen_path(args.config)).cache
    if settings.backend == BackendName.MEMORY:
        raise UsageError("cache: the memory backend lives inside the milter process; "
                         "there is nothing to inspect from here")
    if settings.backend == BackendName.SQLITE and not Path(settings.path).is_file():
        raise DanemilterError(f"cache: no cache file at {settings.path}")
    if inspect and settings.backend == BackendName.SQLITE:
        backend: CacheBackend = SQLiteBackend(settings.path, settings.max_entries,
                                              read_only=True)
    else:
        backend = open_backend(settings)
    if isinstance(backend, SQLiteBackend) and backend.fallback:
        backend.close()
        why = f": {backend.problem}" if backend.problem else " (see the log)"
        raise DanemilterError(f"cache: cannot use the cache file {settings.path}{why}")
    if isinstance(backend, RedisBackend) and not backend.ping():
        backend.close()
        raise DanemilterError(f"cache: redis at {backend.url} is unreachable")
    return StatusCache(backend, settings, inspect=inspect)


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds")


def _show(args: argparse.Namespace) -> int:
    domain = normalize_domain(args.domain)
    cache = _open(args, inspect=True)
    try:
        now = time.time()
        entry = cache.lookup(domain, now)
        probes = ProbeCache(cache.backend, cache.settings, inspect=True).stored(domain, now)
        # A domain DANE decides has no policy; one without DANE may have only a policy.
        policy = StsCache(cache.backend, cache.settings.lru_entries,
                          inspect=True).policy(domain, now)
    finally:
        cache.close()
    # Whether the cached probes were taken under the cached DNS data (else unused).
    current = (entry is not None and probes is not None
               and probes[0].fingerprint == fingerprint(entry.status))
    cached = entry is not None or policy is not None
    if args.json:
        document: dict[str, Any] = {"domain": domain, "cached": cached}
        if entry is not None:
            document.update(stored_at=entry.stored_at, expires_at=entry.expires_at,
                            ttl_left=int(entry.remaining(now)), status=entry.status.to_json())
            if probes is not None:
                document["probes"] = _probes_document(*probes, current)
        document["sts"] = None if policy is None else _policy_document(policy)
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0 if cached else 1
    if entry is None:
        print(f"{domain}: {'status ' if policy is not None else ''}not cached")
    else:
        sys.stdout.write(describe(entry.status))
        print(f"  cached {_iso(entry.stored_at)}, expires {_iso(entry.expires_at)} "
              f"({int(entry.remaining(now))} s left)")
        if probes is not None:
            sys.stdout.write(_describe_probes(*probes, current))
    if policy is not None:
        print(_describe_policy(policy, now))
    return 0 if cached else 1


def _policy_document(cached: CachedPolicy) -> dict[str, Any]:
    return {"id": cached.id, "mode": str(cached.policy.mode), "mx": list(cached.policy.mx),
            "max_age": cached.policy.max_age, "fetched_at": cached.fetched_at,
            "expires_at": cached.expires_at}


def _describe_policy(cached: CachedPolicy, now: float) -> str:
    policy = cached.policy
    mx = ", ".join(policy.mx) or "(none)"
    return (f"  MTA-STS policy id {cached.id}: mode {policy.mode}, mx {mx}, max_age "
            f"{policy.max_age}: fetched {_iso(cached.fetched_at)}, expires "
            f"{_iso(cached.expires_at)} ({int(cached.expires_at - now)} s left)")


def _probes_document(probes: ProbeEntry, expires_at: float, current: bool) -> dict[str, Any]:
    return {
        "port": probes.port, "ocsp": probes.ocsp, "trust": probes.trust,
        "stored_at": probes.stored_at,
        "expires_at": expires_at, "current": current,
        "hosts": [[p.to_json() for p in host] for host in probes.probes],
    }


def _describe_probes(probes: ProbeEntry, expires_at: float, current: bool) -> str:
    stale = "" if current else " (taken under other DNS data: not used)"
    lines = [f"  TLS probes, port {probes.port}, staples {probes.ocsp}, PKIX trust "
             f"{probes.trust}: cached "
             f"{_iso(probes.stored_at)}, expires {_iso(expires_at)}{stale}"]
    lines.extend(f"    {probe_line(result)}" for host in probes.probes for result in host)
    return "\n".join(lines) + "\n"


def _purge(args: argparse.Namespace) -> int:
    domain = normalize_domain(args.domain) if args.domain is not None else None
    cache = _open(args)
    try:
        removed = cache.purge(domain)
        if domain is not None:
            # The domain's probe results go with its status: they were judged against it;
            # its MTA-STS policy too (an operator purging a domain wants it asked anew).
            # The count is of backend entries, like a purge of everything, so that a
            # domain with only a policy (show: cached) is not reported "not cached".
            removed += sum(cache.backend.delete(key)
                           for key in (probe_key(domain), sts_key(domain)))
    finally:
        cache.close()
    if args.json:
        json.dump({"domain": domain, "purged": removed}, sys.stdout)
        sys.stdout.write("\n")
    elif domain is None:
        print(f"purged {removed} cached entr{'y' if removed == 1 else 'ies'} "
              "(statuses, probes, MTA-STS policies)")
    else:
        print(f"{domain}: purged" if removed else f"{domain}: was not cached")
    return 0


def _stats(args: argparse.Namespace) -> int:
    cache = _open(args, inspect=True)
    try:
        backend = cache.backend.stats()
    finally:
        cache.close()
    if args.json:
        json.dump(backend, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for key, value in backend.items():
            print(f"{key}: {value}")
    return 0
