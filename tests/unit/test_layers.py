"""The package's shape (DESIGN.md "Shape"): pure core modules load no I/O library, and
the configuration has no import cycle with the layers that use it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

PURE_CORE = [
    "danemilter.names",
    "danemilter.config.model",
    "danemilter.deadline",
    "danemilter.status",
    "danemilter.tlsa",
    "danemilter.ocsp",
    "danemilter.certs",
    "danemilter.judge",
    "danemilter.probe_result",
    "danemilter.policy",
    "danemilter.milter.protocol",
    "danemilter.milter.session",
]

# What "I/O" means here: network and TLS stacks, databases, the event loop, and our own
# I/O edges. The socket module itself (and selectors, which it imports) is absent from the
# list on purpose: cryptography's x509 package imports email.utils, which imports socket
# (for getfqdn) without using it. YAML is a parser, not I/O: the config loader is core.
IO_MODULES = {"ssl", "asyncio", "OpenSSL", "redis", "sqlite3", "_sqlite3",
              "http.client", "urllib.request", "dns.asyncquery", "dns.query",
              "Milter", "danemilter.resolver", "danemilter.dane",
              "danemilter.probe", "danemilter.cache", "danemilter.service"}


def loaded_by(module: str) -> set[str]:
    code = (f"import sys, json; import {module}; "
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    return set(json.loads(out))


@pytest.mark.parametrize("module", PURE_CORE)
def test_pure_core_module_loads_no_io(module: str) -> None:
    loaded = loaded_by(module)
    leaked = sorted(m for m in loaded
                    if m in IO_MODULES or m.split(".")[0] in IO_MODULES
                    or any(m.startswith(io + ".") for io in IO_MODULES))
    assert leaked == [], f"{module} loads {leaked}"


def test_the_io_check_can_fail() -> None:
    # The check above must see an I/O module when one is loaded.
    assert "dns.asyncquery" in loaded_by("danemilter.resolver")
    assert "OpenSSL" in loaded_by("danemilter.probe")


def test_config_imports_no_other_layer() -> None:
    loaded = loaded_by("danemilter.config")
    ours = sorted(m for m in loaded if m.startswith("danemilter"))
    # danemilter.files: the one regular-file reader (a leaf importing only errors).
    assert ours == ["danemilter", "danemilter.config", "danemilter.config.loader",
                    "danemilter.config.model", "danemilter.errors", "danemilter.files",
                    "danemilter.names"]
