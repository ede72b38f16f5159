"""The MTA's side of the milter protocol in plain Python, for tests: packets made with
danemilter's own codec (encode_command / decode_responses), over a real socket.

Every read has a deadline: a milter that does not answer fails the test, it never hangs.
"""

from __future__ import annotations

import functools
import operator
import socket
import struct
import time
from types import TracebackType

from danemilter.milter import protocol as p

ALL_ACTIONS = p.Action(0x1FF)
# Every step Postfix 3.x knows, offered as it offers them (skip and no-reply flags).
ALL_STEPS = functools.reduce(operator.or_, (s for s in p.Step if s < p.Step.MDS_256K))
# What the milter must ask for to work: header edits and quarantine.
NEEDED_ACTIONS = p.Action.ADDHDRS | p.Action.CHGHDRS | p.Action.QUARANTINE


class MilterClosed(AssertionError):
    """The milter closed the connection where an answer was expected."""


def open_socket(listen: str, timeout: float) -> socket.socket:
    """A connected socket to a libmilter-style ``unix:/PATH`` or ``inet:PORT@HOST``."""
    scheme, _, rest = listen.partition(":")
    if scheme == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address: str | tuple[str, int] = rest
    else:
        port, _, host = rest.partition("@")
        sock = socket.socket(socket.AF_INET6 if scheme == "inet6" else socket.AF_INET,
                             socket.SOCK_STREAM)
        address = (host or "127.0.0.1", int(port))
    sock.settimeout(timeout)
    try:
        sock.connect(address)
    except OSError:
        sock.close()
        raise
    return sock


def _negotiated(data: bytes) -> tuple[int, p.Action, p.Step, dict[int, str]]:
    version, actions, steps = struct.unpack_from(">III", data)
    macros: dict[int, str] = {}
    rest = data[12:]
    while rest:
        (stage,) = struct.unpack_from(">I", rest)
        names, _, rest = rest[4:].partition(b"\0")
        macros[stage] = names.decode()
    return version, p.Action(actions), p.Step(steps), macros


def parse_negotiation(response: p.Response) -> tuple[int, p.Action, p.Step, dict[int, str]]:
    """The milter's negotiation reply: version, actions, steps, macro list per stage."""
    assert response.code == b"O", response
    return _negotiated(response.data)


class MtaClient:
    """One milter connection, as an MTA holds it."""

    def __init__(self, listen: str, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self.sock = open_socket(listen, timeout)
        self._rest = b""
        self.steps = p.Step(0)
        self.macros: dict[int, str] = {}

    def __enter__(self) -> MtaClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, *items: p.Command | bytes) -> None:
        self.sock.sendall(b"".join(item if isinstance(item, bytes) else p.encode_command(item)
                                   for item in items))

    def read(self, count: int = 1) -> list[p.Response]:
        """The next ``count`` responses (MilterClosed on EOF, TimeoutError past the deadline)."""
        deadline = time.monotonic() + self.timeout
        responses, self._rest = p.decode_responses(self._rest)
        while len(responses) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{len(responses)} of {count} milter responses in "
                                   f"{self.timeout} s")
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            if not data:
                raise MilterClosed(f"the milter closed the connection after {responses}")
            more, self._rest = p.decode_responses(self._rest + data)
            responses.extend(more)
        if len(responses) > count:
            raise AssertionError(f"{count} responses expected, got {responses}")
        return responses

    def nothing_pending(self, wait: float = 0.05) -> bool:
        """Whether the milter sent nothing in the next ``wait`` seconds (no stray answer)."""
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(65536, socket.MSG_PEEK)
        except TimeoutError:
            return not self._rest
        finally:
            self.sock.settimeout(self.timeout)
        return not data and not self._rest

    def closed_within(self, seconds: float) -> bool:
        """Whether the milter closes the connection within ``seconds`` (what it still
        sends is discarded); a reset counts as closed."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                if not self.sock.recv(65536):
                    return True
            except TimeoutError:
                return False
            except ConnectionResetError:
                return True
        return False

    def negotiate(self, actions: p.Action = ALL_ACTIONS, steps: p.Step = ALL_STEPS,
                  version: int = p.MILTER_VERSION) -> p.Step:
        """Option negotiation; returns (and keeps) the steps the milter agreed on."""
        self.send(p.OptionNegotiation(version, actions, steps))
        (reply,) = self.read()
        _, _, self.steps, self.macros = parse_negotiation(reply)
        return self.steps

    def answered(self, command: p.Command, no_reply: p.Step) -> list[p.Response]:
        """Send ``command``; its reply, or none when ``no_reply`` was negotiated."""
        self.send(command)
        return [] if self.steps & no_reply else self.read()
