"""danemilter's milter codec against kilter.protocol (issue 11: "a well-kept sans-I/O milter
library ... kilter-protocol is one to evaluate"), on this machine, in the same run.

Decodes the MTA side of one Postfix message as Postfix sends it to danemilter (macros,
MAIL, three RCPTs, five headers, end of message, abort), best of 5 x 20,000, and feeds
both codecs the same hostile packets. kilter.protocol is not a dependency: install it
into a scratch venv and name its site-packages:

    python3 -m venv /tmp/kvenv && /tmp/kvenv/bin/pip install kilter.protocol==0.6.0
    .venv/bin/python bench/codec_vs_kilter.py /tmp/kvenv/lib/python3.11/site-packages
"""

from __future__ import annotations

import importlib
import sys
import timeit
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from danemilter.milter import protocol as p

RUNS = 20_000


def postfix_message() -> bytes:
    rcpt_macros = p.Macros(b"R", (("i", "4ABC123"),))
    headers = [("Received", "from x by y; Thu, 3 Dec 2026"), ("From", "a@client.test"),
               ("To", "b@ee.secure.test"), ("Subject", "hi"), ("Message-ID", "<1@client.test>")]
    commands: list[p.Command] = [
        p.Macros(b"M", (("{auth_authen}", ""),)), p.Mail("<a@client.test>", ("SIZE=100",)),
        rcpt_macros, p.Rcpt("<b@ee.secure.test>", ()),
        rcpt_macros, p.Rcpt("<c@ee.secure.test>", ()),
        rcpt_macros, p.Rcpt("<e@ee.secure.test>", ()),
        *(p.Header(name, value) for name, value in headers),
        p.Macros(b"E", (("i", "4ABC123"),)), p.EndOfMessage(), p.Abort()]
    return b"".join(p.encode_command(c) for c in commands)


def packet(code: bytes, data: bytes = b"") -> bytes:
    return (len(data) + 1).to_bytes(4, "big") + code + data


HOSTILE = {
    "length 0": b"\0\0\0\0",
    "length 2^32-1": b"\xff\xff\xff\xffR",
    "HELO with an inner NUL": packet(b"H", b"a\0b\0"),
    "header of 3 strings": packet(b"L", b"a\0b\0c\0"),
    "RCPT without NUL": packet(b"R", b"<a@b>"),
    "connect, family X": packet(b"C", b"h\0X\0\0"),
    "quit, new connection (K)": packet(b"K"),
    "abort with a payload": packet(b"A", b"junk"),
}


class Kilter:
    def __init__(self, site: str) -> None:
        sys.path.insert(0, site)
        self.core: Any = importlib.import_module("kilter.protocol.core")
        self.buffer: Any = importlib.import_module("kilter.protocol.buffer")
        self.messages: Any = importlib.import_module("kilter.protocol.messages")
        self.needs_more: Any = importlib.import_module("kilter.protocol.exceptions").NeedsMore

    def count(self, data: bytes) -> int:
        buf = self.buffer.SimpleBuffer(1 << 20)
        buf[:] = data
        filter_side = self.core.FilterProtocol()
        filter_side._check_recv = lambda message: message  # the codec, not its state machine
        return sum(1 for _ in filter_side.read_from(buf))

    def verdict(self, data: bytes) -> str:
        buf = self.buffer.SimpleBuffer(1 << 16)
        try:
            buf[:] = data
            message, _ = self.messages.Message.unpack(buf)
        except self.needs_more:
            return "waits for more data"
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"[:70]
        text = f"accepted {message!r}"[:70]
        message.release()
        return text


def ours_count(data: bytes) -> int:
    return len(p.Decoder(1 << 20).feed(data))


def ours_verdict(data: bytes) -> str:
    try:
        return f"accepted {p.Decoder(1 << 16).feed(data)!r}"[:70]
    except p.ProtocolError as exc:
        return f"ProtocolError: {exc}"[:70]


def per_message(count: Callable[[bytes], int], data: bytes) -> float:
    return min(timeit.repeat(lambda: count(data), number=RUNS, repeat=5)) / RUNS


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    kilter = Kilter(args[0] if args else "/tmp/kvenv/lib/python3.11/site-packages")
    data = postfix_message()
    if ours_count(data) != kilter.count(data):
        raise SystemExit("the two codecs disagree on the number of packets")
    ours = per_message(ours_count, data)
    theirs = per_message(kilter.count, data)
    print(f"one Postfix message, MTA side: {len(data)} octets, {ours_count(data)} packets")
    print(f"danemilter.milter.protocol: {ours * 1e6:.1f} us per message")
    print(f"kilter.protocol 0.6.0:      {theirs * 1e6:.1f} us per message "
          f"({theirs / ours:.1f}x)")
    for name, hostile in HOSTILE.items():
        print(f"{name:26} ours: {ours_verdict(hostile):60} kilter: {kilter.verdict(hostile)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
