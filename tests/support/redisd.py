"""A private redis-server on a fresh loopback port, for tests and benchmarks.

Readiness is the server's own "Ready to accept connections" line followed by a PING,
never a sleep. ``kill()`` is SIGKILL (an outage); ``start()`` again reuses the port.
"""

from __future__ import annotations

import os
import selectors
import shutil
import subprocess
import time

import redis

from tests.support.ports import free_port

_READY = b"Ready to accept connections"


class RedisServerError(RuntimeError):
    pass


class RedisServer:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._fixed_port = port is not None
        self._started_once = False
        self.process: subprocess.Popen[bytes] | None = None
        self.output: list[str] = []
        self._drain: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> None:
        """Start and wait until ready. A first start that loses its port to another
        program (the port was free when chosen) tries a fresh port; a restart keeps it."""
        for attempt in range(3):
            try:
                self._start(timeout)
            except RedisServerError:
                if self._started_once or self._fixed_port or attempt == 2:
                    raise
                self.port = free_port()
            else:
                self._started_once = True
                return

    def _start(self, timeout: float) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisServerError("redis-server is not installed")
        self.process = subprocess.Popen(
            [binary, "--save", "", "--appendonly", "no", "--port", str(self.port),
             "--bind", "127.0.0.1", "--daemonize", "no", "--loglevel", "notice"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self.process.stdout is not None
        # Raw reads: a buffered readline could hold the ready line while select() waits.
        fd = self.process.stdout.fileno()
        output = b""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while _READY not in output:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    self.output.append(output.decode(errors="replace"))
                    self.kill()
                    raise RedisServerError("redis-server did not become ready:\n"
                                           + self.output[-1][-2000:])
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.output.append(output.decode(errors="replace"))
                    self.kill()
                    raise RedisServerError("redis-server exited:\n" + self.output[-1][-2000:])
                output += chunk
        self.output.append(output.decode(errors="replace"))
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout)
        try:
            if not client.ping():
                raise RedisServerError("redis-server does not answer PING")
        finally:
            client.close()
        # Keep draining its output so a chatty server never blocks on a full pipe.
        self._drain = subprocess.Popen(["cat"], stdin=self.process.stdout,
                                       stdout=subprocess.DEVNULL)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def kill(self) -> None:
        """SIGKILL: the server vanishes as in a crash (no persistence is configured)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.process = None
        if self._drain is not None:
            self._drain.wait(timeout=10)
            self._drain = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None
