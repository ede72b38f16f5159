"""Benchmark: `danemilter verify` over 100 fixture domains vs posttls-finger one by one.

Not a test. Builds 100 signed fixture domains (``bench.test``), each with one MX host on
its own loopback address where a pyOpenSSL STARTTLS server listens (a mix of DANE-EE and
DANE-TA, the latter stapling a good OCSP response), then times:

1. ``python3 -m danemilter verify D1 ... D100 --json --allow-private --port P`` (one
   process, all domains, probes ``--concurrency`` at a time), twice (cold, then warm);
2. ``posttls-finger -c -l dane D:P`` once per domain, one after another.

Fairness. Both read the same signed zones from the same validating unbound. glibc (and so
posttls-finger) can only use port 53, so each posttls-finger run happens in a private
mount namespace whose /etc/resolv.conf names a relay on ``127.53.x.y:53`` that forwards
to that unbound (tests/support/posttlsfinger.py); the namespace set-up (``unshare`` +
``mount`` + ``exec``) is timed on its own with ``true`` and reported, so it can be
subtracted. posttls-finger asks TLSA at ``_<port>._tcp.<mx>``; the zone publishes the same
records there. posttls-finger does not check OCSP; verify does (for the DANE-TA half).
Every verdict is checked: all 100 domains must verify under both tools.

    python3 bench/verify_vs_posttls_finger.py [--domains 100] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import Figure

from tests.support.posttlsfinger import PosttlsFinger, start_relay
from tests.support.probe_world import (
    Host,
    Pki,
    Server,
    Site,
    World,
    retry_port,
    spki_sha256,
)


def sites(count: int) -> list[Site]:
    p = Pki()
    result = []
    for n in range(count):
        label = f"d{n:03d}"
        mx = f"mx.{label}.bench.test"
        if n % 2 == 0:
            leaf = p.ee([mx])
            host = Host(f"mx.{label}", Server([leaf.cert], leaf.key),
                        (f"3 1 1 {spki_sha256(leaf.cert)}",))
        else:
            leaf = p.ta_leaf([mx], ocsp_url="http://ocsp.bench.test/")
            host = Host(f"mx.{label}", Server([leaf.cert, p.ca.cert], leaf.key,
                                              staple=p.staple(leaf.cert, "good")),
                        (p.ta_record(),))
        result.append(Site(label, [host]))
    return result


def run_verify(world: World, domains: list[str], concurrency: int) -> tuple[float, list[str]]:
    command = [sys.executable, "-m", "danemilter", "verify", *domains, "--json",
               "--allow-private", "--port", str(world.port), "--resolver", world.resolver,
               "--timeout", "5", "--concurrency", str(concurrency)]
    began = time.monotonic()
    proc = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
    elapsed = time.monotonic() - began
    if proc.returncode != 0:
        raise SystemExit(f"verify failed ({proc.returncode}): {proc.stderr}")
    document = json.loads(proc.stdout)
    bad = [d["domain"] for d in document
           if d["status"] != "dane"
           or any(p["dane"] != "verified" or p["ocsp"] not in ("good", "not-requested")
                  for h in d["hosts"] for p in h["probes"])]
    return elapsed, bad


def measure(count: int, concurrency: int) -> tuple[list[Figure], list[str]]:
    lines: list[str] = []
    build_began = time.monotonic()
    # retry_port is a generator: closing it leaves the world (servers and test bed stop).
    worlds = cast(Generator[World, None, None],
                  retry_port(lambda: World(sites(count), zone="bench.test", network="127.0.6")))
    try:
        world = next(worlds)
        assert world.bed is not None
        lines.append(f"fixture: {count} domains, servers on 127.0.6.x:{world.port}, "
                     f"built in {time.monotonic() - build_began:.1f} s")
        domains = [world.domain(s) for s in world.sites]

        cold, bad = run_verify(world, domains, concurrency)
        if bad:
            raise SystemExit(f"verify did not verify: {bad[:5]}")
        warm, bad = run_verify(world, domains, concurrency)
        if bad:
            raise SystemExit(f"verify did not verify: {bad[:5]}")
        serial, bad = run_verify(world, domains, 1)
        if bad:
            raise SystemExit(f"verify did not verify: {bad[:5]}")

        relay = start_relay((world.bed.resolver_address, world.bed.resolver_port))
        try:
            finger = PosttlsFinger(Path(tempfile.mkdtemp(prefix="ptf-bench-")), relay.listen)
            overhead_began = time.monotonic()
            for _ in domains:
                subprocess.run([*finger.command("x")[:9], "true"], env=finger.env(),
                               check=True, timeout=30)
            overhead = time.monotonic() - overhead_began
            began = time.monotonic()
            failures = []
            for domain in domains:
                result = finger.run(f"{domain}:{world.port}", timeout=5)
                if result.verdict != "verified":
                    failures.append((domain, result.output[-300:]))
            sequential = time.monotonic() - began
        finally:
            relay.stop()
        if failures:
            raise SystemExit(f"posttls-finger did not verify {len(failures)}: {failures[:2]}")

        net = sequential - overhead
        lines += [
            f"danemilter verify, one process, concurrency {concurrency}: "
            f"{cold:.2f} s (first run), {warm:.2f} s (second run); "
            f"with --concurrency 1: {serial:.2f} s",
            f"posttls-finger, {len(domains)} runs one after another: {sequential:.2f} s "
            f"(of which namespace set-up ~{overhead:.2f} s)",
            f"ratio posttls-finger / verify (second run): {sequential / warm:.1f}x; "
            f"without the namespace set-up: {net / warm:.1f}x; first run: "
            f"{sequential / cold:.1f}x",
            f"per domain: verify {warm / len(domains) * 1000:.1f} ms, "
            f"posttls-finger {sequential / len(domains) * 1000:.1f} ms "
            f"({net / len(domains) * 1000:.1f} ms without set-up); cpus={os.cpu_count()}",
        ]
        # The target is judged on the first (cold) run without the namespace set-up:
        # the least favourable pairing for verify.
        figures = [Figure("4 verify", f"{count} domains: posttls-finger one by one / "
                          "verify (first run, set-up excluded)", f"{cold:.2f} s",
                          f"{net:.2f} s (posttls-finger)", net / cold, ">= 5x",
                          net / cold >= 5, "posttls-finger time / verify time"),
                   Figure("4 verify", f"{count} domains: same, verify second run",
                          f"{warm:.2f} s", f"{net:.2f} s (posttls-finger)", net / warm,
                          ratio_note="posttls-finger time / verify time")]
        return figures, lines
    finally:
        worlds.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    _, lines = measure(args.domains, args.concurrency)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
