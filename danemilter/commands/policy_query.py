"""``danemilter policy-query``: ask the running daemon's policy socket, as Postfix (or
Exim) would, and print its answer as the MTA sees it."""

from __future__ import annotations

import argparse
import socket
import sys
from typing import Any

from danemilter.config import SYSTEMD_LISTEN, chosen_path, load
from danemilter.errors import InputError, ListenError
from danemilter.milter.listen import ListenSpec
from danemilter.policymap.answers import MAP_NAME
from danemilter.policymap.netstring import MAX_REPLY, netstring

_TIMEOUT = 15.0  # above the daemon's own deadlines: its answer, not ours, is shown

EXIT_CODES = """exit status:
  0  OK (socketmap) / the recipient is accepted (--rcpt)
  1  NOTFOUND: the MTA's own default TLS policy applies / the recipient is refused (--rcpt)
  2  usage error (bad arguments, policy file, socket spec)
  3  TEMP or PERM answer, or no answer: daemon not running, timeout, garbled reply"""


def register(commands: argparse._SubParsersAction[Any]) -> None:
    query = commands.add_parser(
        "policy-query", help="ask the running daemon's policy socket about a domain",
        description="Send DOMAIN to the running daemon's policy socket as Postfix's "
        "smtp_tls_policy_maps socketmap lookup (or, with --rcpt, as Exim's RCPT line) "
        "and print the answer as the MTA sees it.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    query.add_argument("domain", metavar="DOMAIN",
                       help="a domain, or .parent for Postfix's parent-domain lookup")
    query.add_argument("--socketmap", metavar="NAME", default=MAP_NAME,
                       help=f"socketmap name (default: {MAP_NAME})")
    query.add_argument("--socket", metavar="PATH",
                       help="socket path or listen spec (default: policy_socket of the "
                       "policy file)")
    query.add_argument("--config", metavar="FILE", help="policy file naming the socket")
    query.add_argument("--rcpt", action="store_true",
                       help="ask the Exim RCPT line (rcpt DOMAIN) instead")
    query.set_defaults(handler=_query)


def _address(args: argparse.Namespace) -> tuple[int, Any]:
    spec = args.socket
    if spec is None:
        settings = load(chosen_path(args.config))
        spec = settings.policy_listen()
        if spec is None:
            raise InputError(f"{settings.source}: policy_socket is off; name one with --socket")
        if spec == SYSTEMD_LISTEN:
            raise InputError(f"{settings.source}: systemd passes the policy socket; name "
                             "its path with --socket (danemilter-policy.socket's ListenStream)")
    elif spec.startswith("/"):
        spec = f"unix:{spec}"
    try:
        listen = ListenSpec.parse(spec)
    except ListenError as exc:
        raise InputError(str(exc)) from None
    if listen.kind == "unix":
        return socket.AF_UNIX, str(listen.path)
    if listen.kind in ("inet", "inet6"):
        host = listen.host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if listen.kind == "inet" else "::1"
        family = socket.AF_INET6 if listen.kind == "inet6" else socket.AF_INET
        return family, (host, listen.port)
    raise InputError(f"cannot connect to {spec!r}: name a unix or inet socket")


def _exchange(family: int, address: Any, request: bytes, *, line: bool) -> bytes:
    with socket.socket(family, socket.SOCK_STREAM) as conn:
        conn.settimeout(_TIMEOUT)
        conn.connect(address)
        conn.sendall(request)
        if line:
            conn.shutdown(socket.SHUT_WR)  # as Exim's ${readsocket} does
        received = bytearray()
        while len(received) <= MAX_REPLY + 16:
            chunk = conn.recv(65536)
            if not chunk:
                break
            received += chunk
            if not line and _netstring_complete(received):
                break
        return bytes(received)


def _netstring_complete(data: bytearray) -> bool:
    length, colon, _ = bytes(data).partition(b":")
    return bool(colon) and length.isdigit() and len(data) >= len(length) + int(length) + 2


def _query(args: argparse.Namespace) -> int:
    if any(c.isspace() for c in args.domain) or not args.domain:
        raise InputError(f"policy-query: not one domain: {args.domain!r}")
    family, address = _address(args)
    if args.rcpt:
        request = f"rcpt {args.domain}\n".encode()
    else:
        request = netstring(f"{args.socketmap} {args.domain}".encode())
    try:
        reply = _exchange(family, address, request, line=args.rcpt)
    except OSError as exc:
        where = address if isinstance(address, str) else f"{address[0]}:{address[1]}"
        print(f"danemilter: policy socket {where}: {exc.strerror or exc}", file=sys.stderr)
        return 3
    if args.rcpt:
        return _show_line(reply)
    return _show_socketmap(reply)


def _show_socketmap(reply: bytes) -> int:
    length, colon, rest = reply.partition(b":")
    if not colon or not length.isdigit() or rest[int(length):int(length) + 1] != b",":
        print(f"danemilter: not a netstring reply: {reply[:80]!r}", file=sys.stderr)
        return 3
    text = rest[:int(length)].decode("utf-8", "replace")
    print(text)
    if text.startswith("OK "):
        return 0
    if text.startswith("NOTFOUND"):
        return 1
    return 3


def _show_line(reply: bytes) -> int:
    text = reply.decode("utf-8", "replace").rstrip("\n")
    if not text or "\n" in text:
        print(f"danemilter: not a one-line reply: {reply[:80]!r}", file=sys.stderr)
        return 3
    print(text)
    action = text.partition(" ")[0].removeprefix("action=")
    if action in ("accept", "tag", "hold"):
        return 0
    if action in ("defer", "reject"):
        return 1
    return 3
