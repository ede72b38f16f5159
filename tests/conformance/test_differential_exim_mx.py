"""Differential MX-pattern matching: Exim's reading of the ``sts_ignore_hosts`` field
against ``mtasts.mx_matches``, the rule the milter applies at RCPT (RFC 8461 §4.1).

At delivery Exim decides which MX hosts of an enforce-mode domain it may use from the
policy socket's Exim line (packaging/exim/routers.conf): ``${extract}`` takes the field
out of the line (undoing its quoting), and the field is a host list of negated regexes
ending in ``*`` for ``ignore_target_hosts``. Each random case here is one policy (1-3
``mx`` patterns, parsed as a fetched policy is, upper case and final dots included) and
one MX host name, derived from a pattern so that about half should match: the label a
wildcard covers, an extra or a missing label, a changed character, a dot replaced,
another case. A real
Exim expands, for every case in one ``exim -be`` run, the line's field with the same
``${extract}`` and the host list's first-match rule (``forany`` over its items: a
negated regex that matches keeps the host; the final ``*`` ignores it). Every case must
agree with ``mx_matches`` over any of the patterns; there is no known divergence.

The seed is printed (and in every failure message); set DANEMILTER_DIFF_SEED to replay.
"""

from __future__ import annotations

import random
import string
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from danemilter.mtasts import mx_matches, parse_policy
from danemilter.policymap.answers import RcptLine, SecureMatch
from tests.support import differential
from tests.support.exim import PrivateExim

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CASES = 400
_CHARS = string.ascii_lowercase + string.digits


def _label(rng: random.Random) -> str:
    size = rng.choice([1, 2, 3, 5, 8, 12])
    middle = "".join(rng.choice(_CHARS + "-") for _ in range(max(0, size - 2)))
    ends = [rng.choice(_CHARS) for _ in range(min(size, 2))]
    return (ends[0] + middle + ends[1]) if size > 1 else ends[0]


def _pattern(rng: random.Random) -> str:
    labels = [_label(rng) for _ in range(rng.randint(1, 4))]
    name = ".".join(labels)
    if rng.random() < 0.5:
        name = "*." + name
    if rng.random() < 0.2:
        name = name.upper() if rng.random() < 0.5 else name.title()
    return name + ("." if rng.random() < 0.1 else "")


def _host(rng: random.Random, pattern: str) -> str:
    base = pattern.rstrip(".")
    if base.startswith("*."):
        base = _label(rng) + base[1:]
    change = rng.choice(["same", "same", "same", "extra", "drop", "char", "dot", "case"])
    labels = base.split(".")
    if change == "extra":
        labels.insert(0, _label(rng))
    elif change == "drop" and len(labels) > 1:
        labels.pop(0)
    elif change == "char":
        index = rng.randrange(len(labels))
        label = labels[index]
        spot = rng.randrange(len(label))
        labels[index] = label[:spot] + rng.choice(_CHARS) + label[spot + 1:]
    host = ".".join(labels)
    if change == "dot" and "." in host:
        # What an unescaped "." in the regex would let through.
        spot = rng.choice([i for i, c in enumerate(host) if c == "."])
        host = host[:spot] + rng.choice(_CHARS) + host[spot + 1:]
    return host.swapcase() if change == "case" else host.lower()


def _exim_keeps(field_line: str, host: str) -> str:
    # \N...\N: Exim takes the text literally (no $ or \ processing), as it takes the
    # socket's answer; ${extract} then undoes the line's quoting.
    field = f"${{extract{{sts_ignore_hosts}}{{\\N{field_line}\\N}}}}"
    return ("${if forany{" + field + "}{and{{eq{${substr_0_1:$item}}{!}}"
            "{match{\\N" + host + "\\N}{${substr_1:$item}}}}}{kept}{ignored}}")


def test_exim_keeps_exactly_the_hosts_mx_matches_keeps() -> None:
    seed = differential.seed()
    print(f"seed {seed}")
    rng = random.Random(seed)
    cases = []
    for _ in range(CASES):
        patterns = [_pattern(rng) for _ in range(rng.randint(1, 3))]
        policy = parse_policy("version: STSv1\r\nmode: enforce\r\n"
                              + "".join(f"mx: {p}\r\n" for p in patterns)
                              + "max_age: 86400\r\n")
        host = _host(rng, rng.choice(patterns))
        line = RcptLine("accept", "none", SecureMatch(policy.mx)).encode().decode().strip()
        expected = any(mx_matches(p, host) for p in policy.mx)
        cases.append((policy.mx, host, line, expected))

    with tempfile.TemporaryDirectory(prefix="dm-exim-mx-") as root:
        resolv = Path(root) / "resolv.conf"
        resolv.write_text("nameserver 127.0.0.1\n")
        exim = PrivateExim(Path(root) / "unused.sock", resolv)
        exim.configure()
        try:
            # exim -be: one expansion per line in, one result per line out.
            expansions = "".join(_exim_keeps(line, host) + "\n"
                                 for _, host, line, _ in cases)
            done = subprocess.run(exim.command("-be"), input=expansions,
                                  capture_output=True, text=True, timeout=60, check=False)
        finally:
            exim.stop()
    answers = [line.removeprefix("> ").strip() for line in done.stdout.splitlines()
               if line.strip() and line.strip() != ">"]
    assert len(answers) == len(cases), (seed, done.stdout[-2000:], done.stderr[-2000:])

    tally: Counter[str] = Counter()
    wrong = []
    for (patterns, host, line, expected), answer in zip(cases, answers, strict=True):
        tally[answer] += 1
        if answer != ("kept" if expected else "ignored"):
            wrong.append((patterns, host, answer, line))
    print(f"seed {seed}: {dict(tally)}")
    assert not wrong, (seed, wrong[:5])
    # Both outcomes well represented, or the generator proves nothing.
    assert min(tally["kept"], tally["ignored"]) >= CASES // 5, (seed, tally)
