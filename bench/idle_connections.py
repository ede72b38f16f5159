"""RSS and thread count of ``danemilter run`` holding many idle MTA connections.

Postfix keeps one milter connection open per SMTP session, so a busy MTA (or a slow
one: sessions that idle in DATA) holds hundreds at once. For each transport (asyncio,
the default; libmilter for comparison) and socket kind (TCP on 127.0.0.1, unix), a
fresh daemon (``dane: try``, ``limits: {max_connections: 2000}``, log_level info) is
measured (VmRSS and the number of tasks in /proc/PID) after start-up and one complete
connection, then with CONNECTIONS open at once, each of which negotiated as Postfix 3.7
does (version 6, every action and step offered), sent connect, MAIL and a RCPT (a
local part only: not checked, answered at once, so its answer proves the MAIL and
connect before it were handled), aborted the transaction and then stays silent; then
once more after all of them closed. A last connection is served while the others are
open, to show the daemon still answers.

The bench process raises its soft RLIMIT_NOFILE (the daemon inherits it) so that
neither side runs out of descriptors.

    python bench/idle_connections.py [--connections 1000]
"""

from __future__ import annotations

import argparse
import resource
import socket
import time
from collections.abc import Sequence
from pathlib import Path

from common import (
    Figure,
    danemilter_process,
    print_report,
    rss_bytes,
    served_variants,
    transport_named,
)

from danemilter.milter import protocol as p
from tests.support.milterproc import InetMilterProcess, MilterProcess

_GROWTH_MB = 20.0
_THREADS = 10  # "no thread per connection": fewer new threads than this for any count
_SETTLE = 1.0  # seconds for the daemon to finish what the last connection started
# What Postfix 3.7 offers (milter_protocol = 6): every action and every step.
OFFER = p.OptionNegotiation(6, p.Action(0x1FF), p.Step(sum(int(s) for s in p.Step)))


def raise_nofile(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def responses(sock: socket.socket, count: int) -> list[p.Response]:
    got: list[p.Response] = []
    rest = b""
    while len(got) < count:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit(f"the milter closed a connection after {len(got)} responses")
        found, rest = p.decode_responses(rest + chunk)
        got += found
    return got


def open_idle(process: MilterProcess) -> socket.socket:
    """One MTA connection, negotiated and connected, a transaction aborted, now idle."""
    if isinstance(process, InetMilterProcess):
        sock = socket.create_connection(("127.0.0.1", process.port), timeout=30)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(str(process.socket))
    sock.sendall(p.encode_command(OFFER))
    (reply,) = responses(sock, 1)
    if reply.code != b"O":
        raise SystemExit(f"negotiation answered with {reply}")
    steps = p.Step(int.from_bytes(reply.data[8:12], "big"))
    sock.sendall(b"".join(p.encode_command(c) for c in (
        p.Connect("mta.client.test", "4", 40000, "127.0.0.1"),
        p.Macros(b"M", (("{auth_authen}", ""),)),
        p.Mail("<bench@client.test>", ()),
        p.Macros(b"R", (("i", "4ABCDEF"),)),
        p.Rcpt("<postmaster>", ()))))
    expected = 1 + (not steps & p.Step.NR_CONN) + (not steps & p.Step.NR_MAIL)
    answers = responses(sock, expected)
    if any(a.code != b"c" for a in answers):
        raise SystemExit(f"connect/MAIL/RCPT answered with {answers}")
    sock.sendall(p.encode_command(p.Abort()))
    return sock


def threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def mb(value: float) -> str:
    return f"{value / 2**20:.1f} MB"


def one(transport: str, kind: str, count: int) -> tuple[list[int], list[int], float]:
    """RSS and threads at start, with ``count`` idle connections, after they closed."""
    process = danemilter_process(transport, kind, None,
                                 extra="limits: {max_connections: 2000}\n")
    sockets: list[socket.socket] = []
    try:
        process.start()
        transport_named(process, transport)
        assert process.process is not None
        pid = process.process.pid
        open_idle(process).close()
        time.sleep(_SETTLE)  # a fixed settling time before a reading, not a readiness wait
        rss, tasks = [rss_bytes(pid)], [threads(pid)]
        started = time.perf_counter()
        sockets = [open_idle(process) for _ in range(count)]
        opened = time.perf_counter() - started
        time.sleep(_SETTLE)
        rss.append(rss_bytes(pid))
        tasks.append(threads(pid))
        open_idle(process).close()  # still serving, with all of them open
        for sock in sockets:
            sock.close()
        sockets = []
        time.sleep(2 * _SETTLE)
        rss.append(rss_bytes(pid))
        tasks.append(threads(pid))
        return rss, tasks, opened
    finally:
        for sock in sockets:
            sock.close()
        process.stop()


def measure(count: int) -> tuple[list[Figure], list[str]]:
    limit = raise_nofile(2 * count + 512)
    lines = [f"danemilter with {count} idle milter connections (RLIMIT_NOFILE soft {limit}; "
             "RSS and threads: started / connections open / closed again)",
             f"{'transport':<10} {'socket':<6} {'RSS':>28} {'growth':>9} {'per conn':>9} "
             f"{'threads':>16} {'open in':>8}"]
    figures = []
    served, refused = served_variants()
    for transport, kind in served:
        rss, tasks, opened = one(transport, kind, count)
        growth = rss[1] - rss[0]
        lines.append(f"{transport:<10} {kind:<6} "
                     f"{' / '.join(mb(r) for r in rss):>28} {mb(growth):>9} "
                     f"{growth / count / 1024:>6.1f} kB "
                     f"{' / '.join(str(t) for t in tasks):>16} {opened:>7.2f}s")
        target = transport == "asyncio"
        met = growth / 2**20 < _GROWTH_MB and tasks[1] - tasks[0] < _THREADS
        figures.append(Figure(
            "6 idle connections", f"{transport} {kind}: RSS with {count} idle "
            f"connections ({tasks[0]} -> {tasks[1]} threads)", mb(rss[1]),
            f"{mb(rss[0])} (started)", rss[1] / rss[0],
            f"growth < {_GROWTH_MB:.0f} MB, < {_THREADS} new threads" if target else "",
            met if target else None))
    return figures, lines + refused


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    args = parser.parse_args(argv)
    figures, lines = measure(args.connections)
    print_report(figures, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
