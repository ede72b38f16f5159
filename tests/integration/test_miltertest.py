"""OpenDKIM's miltertest as an independent protocol peer (tests/miltertest/danemilter.lua),
against each milter transport."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.dnsbed import DnssecTestBed
from tests.support.milterproc import MilterProcess
from tests.support.postfix import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SCRIPT = Path(__file__).resolve().parents[1] / "miltertest" / "danemilter.lua"


@pytest.mark.parametrize("transport", ["asyncio", "libmilter"])
def test_miltertest_script_passes(dns_bed: DnssecTestBed, transport: str) -> None:
    milter = MilterProcess(
        f"transport: {transport}\n"
        f"resolver: {{address: 127.0.0.1, port: {dns_bed.resolver_port}, timeout: 1}}\n"
        "policy:\n  default: {dane: require, on_fail: reject}\n")
    milter.start()
    try:
        wait_for(lambda: f"(transport {transport}," in milter.log(), 10,
                 f"the milter listening through transport {transport}")
        result = subprocess.run(
            ["miltertest", "-s", str(SCRIPT)],
            env={**os.environ, "DANEMILTER_SOCKET": milter.listen},
            capture_output=True, text=True, timeout=45, check=False,
        )
    finally:
        code = milter.stop()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "all checks passed" in output, output
    assert code == 0
