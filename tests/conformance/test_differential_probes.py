"""Differential probes: ``danemilter verify`` against Postfix's ``posttls-finger -l dane``.

A matrix of one-MX domains (tests/support/probe_netns.py): one host per divergence class
of issue 12 (damaged Full(0) record only, self-signed leaf under DANE-TA, expired
self-signed anchor sent, CA:FALSE anchor, cross-signed alternative path, two DANE-TA
records for one CA), then random hosts (tests/support/dane_cases.py) up to HOSTS. The
whole world (DNSSEC bed, STARTTLS servers, DNS relay on port 53, both clients) runs in a
private network and mount namespace, so posttls-finger resolves through the bed and
nothing touches the host's network or resolv.conf.

Host by host, what Postfix would do must be what we say:

* ``Verified TLS connection`` <-> probe ``verified``, at the same depth (posttls-finger's
  "Matched DANE ... at depth N");
* ``all TLSA records unusable, fallback to unauthenticated TLS`` (data OpenSSL will not
  load) or ``no usable TLSA records found, resorting to "secure"`` (parameters Postfix
  drops at lookup) <-> status ``unusable-tlsa`` with probe ``not-applicable``: the smtp
  client then delivers over mandatory unauthenticated TLS (postconf(5),
  smtp_tls_security_level ``dane``); only posttls-finger itself tries "secure" instead;
* ``Untrusted TLS connection`` otherwise <-> probe ``mismatch`` (Postfix defers).

No divergence is allowed here: Postfix refuses partial-label wildcards as we do.
The seed is printed (and in every failure message); set DANEMILTER_DIFF_SEED to replay.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.support import differential

HOSTS = 16
CLASS_HOSTS = 6
ROOT = Path(__file__).resolve().parents[2]
_DEPTH = re.compile(r"Matched DANE .*? at depth (\d+)")


def postfix_says(output: str) -> tuple[str, int | None]:
    if "Verified TLS connection established" in output:
        found = _DEPTH.search(output)
        return "verified", int(found.group(1)) if found else None
    if "all TLSA records unusable" in output and "Untrusted TLS connection" in output:
        return "unusable", None
    if 'no usable TLSA records found, resorting to "secure"' in output:
        # posttls-finger(1) -l: "if ... all the records found are unusable, the secure level
        # will be used instead"; the smtp client delivering the mail does not do that:
        # postconf(5) smtp_tls_security_level dane, "When TLSA records are found, but are
        # all unusable the effective security level is "encrypt"". That is our verdict.
        return "unusable", None
    if "Untrusted TLS connection established" in output:
        return "mismatch", None
    return "no-tls", None


def we_say(domain: dict[str, Any]) -> tuple[str, int | None]:
    probe = domain["hosts"][0]["probes"][0]
    if domain["status"] == "unusable-tlsa" and probe["dane"] == "not-applicable":
        return "unusable", None
    words = {"verified": "verified", "mismatch": "mismatch", "failed": "no-tls"}
    verdict = words.get(probe["dane"], probe["dane"])
    return verdict, probe["depth"] if verdict == "verified" else None


@pytest.mark.timeout(300)
def test_verify_agrees_with_posttls_finger(tmp_path: Path) -> None:
    seed = differential.seed()
    print(f"differential probes seed={seed} hosts={HOSTS}")
    out = tmp_path / "result.json"
    began = time.monotonic()
    done = subprocess.run(
        ["unshare", "-m", "-n", "--propagation", "private", sys.executable, "-m",
         "tests.support.probe_netns", str(seed), str(HOSTS), str(out)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
        text=True, timeout=240, check=False)
    elapsed = time.monotonic() - began
    assert done.returncode == 0, f"seed={seed}: {done.stdout}{done.stderr}"
    document = json.loads(out.read_text())
    hosts = document["hosts"]
    assert len(hosts) == HOSTS
    outcomes: Counter[str] = Counter()
    disagreements = []
    for host in hosts:
        ours, theirs = we_say(host["ours"]), postfix_says(host["finger"])
        if ours == theirs:
            outcomes[f"agree-{theirs[0]}"] += 1
            continue
        disagreements.append(f"{host['host']} {host['kinds']} records={host['records']}: "
                             f"ours={ours} {host['ours']['hosts'][0]['probes'][0]['reason']}"
                             f" posttls-finger={theirs}\n{host['finger']}")
    print(f"outcomes {dict(sorted(outcomes.items()))} in {elapsed:.1f} s")
    print("hosts " + "; ".join(f"{h['host']}={','.join(h['kinds'][:3])}" for h in hosts))
    assert not disagreements, f"seed={seed}: " + "\n".join(disagreements)
    classes = {h["kinds"][0]: we_say(h["ours"])[0] for h in hosts[:CLASS_HOSTS]}
    assert classes == {
        "class-damaged-full-only": "unusable",
        "class-self-signed-leaf-dane-ta": "mismatch",
        "class-expired-root-anchor-sent": "mismatch",
        "class-ca-false-anchor": "mismatch",
        "class-cross-signed-alternative": "mismatch",
        "class-two-dane-ta-records-one-ca": "verified",
    }, f"seed={seed}"
    assert we_say(hosts[CLASS_HOSTS - 1]["ours"]) == ("verified", 1)
    assert elapsed < 120, f"seed={seed}: {elapsed:.1f} s"
