"""What the differential suites (tests/conformance/test_differential_*.py) share: the seed
and the in-process run of a ``danemilter`` command with JSON output."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
from typing import Any

from danemilter.cli import main

SEED_VARIABLE = "DANEMILTER_DIFF_SEED"


def seed() -> int:
    """A fresh seed, or the one in $DANEMILTER_DIFF_SEED to replay a run."""
    return int(os.environ.get(SEED_VARIABLE) or random.SystemRandom().randrange(2**32))


def cpu_seconds() -> float:
    """CPU time of this process and of its children waited for so far."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def run_json(argv: list[str]) -> tuple[int, Any]:
    """``danemilter ARGV`` through its entry point; its exit code and parsed stdout.

    sys.stdout is redirected, so call it from one thread at a time.
    """
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, json.loads(out.getvalue())
