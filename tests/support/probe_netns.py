"""The probe differential's world, run inside a private network (and mount) namespace.

    unshare -m -n --propagation private python -m tests.support.probe_netns SEED HOSTS OUT

Inside, loopback is brought up and everything runs there and nowhere else: the DNSSEC
bed (nsd + unbound), one STARTTLS server per MX host (tests/support/probe_world.py) with
a chain and TLSA set generated from SEED (tests/support/dane_cases.py), a DNS relay on
port 53 for glibc, ``danemilter verify --json`` (one run over every domain) and
``posttls-finger -l dane`` (per domain, with the bed as its resolver through a private
resolv.conf). The host's network, ports and /etc/resolv.conf are never touched.
Writes one JSON document to OUT: the seed, and per host its case tags, records, our
probe and domain status and posttls-finger's output.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.support import dane_cases, pki
from tests.support.posttlsfinger import PosttlsFinger, start_relay
from tests.support.probe_world import Host, Server, Site, World

ZONE = "diff.test"
DAY = timedelta(days=1)
PROBE_TIMEOUT = 5


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _digest_record(usage: int, selector: int, mtype: int, cert: x509.Certificate) -> str:
    data = _der(cert) if selector == 0 else cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if mtype == 1:
        data = hashlib.sha256(data).digest()
    elif mtype == 2:
        data = hashlib.sha512(data).digest()
    return f"{usage} {selector} {mtype} {data.hex()}"


def class_cases(now: datetime) -> list[dane_cases.DaneCase]:
    """One host for each divergence class of issue 12, as Postfix sees it."""
    made: list[dane_cases.DaneCase] = []

    def add(kind: str, chain: list[pki.Issued], records: list[str]) -> None:
        number = len(made)
        made.append(dane_cases.DaneCase(
            number, [c.cert for c in chain], chain[0].key_pem(), records,
            f"mx{number}.{ZONE}", False, [f"class-{kind}"]))

    def leaf(issuer: pki.Issued | None) -> pki.Issued:
        return pki.make_leaf(issuer, [f"mx{len(made)}.{ZONE}"])

    own = leaf(None)
    add("damaged-full-only", [own], [f"3 0 0 {_der(own.cert)[:-9].hex()}"])
    own = leaf(None)
    add("self-signed-leaf-dane-ta", [own], [_digest_record(2, 0, 1, own.cert)])
    old_root = pki.make_ca("Expired Root", not_before=now - 40 * DAY, not_after=now - DAY)
    middle = pki.make_ca("Issuer Under Expired Root", issuer=old_root,
                         not_after=now + 30 * DAY)
    add("expired-root-anchor-sent", [leaf(middle), middle, old_root],
        [_digest_record(2, 0, 1, old_root.cert)])
    root = pki.make_ca("Class Root")
    plain = pki.make_ca("Not A CA", issuer=root, ca=False)
    add("ca-false-anchor", [leaf(plain), plain], [_digest_record(2, 1, 1, plain.cert)])
    first, named = pki.make_ca("First Root"), pki.make_ca("Named Root")
    shared = pki.make_ca("Shared Issuer", issuer=first)
    cross = pki.make_ca("Shared Issuer", issuer=named, key=shared.key)
    add("cross-signed-alternative", [leaf(shared), shared, cross, named],
        [_digest_record(2, 0, 1, named.cert)])
    issuer = pki.make_ca("Twice Named Issuer", issuer=root)
    add("two-dane-ta-records-one-ca", [leaf(issuer), issuer],
        [_digest_record(2, 1, 2, issuer.cert), _digest_record(2, 1, 0, issuer.cert)])
    return made


def build_sites(seed: int, count: int) -> tuple[list[Site], list[dane_cases.DaneCase]]:
    """The class hosts, then random ones up to ``count``: one-MX domains
    ``d<i>.diff.test`` -> ``mx<i>.diff.test``."""
    rng = random.Random(seed)
    pool = dane_cases.KeyPool(rng, rsa_keys=3, ec_keys=8)
    now = dane_cases.now()
    sites: list[Site] = []
    cases = class_cases(now)
    for number in range(len(cases), count):
        cases.append(dane_cases.make_case(number, rng, pool, now, name=f"mx{number}.{ZONE}"))
    for number, case in enumerate(cases):
        if not case.openssl_records():
            # posttls-finger would see no usable usage at all; make it a DANE-EE host
            # that is meant to verify, so every host has something to judge.
            case.records.append(dane_cases.ee_record(case.chain[0]))
            case.kinds.append("added-dane-ee")
        key = serialization.load_pem_private_key(case.leaf_key_pem, None)
        host = Host(f"mx{number}", Server(case.chain, key), tuple(case.records))
        sites.append(Site(f"d{number}", [host]))
    return sites, cases


def run(seed: int, count: int, out: Path) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    sites, cases = build_sites(seed, count)
    with World(sites, zone=ZONE) as world:
        assert world.bed is not None
        domains = [world.domain(site) for site in sites]
        verify = subprocess.run(
            [sys.executable, "-m", "danemilter", "verify", *domains, "--json",
             "--allow-private", "--resolver", world.resolver, "--port", str(world.port),
             "--timeout", str(PROBE_TIMEOUT)],
            capture_output=True, text=True, timeout=120, check=False)
        ours = {d["domain"]: d for d in json.loads(verify.stdout)}
        relay = start_relay((world.bed.resolver_address, world.bed.resolver_port))
        try:
            finger = PosttlsFinger(out.parent / "posttls-finger", relay.listen)
            with ThreadPoolExecutor(4) as executor:
                fingered = list(executor.map(
                    lambda d: finger.run(f"{d}:{world.port}", timeout=PROBE_TIMEOUT,
                                         verbose=True), domains))
        finally:
            relay.stop()
    hosts: list[dict[str, Any]] = []
    for site, case, domain, theirs in zip(sites, cases, domains, fingered, strict=True):
        hosts.append({
            "domain": domain, "host": f"{site.hosts[0].name}.{ZONE}", "kinds": case.kinds,
            "records": case.records, "partial_wildcard": case.partial_wildcard,
            "ours": ours[domain], "finger": theirs.output,
        })
    out.write_text(json.dumps({"seed": seed, "verify_exit": verify.returncode,
                               "verify_stderr": verify.stderr, "hosts": hosts}))


if __name__ == "__main__":
    run(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
