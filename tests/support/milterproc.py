"""``danemilter run`` as a real process on a unix socket, with reload and log access."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support.ports import free_port, unix_socket_accepts
from tests.support.postfix import wait_for

_START_TIMEOUT = 20.0
_STARTED = "danemilter: INFO listening on "


class MilterProcess:
    def __init__(self, config: str, log_level: str = "debug") -> None:
        self.log_level = log_level
        self.root = Path(tempfile.mkdtemp(prefix="dm-milter-"))
        self.root.chmod(0o755)  # Postfix's smtpd (user postfix) connects to the socket
        self.socket = self.root / "milter.sock"
        self.config_path = self.root / "danemilter.yaml"
        self.log_path = self.root / "milter.log"
        self.cache_path = self.root / "cache.sqlite3"
        self.process: subprocess.Popen[bytes] | None = None
        self.write_config(config)

    @property
    def listen(self) -> str:
        return f"unix:{self.socket}"

    @property
    def postfix_address(self) -> str:
        return f"unix:{self.socket}"

    def write_config(self, text: str) -> None:
        header = (f"listen: {self.listen}\nsocket_mode: \"0666\"\n"
                  f"log_level: {self.log_level}\n"
                  f"cache: {{backend: sqlite, path: {self.cache_path}}}\n")
        if "resolver_check" not in text:
            # The bed's resolver validates test. only, and no test has the root zone:
            # tests of the self-check say resolver_check themselves.
            header += "resolver_check: off\n"
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(header + text)
        os.replace(tmp, self.config_path)

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "danemilter", "run", "--config", str(self.config_path)],
            stdout=log, stderr=log,
        )
        log.close()
        wait_for(self._ready, _START_TIMEOUT, "the milter socket and its start-up line")

    def _ready(self) -> bool:
        # The milter socket accepts (into its backlog) as soon as it is bound, before the
        # policy socket is: the "listening on" line comes once the daemon serves both.
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"milter exited with {self.process.returncode}: {self.log()}")
        return self._accepting() and _STARTED in self.log()

    def _accepting(self) -> bool:
        return self.socket.exists() and unix_socket_accepts(self.socket)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def reload(self, config: str | None = None, expect: str = "reloaded") -> None:
        """Rewrite the policy (if given), SIGHUP, and wait until the milter logged ``expect``."""
        before = self.log().count(expect)
        if config is not None:
            self.write_config(config)
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)
        wait_for(lambda: self.log().count(expect) > before, 10, f"milter log line {expect!r}")

    def stop(self) -> int:
        code = 0
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            code = self.process.wait(timeout=20)
            self.process = None
        shutil.rmtree(self.root, ignore_errors=True)
        return code


class InetMilterProcess(MilterProcess):
    """The same ``danemilter run``, listening on ``inet:PORT@127.0.0.1`` (a fresh port)."""

    def __init__(self, config: str, log_level: str = "debug") -> None:
        self.port = free_port()
        super().__init__(config, log_level)

    @property
    def listen(self) -> str:
        return f"inet:{self.port}@127.0.0.1"

    @property
    def postfix_address(self) -> str:
        return f"inet:127.0.0.1:{self.port}"

    def _accepting(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True
