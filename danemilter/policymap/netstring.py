"""The policy socket's wire formats, sans I/O: bytes in, typed requests out.

Two clients share one socket, told apart by the first octet of a connection:

* Postfix socketmap_table(5): netstrings ``LEN:NAME KEY,`` (many per connection),
  answered with one netstring each (:func:`netstring`);
* Exim ``${readsocket}``: one line ``VERB ARGUMENT\\n`` (then Exim half-closes), answered
  with one line and the close.

A digit starts a netstring, anything else a line. Whatever does not parse raises
:class:`NetstringError`; the server closes that one connection.
"""

from __future__ import annotations

from dataclasses import dataclass

from danemilter.errors import InputError

# socketmap_table(5): Postfix reads replies of up to 100000 octets.
MAX_REPLY = 100_000


class NetstringError(InputError):
    """A request that is not a netstring of ``NAME KEY`` or a line of ``VERB ARGUMENT``."""


@dataclass(frozen=True, slots=True)
class SocketmapQuery:
    name: str  # the map name after the socket path in socketmap:unix:PATH:NAME
    key: str


@dataclass(frozen=True, slots=True)
class LineQuery:
    verb: str
    argument: str


Request = SocketmapQuery | LineQuery


def netstring(data: bytes) -> bytes:
    return b"%d:%s," % (len(data), data)


def _text(raw: bytes, what: str) -> str:
    if b"\0" in raw:
        raise NetstringError(f"NUL in {what}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise NetstringError(f"{what} is not UTF-8") from None


class RequestDecoder:
    """One connection's requests; ``max_request`` bounds one request (both formats)."""

    def __init__(self, max_request: int) -> None:
        self.max_request = max_request
        self._digits = len(str(max_request))
        self._buffer = bytearray()
        self.mode: str | None = None  # "netstring" or "line", fixed by the first octet
        self._done = False
        # Bad input after good requests in one read: those are returned, and this
        # is raised by the next call (the server answers them, then closes).
        self.error: NetstringError | None = None

    def feed(self, data: bytes) -> list[Request]:
        if self.error is not None:
            raise self.error
        if self._done:
            return []  # a line client gets one answer; what follows is ignored
        self._buffer += data
        if self.mode is None and self._buffer:
            self.mode = "netstring" if self._buffer[:1].isdigit() else "line"
        if self.mode == "line":
            return self._line()
        return self._netstrings()

    def end(self) -> list[Request]:
        """The peer closed its side: a line without its newline still counts (Exim
        half-closes after the request); an unfinished netstring is an error."""
        if self.error is not None:
            raise self.error
        if self._done or not self._buffer:
            return []
        if self.mode == "line":
            self._done = True
            return [self._parse_line(bytes(self._buffer))]
        raise NetstringError(f"connection closed inside a netstring ({len(self._buffer)} "
                             "octets pending)")

    def _line(self) -> list[Request]:
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) > self.max_request:
                raise NetstringError(f"request line longer than {self.max_request} octets")
            return []
        if end > self.max_request:
            raise NetstringError(f"request line longer than {self.max_request} octets")
        self._done = True
        return [self._parse_line(bytes(self._buffer[:end]))]

    @staticmethod
    def _parse_line(raw: bytes) -> LineQuery:
        text = _text(raw.rstrip(b"\r"), "request line")
        verb, _, argument = text.strip().partition(" ")
        if not verb or not argument.strip():
            raise NetstringError(f"request line is not 'VERB ARGUMENT': {text[:80]!r}")
        return LineQuery(verb.lower(), argument.strip())

    def _netstrings(self) -> list[Request]:
        found: list[Request] = []
        try:
            self._next_netstrings(found)
        except NetstringError as exc:
            if not found:
                raise
            self.error = exc
        return found

    def _next_netstrings(self, found: list[Request]) -> None:
        buffer = self._buffer
        while buffer:
            colon = buffer.find(b":", 0, self._digits + 1)
            if colon < 0:
                if len(buffer) > self._digits or not buffer.isdigit():
                    raise NetstringError(self._bad_length(buffer))
                break
            length_text = bytes(buffer[:colon])
            if not length_text.isdigit():
                raise NetstringError(self._bad_length(buffer))
            length = int(length_text)
            if length > self.max_request:
                raise NetstringError(f"netstring of {length} octets; the limit is "
                                     f"{self.max_request}")
            end = colon + 1 + length
            if len(buffer) <= end:
                break  # the data or its "," is still on the way
            if buffer[end] != ord(","):
                raise NetstringError("netstring not terminated by ','")
            found.append(self._parse_query(bytes(buffer[colon + 1:end])))
            del buffer[:end + 1]

    def _bad_length(self, buffer: bytearray) -> str:
        head = bytes(buffer[:self._digits + 1])
        if head[:1].isdigit() and head.isdigit():
            return f"netstring length of more than {self._digits} digits; the limit is " \
                   f"{self.max_request} octets"
        return f"not a netstring length: {head[:20]!r}"

    @staticmethod
    def _parse_query(raw: bytes) -> SocketmapQuery:
        text = _text(raw, "socketmap request")
        name, space, key = text.partition(" ")
        if not name or not space or not key:
            raise NetstringError(f"socketmap request is not 'NAME KEY': {text[:80]!r}")
        return SocketmapQuery(name, key)
