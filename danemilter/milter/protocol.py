"""Milter protocol version 6, sans I/O: bytes in, typed commands out; typed responses in,
bytes out.

The wire format (Sendmail's libmilter, docs in its ``milter.h``/``mfdef.h``): every
packet is a 4-octet big-endian length, then one command octet, then ``length - 1``
octets of data; strings are NUL-terminated. Nothing here reads a socket or a clock, so
the server, the tests and the fuzzer all drive the same code.

What an MTA may send is checked strictly (length, shape of each command's data, order
of commands): a peer that breaks the protocol gets a :class:`ProtocolError`, and the
server closes that one connection.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from danemilter.errors import InputError

MILTER_VERSION = 6
_LENGTH = struct.Struct(">I")
_U32x3 = struct.Struct(">III")


class ProtocolError(InputError):
    """The MTA broke the milter protocol; the connection cannot go on."""


class Action(IntFlag):
    """SMFIF_*: what the milter may do to a message (negotiated)."""

    ADDHDRS = 0x01
    CHGBODY = 0x02
    ADDRCPT = 0x04
    DELRCPT = 0x08
    CHGHDRS = 0x10
    QUARANTINE = 0x20
    CHGFROM = 0x40
    ADDRCPT_PAR = 0x80
    SETSYMLIST = 0x100


class Step(IntFlag):
    """SMFIP_*: steps the MTA may skip, and steps that get no reply (negotiated)."""

    NOCONNECT = 0x01
    NOHELO = 0x02
    NOMAIL = 0x04
    NORCPT = 0x08
    NOBODY = 0x10
    NOHDRS = 0x20
    NOEOH = 0x40
    NR_HDR = 0x80
    NOUNKNOWN = 0x100
    NODATA = 0x200
    SKIP = 0x400
    RCPT_REJ = 0x800
    NR_CONN = 0x1000
    NR_HELO = 0x2000
    NR_MAIL = 0x4000
    NR_RCPT = 0x8000
    NR_DATA = 0x10000
    NR_UNKN = 0x20000
    NR_EOH = 0x40000
    NR_BODY = 0x80000
    HDR_LEADSPC = 0x100000
    MDS_256K = 0x10000000
    MDS_1M = 0x20000000


class MacroStage(IntEnum):
    """SMFIM_*: the stages a milter can ask a macro list for (SETSYMLIST)."""

    CONNECT = 0
    HELO = 1
    ENVFROM = 2
    ENVRCPT = 3
    DATA = 4
    EOM = 5
    EOH = 6


# --- commands (MTA → milter) -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class OptionNegotiation:
    version: int
    actions: Action
    steps: Step


@dataclass(frozen=True, slots=True)
class Macros:
    """Macro values sent ahead of the command whose code is ``for_command``."""

    for_command: bytes
    values: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Connect:
    hostname: str
    family: str  # "4", "6", "L" (unix socket) or "U" (unknown)
    port: int | None
    address: str | None


@dataclass(frozen=True, slots=True)
class Helo:
    name: str


@dataclass(frozen=True, slots=True)
class Mail:
    sender: str
    parameters: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Rcpt:
    recipient: str
    parameters: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Data:
    pass


@dataclass(frozen=True, slots=True)
class Header:
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class EndOfHeaders:
    pass


@dataclass(frozen=True, slots=True)
class Body:
    chunk: bytes


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    pass


@dataclass(frozen=True, slots=True)
class Abort:
    pass


@dataclass(frozen=True, slots=True)
class Quit:
    pass


@dataclass(frozen=True, slots=True)
class QuitNewConnection:
    """Sendmail reuses the connection for another SMTP session: back to before Connect."""


@dataclass(frozen=True, slots=True)
class Unknown:
    command: str


Command = (OptionNegotiation | Macros | Connect | Helo | Mail | Rcpt | Data | Header
           | EndOfHeaders | Body | EndOfMessage | Abort | Quit | QuitNewConnection | Unknown)


def _text(raw: bytes) -> str:
    # SMTPUTF8 addresses are UTF-8; anything else is kept losslessly for the checks above.
    return raw.decode("utf-8", "surrogateescape")


def _strings(data: bytes, what: str, count: int | None = None, minimum: int = 1) -> list[str]:
    """``data`` as NUL-terminated strings: exactly ``count`` of them, or ``minimum`` or more."""
    if not data.endswith(b"\0"):
        raise ProtocolError(f"{what}: data does not end with NUL")
    parts = data[:-1].split(b"\0")
    if count is not None and len(parts) != count:
        raise ProtocolError(f"{what}: {len(parts)} strings where {count} belong")
    if len(parts) < minimum:
        raise ProtocolError(f"{what}: too few strings")
    return [part.decode("utf-8", "surrogateescape") for part in parts]  # _text, inlined


def _empty(cls: type[Data | EndOfHeaders | EndOfMessage | Abort | Quit | QuitNewConnection],
           data: bytes, what: str) -> Command:
    if data:
        raise ProtocolError(f"{what} carries {len(data)} unexpected octets")
    return cls()


def _optneg(data: bytes) -> Command:
    if len(data) < _U32x3.size:
        raise ProtocolError(f"option negotiation: {len(data)} octets, not 12")
    version, actions, steps = _U32x3.unpack_from(data)
    return OptionNegotiation(version, Action(actions & 0x1FF), Step(steps))


_MACRO_COMMANDS = frozenset(b"CHMRTLNBEUA")


def _macros(data: bytes) -> Command:
    if not data or data[0] not in _MACRO_COMMANDS:
        raise ProtocolError("macros for an unknown command")
    if len(data) == 1:
        return Macros(data[:1], ())
    strings = _strings(data[1:], "macros", minimum=2)
    if len(strings) % 2:
        raise ProtocolError("macros: a name without a value")
    pairs = tuple(zip(strings[::2], strings[1::2], strict=True))
    return Macros(data[:1], pairs)


def _connect(data: bytes) -> Command:
    end = data.find(b"\0")
    if end < 0 or end + 1 >= len(data):
        raise ProtocolError("connect: truncated")
    hostname = _text(data[:end])
    family = chr(data[end + 1])
    rest = data[end + 2:]
    if family == "U":
        if rest:
            raise ProtocolError("connect: data after an unknown family")
        return Connect(hostname, family, None, None)
    if family not in "46L":
        raise ProtocolError(f"connect: unknown address family {family!r}")
    if len(rest) < 3:
        raise ProtocolError("connect: truncated address")
    port = int.from_bytes(rest[:2], "big")
    (address,) = _strings(rest[2:], "connect address", count=1)
    return Connect(hostname, family, port, address)


def _helo(data: bytes) -> Command:
    (name,) = _strings(data, "HELO", count=1)
    return Helo(name)


def _mail(data: bytes) -> Command:
    sender, *parameters = _strings(data, "MAIL")
    return Mail(sender, tuple(parameters))


def _rcpt(data: bytes) -> Command:
    recipient, *parameters = _strings(data, "RCPT")
    return Rcpt(recipient, tuple(parameters))


def _header(data: bytes) -> Command:
    name, value = _strings(data, "header", count=2)
    if not name:
        raise ProtocolError("header without a name")
    return Header(name, value)


def _unknown(data: bytes) -> Command:
    (command,) = _strings(data, "unknown command", count=1)
    return Unknown(command)


_PARSERS = {
    ord("O"): _optneg,
    ord("D"): _macros,
    ord("C"): _connect,
    ord("H"): _helo,
    ord("M"): _mail,
    ord("R"): _rcpt,
    ord("T"): lambda data: _empty(Data, data, "DATA"),
    ord("L"): _header,
    ord("N"): lambda data: _empty(EndOfHeaders, data, "end of headers"),
    ord("B"): Body,
    # libmilter allows a last body chunk here; danemilter never asks for the body.
    ord("E"): lambda data: EndOfMessage(),
    ord("A"): lambda data: _empty(Abort, data, "abort"),
    ord("Q"): lambda data: _empty(Quit, data, "quit"),
    ord("K"): lambda data: _empty(QuitNewConnection, data, "quit (new connection)"),
    ord("U"): _unknown,
}


class Decoder:
    """Splits a byte stream into commands; keeps what is left of a partial packet."""

    __slots__ = ("_buffer", "_max_packet", "_needed")

    def __init__(self, max_packet: int) -> None:
        self._max_packet = max_packet
        self._buffer = bytearray()
        self._needed = 0  # octets the held-back packet needs in all

    def feed(self, data: bytes) -> list[Command]:
        """Every command complete in what arrived so far (raises ProtocolError)."""
        if self._buffer:
            # A packet trickling in is only appended to until it is complete: copying all
            # of it on every read would be quadratic in its size (a peer's cheap attack).
            self._buffer += data
            if len(self._buffer) < self._needed:
                return []
            buffer = bytes(self._buffer)
            self._buffer.clear()
        else:
            buffer = data
        commands: list[Command] = []
        offset, size = 0, len(buffer)
        while size - offset >= 4:
            (length,) = _LENGTH.unpack_from(buffer, offset)
            if length == 0:
                raise ProtocolError("packet of length 0")
            if length > self._max_packet:
                raise ProtocolError(f"packet of {length} octets exceeds the limit of "
                                    f"{self._max_packet}")
            end = offset + 4 + length
            if end > size:
                self._needed = 4 + length
                break
            code = buffer[offset + 4]
            parser = _PARSERS.get(code)
            if parser is None:
                raise ProtocolError(f"unknown command {bytes([code])!r}")
            commands.append(parser(buffer[offset + 5:end]))
            offset = end
        if offset < size:
            if size - offset < 4:
                self._needed = 4  # the length itself is still incomplete
            self._buffer += buffer[offset:]
        return commands

    @property
    def pending(self) -> int:
        """Octets of an incomplete packet held back."""
        return len(self._buffer)


# --- order of commands --------------------------------------------------------


class _Phase(IntEnum):
    NEGOTIATE = 0
    CONNECT = 1   # negotiated; waiting for the SMTP session
    SESSION = 2   # connected (HELO or not), no transaction
    MAIL = 3      # MAIL seen; RCPT may follow
    CONTENT = 4   # DATA, headers, body: until end of message


class Sequencer:
    """Checks that commands arrive in an order an MTA can send them.

    Steps negotiated away are simply absent, so the checks are about what must come
    before what (a RCPT needs a MAIL, message content needs a transaction), not about
    every step appearing.
    """

    __slots__ = ("_phase",)

    def __init__(self) -> None:
        self._phase = _Phase.NEGOTIATE

    def check(self, command: Command) -> None:
        # A table lookup per command, not a chain of isinstance tests: this runs for
        # every packet of every message.
        allowed, after, message = _ORDER[type(command)]
        phase = self._phase
        if phase not in allowed:
            name = type(command).__name__
            if phase is _Phase.NEGOTIATE:
                raise ProtocolError(f"{name} before option negotiation")
            raise ProtocolError(message.format(name=name))
        self._phase = after[phase]


_P = _Phase
_ANY = frozenset(_Phase)
_NEGOTIATED = _ANY - {_P.NEGOTIATE}
_SAME = tuple(_Phase)  # after[phase] is phase: the command changes nothing


def _to(phase: _Phase) -> tuple[_Phase, ...]:
    return tuple(phase for _ in _Phase)


_CONTENT_RULE = (frozenset({_P.MAIL, _P.CONTENT}), _to(_P.CONTENT),
                 "{name} outside a transaction")
# Per command: the phases it may arrive in, the phase after it (indexed by the phase
# before), and the complaint when it arrives elsewhere.
_ORDER: dict[type, tuple[frozenset[_Phase], tuple[_Phase, ...], str]] = {
    Macros: (_NEGOTIATED, _SAME, ""),
    Unknown: (_NEGOTIATED, _SAME, ""),
    OptionNegotiation: (frozenset({_P.NEGOTIATE}), _to(_P.CONNECT),
                        "option negotiation repeated"),
    Quit: (_ANY, _SAME, ""),
    QuitNewConnection: (_NEGOTIATED, _to(_P.CONNECT), ""),
    Connect: (frozenset({_P.CONNECT}), _to(_P.SESSION), "connect within a session"),
    Helo: (frozenset({_P.CONNECT, _P.SESSION}), _to(_P.SESSION),
           "HELO within a transaction"),
    Mail: (frozenset({_P.CONNECT, _P.SESSION}), _to(_P.MAIL), "MAIL within a transaction"),
    Rcpt: (frozenset({_P.MAIL}), _SAME, "RCPT outside a transaction or after its content"),
    Data: _CONTENT_RULE,
    Header: _CONTENT_RULE,
    EndOfHeaders: _CONTENT_RULE,
    Body: _CONTENT_RULE,
    EndOfMessage: (frozenset({_P.MAIL, _P.CONTENT}), _to(_P.SESSION),
                   "end of message outside a transaction"),
    # An abort ends the transaction, not the session (nor a session not yet begun).
    Abort: (_NEGOTIATED, (_P.NEGOTIATE, _P.CONNECT, _P.SESSION, _P.SESSION, _P.SESSION), ""),
}


# --- responses (milter → MTA) ---------------------------------------------------


def _packet(code: bytes, data: bytes = b"") -> bytes:
    return _LENGTH.pack(len(data) + 1) + code + data


def _wire(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape") + b"\0"


def negotiate_reply(version: int, actions: Action, steps: Step,
                    macros: Mapping[MacroStage, Iterable[str]] | None = None) -> bytes:
    data = _U32x3.pack(version, int(actions), int(steps))
    for stage, names in (macros or {}).items():
        data += struct.pack(">I", int(stage)) + _wire(" ".join(names))
    return _packet(b"O", data)


CONTINUE = _packet(b"c")
ACCEPT = _packet(b"a")
REJECT = _packet(b"r")
TEMPFAIL = _packet(b"t")
DISCARD = _packet(b"d")


def _one_line(text: str) -> str:
    # libmilter's smfi_setreply refuses CR and LF and treats a lone '%' as a format
    # character; the reply is one line of plain text.
    return " ".join(text.replace("%", "%%").split())


def reply_code(code: int, xcode: str, text: str) -> bytes:
    """SMFIR_REPLYCODE: the MTA answers the current command with this reply."""
    if not 400 <= code < 600 or not xcode[:1] == str(code)[0]:
        raise ValueError(f"reply {code} {xcode} is not a 4xx/5xx with a matching class")
    return _packet(b"y", _wire(f"{code} {xcode} {_one_line(text)}"))


def add_header(name: str, value: str) -> bytes:
    return _packet(b"h", _wire(name) + _wire(value))


def insert_header(index: int, name: str, value: str) -> bytes:
    return _packet(b"i", struct.pack(">I", index) + _wire(name) + _wire(value))


def change_header(index: int, name: str, value: str) -> bytes:
    """Replace the ``index``-th (1-based) header called ``name``; an empty value deletes it."""
    return _packet(b"m", struct.pack(">I", index) + _wire(name) + _wire(value))


def quarantine(reason: str) -> bytes:
    return _packet(b"q", _wire(_one_line(reason)))


# --- the MTA's side, for tests, the fuzzer and the benchmark's client ----------------


def encode_command(command: Command) -> bytes:
    """The packet an MTA sends for ``command`` (inverse of :class:`Decoder`)."""
    if isinstance(command, OptionNegotiation):
        return _packet(b"O", _U32x3.pack(command.version, int(command.actions),
                                         int(command.steps)))
    if isinstance(command, Macros):
        return _packet(b"D", command.for_command + b"".join(
            _wire(name) + _wire(value) for name, value in command.values))
    if isinstance(command, Connect):
        data = _wire(command.hostname) + command.family.encode("ascii")
        if command.family != "U":
            data += (command.port or 0).to_bytes(2, "big") + _wire(command.address or "")
        return _packet(b"C", data)
    if isinstance(command, Helo):
        return _packet(b"H", _wire(command.name))
    if isinstance(command, Mail | Rcpt):
        first = command.sender if isinstance(command, Mail) else command.recipient
        code = b"M" if isinstance(command, Mail) else b"R"
        return _packet(code, b"".join(_wire(s) for s in (first, *command.parameters)))
    if isinstance(command, Header):
        return _packet(b"L", _wire(command.name) + _wire(command.value))
    if isinstance(command, Body):
        return _packet(b"B", command.chunk)
    if isinstance(command, Unknown):
        return _packet(b"U", _wire(command.command))
    codes = {Data: b"T", EndOfHeaders: b"N", EndOfMessage: b"E", Abort: b"A", Quit: b"Q",
             QuitNewConnection: b"K"}
    return _packet(codes[type(command)])


@dataclass(frozen=True, slots=True)
class Response:
    """One packet a milter sent, as the MTA reads it."""

    code: bytes
    data: bytes

    @property
    def strings(self) -> list[str]:
        return [_text(s) for s in self.data.rstrip(b"\0").split(b"\0")] if self.data else []


def decode_responses(data: bytes) -> tuple[list[Response], bytes]:
    """Split what a milter sent into packets; returns them and the incomplete rest."""
    responses: list[Response] = []
    offset = 0
    while len(data) - offset >= 4:
        (length,) = _LENGTH.unpack_from(data, offset)
        end = offset + 4 + length
        if length == 0 or end > len(data):
            break
        responses.append(Response(data[offset + 4:offset + 5], data[offset + 5:end]))
        offset = end
    return responses, data[offset:]
