"""Throughput of a real private Postfix with and without milters, driven by smtp-source.

Private Postfix instances relay to one smtp-sink, one instance per variant, and the
variants are alternated in every round (rotating order) so that drift of the machine
hits all of them alike:

* ``none``: no milter;
* ``noop-asyncio tcp`` / ``noop-asyncio unix``: bench/noop_asyncio_milter.py, the
  do-nothing asyncio milter with danemilter's negotiation and socket handling, inserting
  the very header danemilter inserts for the warm domain (the baseline of each socket
  kind);
* ``danemilter asyncio tcp`` / ``unix``: ``danemilter run``, ``transport: asyncio`` (the
  default), on ``inet:PORT@127.0.0.1`` or a unix socket;
* ``danemilter libmilter tcp`` / ``unix``: the same through ``transport: libmilter``;
* ``noop-pymilter unix``: bench/noop_milter.py inserting the same header, the baseline
  of the figures before the asyncio transport (section 1 of docs/benchmarks.md);
* with ``--cold`` also ``cold`` and its baseline ``none (per-domain)``: smtp-source names
  one recipient domain per run, so distinct domains take one ``smtp-source -m 1`` per
  message, run by SESSIONS shell loops in parallel, every message to a fixture domain
  nobody has asked about, through danemilter asyncio on TCP (the default listen).

danemilter runs with ``dane: try`` and its default ``log_level: info``. "Warm": every
variant but cold sends ``smtp-source -s SESSIONS -m MESSAGES -r RCPTS -t rcpt@DOMAIN``
for one domain evaluated during the unmeasured warm-up, so every RCPT is a cache hit.

Every run is checked: smtp-source exits 0 (it stops at the first refused recipient),
the Postfix log has one ``status=sent`` per recipient and no reject, the sink got one
file per message, and every message through a milter carries exactly one
``X-DANE-Status`` header with the value danemilter computes for the warm domain (through
none: no such header). The rate is messages per second from smtp-source's start to its
end (what the milter slows down: smtpd's answers); the delivered rate (to the last
message at the sink) is printed beside it, and so is the CPU time the milter process
used per message (/proc/PID/stat, all its threads). A ratio is the median over the rounds of the
ratio within each round (both variants ran next to each other), beside the median rates.

    python bench/throughput.py [--messages 2000] [--recipients 5] [--sessions 20]
                               [--rounds 5] [--cold]
"""

from __future__ import annotations

import argparse
import email.parser
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    SOCKET_KINDS,
    TRANSPORTS,
    Figure,
    bench_domains,
    bench_zone,
    danemilter_process,
    print_report,
    served_variants,
    transport_named,
)

from danemilter.milter.session import fold_header
from tests.support.dnsbed import DnssecTestBed
from tests.support.milterproc import MilterProcess
from tests.support.ports import free_port, unix_socket_accepts
from tests.support.postfix import PrivatePostfix, SmtpSink, wait_for

_DRAIN_TIMEOUT = 300.0
_HEADER = "X-DANE-Status"
_TARGET = 0.95


def tcp_accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


class NoopMilterProcess:
    """A bench no-op milter (``script`` in bench/) on a unix socket or a TCP port,
    inserting ``X-DANE-Status: header``; ready when its socket accepts."""

    def __init__(self, script: str, kind: str, header: str) -> None:
        self.script = script
        self.kind = kind
        self.header = header
        self.root = Path(tempfile.mkdtemp(prefix="dm-noop-"))
        self.root.chmod(0o755)  # smtpd (user postfix) must reach the socket
        self.socket = self.root / "noop.sock"
        self.port = free_port() if kind == "tcp" else 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def postfix_address(self) -> str:
        return f"inet:127.0.0.1:{self.port}" if self.kind == "tcp" else f"unix:{self.socket}"

    def start(self) -> None:
        where = ["--port", str(self.port)] if self.kind == "tcp" else ["--socket",
                                                                      str(self.socket)]
        self.process = subprocess.Popen([sys.executable, str(Path(__file__).with_name(
            self.script)), *where, "--add-header", self.header])
        wait_for(self._accepting, 20, f"the no-op milter {self.script} ({self.kind})")

    def _accepting(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"{self.script} exited with {self.process.returncode}")
        return tcp_accepts(self.port) if self.kind == "tcp" else unix_socket_accepts(
            self.socket)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=20)
            self.process = None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    seconds: float
    delivered_seconds: float
    milter_cpu: float | None  # CPU seconds the milter process used during the run


@dataclass
class Variant:
    name: str
    postfix: PrivatePostfix
    drive: Callable[[int], list[str]]  # round → argv of the driver
    header: bool = True  # its messages carry X-DANE-Status
    pid: int | None = None  # the milter's process
    runs: list[Run] = field(default_factory=list)

    def rate(self, messages: int) -> float:
        return messages / statistics.median(r.seconds for r in self.runs)

    def delivered_rate(self, messages: int) -> float:
        return messages / statistics.median(r.delivered_seconds for r in self.runs)

    def cpu_per_message(self, messages: int) -> str:
        spent = [r.milter_cpu for r in self.runs if r.milter_cpu is not None]
        return f"{statistics.median(spent) / messages * 1000:.2f}" if spent else "-"

    def ratio(self, baseline: Variant) -> float:
        """Median over the rounds of this variant's rate / the baseline's in that round."""
        return statistics.median(b.seconds / r.seconds
                                 for r, b in zip(self.runs, baseline.runs, strict=True))


class Bench:
    def __init__(self, messages: int, recipients: int, sessions: int, rounds: int,
                 cold: bool) -> None:
        self.messages = messages
        self.recipients = recipients
        self.sessions = sessions
        self.rounds = rounds
        self.cold = cold
        self.cold_domains = bench_domains(messages * rounds if cold else 0)
        # Unmeasured warm-up of the per-domain driver and the cold path: own domains.
        self.warmup_domains = bench_domains(sessions * 5, start=len(self.cold_domains))
        self.warm_domain = self.warmup_domains[-1]
        # What danemilter inserts for the warm domain (checked on every run).
        self.header = fold_header(_HEADER, f"{self.warm_domain}; status=dane; usage=8; "
                                  "ocsp=off; action=accept")
        self.bed = DnssecTestBed([bench_zone(len(self.cold_domains) + len(self.warmup_domains))])
        self.sink = SmtpSink()
        self.noops = {f"noop-asyncio {kind}": NoopMilterProcess("noop_asyncio_milter.py",
                                                                kind, self.header)
                      for kind in SOCKET_KINDS}
        self.noops["noop-pymilter unix"] = NoopMilterProcess("noop_milter.py", "unix",
                                                             self.header)
        self.served, self.refused = served_variants()
        self.milters: dict[str, MilterProcess] = {}
        self.instances: dict[str, PrivatePostfix] = {}
        self.scripts: list[Path] = []

    def start(self) -> None:
        self.bed.start()
        self.sink.start()
        for noop in self.noops.values():
            noop.start()
        for transport, kind in self.served:
            name = f"danemilter {transport} {kind}"
            # log_level info is danemilter's default: its log lines are part of its cost.
            process = danemilter_process(transport, kind, self.bed.resolver_port)
            self.milters[name] = process
            process.start()
            transport_named(process, transport)
        addresses = {"none": "", **{n: m.postfix_address for n, m in self.noops.items()},
                     **{n: m.postfix_address for n, m in self.milters.items()}}
        for name, address in addresses.items():
            instance = PrivatePostfix(address, self.sink.port)
            self.instances[name] = instance
            instance.start()

    def pid(self, name: str) -> int | None:
        """The process id of the milter behind the instance ``name``."""
        process = (self.milters[name].process if name in self.milters else
                   self.noops[name].process if name in self.noops else None)
        return process.pid if process is not None else None

    def stop(self) -> None:
        for instance in self.instances.values():
            instance.stop()
        for milter in self.milters.values():
            milter.stop()
        for noop in self.noops.values():
            noop.stop()
        self.sink.stop()
        self.bed.stop()

    # --- drivers ----------------------------------------------------------------

    def smtp_source(self, port: int, domain: str) -> list[str]:
        return ["smtp-source", "-s", str(self.sessions), "-m", str(self.messages),
                "-r", str(self.recipients), "-f", "bench@client.test",
                "-t", f"rcpt@{domain}", f"127.0.0.1:{port}"]

    def per_domain(self, port: int, domains: Sequence[str]) -> list[str]:
        # One shell loop per session, each running smtp-source once per domain: the
        # shell forks cheaply, and a failure ends the loop with smtp-source's status.
        # The script goes to a file: thousands of domains exceed one argument's limit.
        command = shlex.join(["smtp-source", "-m", "1", "-r", str(self.recipients), "-f",
                              "bench@client.test"])
        loops = []
        for session in range(self.sessions):
            mine = " ".join(domains[session :: self.sessions])
            if mine:
                loops.append(f"( for d in {mine}; do {command} -t rcpt@$d "
                             f"127.0.0.1:{port} || exit 1; done ) &")
        script = "\n".join([*loops, "status=0",
                            "for job in $(jobs -p); do wait $job || status=1; done",
                            "exit $status"])
        path = self.sink.root / f"per-domain-{port}-{len(self.scripts)}.sh"
        path.write_text(script + "\n")
        self.scripts.append(path)
        return ["sh", str(path)]

    # --- one measured run ---------------------------------------------------------

    def sent_lines(self, instance: PrivatePostfix) -> tuple[int, int]:
        try:
            text = instance.log.read_text(errors="replace")
        except FileNotFoundError:
            return 0, 0
        return text.count("status=sent"), text.count(" reject:") + text.count("milter-reject")

    def sink_files(self) -> int:
        return len(os.listdir(self.sink.directory))

    def run(self, variant: Variant, round_no: int) -> None:
        instance = variant.postfix
        sent_before, rejects_before = self.sent_lines(instance)
        files_before = self.sink_files()
        names_before = set(os.listdir(self.sink.directory))
        argv = variant.drive(round_no)
        cpu_before = cpu_seconds(variant.pid) if variant.pid else 0.0
        started = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"{variant.name}: driver failed ({done.returncode}): "
                             f"{(done.stdout + done.stderr)[-800:]}")
        expected = self.messages
        wait_for(lambda: self.sink_files() - files_before >= expected, _DRAIN_TIMEOUT,
                 f"{expected} messages at the sink ({variant.name})", interval=0.01)
        delivered = time.perf_counter() - started
        cpu = cpu_seconds(variant.pid) - cpu_before if variant.pid else None
        # postlogd writes the log behind the daemons; wait for every delivery line.
        wait_for(lambda: self.sent_lines(instance)[0] - sent_before
                 >= expected * self.recipients, 60,
                 f"status=sent lines ({variant.name})", interval=0.05)
        sent, rejects = self.sent_lines(instance)
        arrived = self.sink_files() - files_before
        if (sent - sent_before != expected * self.recipients or rejects != rejects_before
                or arrived != expected):
            raise SystemExit(f"{variant.name}: {sent - sent_before} recipients sent, "
                             f"{rejects - rejects_before} rejects, {arrived} messages at "
                             f"the sink; expected {expected * self.recipients}, 0, {expected}")
        self.check_header(variant, set(os.listdir(self.sink.directory)) - names_before)
        variant.runs.append(Run(seconds, delivered, cpu))

    def check_header(self, variant: Variant, names: set[str]) -> None:
        """Messages through a milter carry exactly one X-DANE-Status, with the value
        danemilter computes for the warm domain (cold: some status=dane); others none."""
        parser = email.parser.BytesHeaderParser()
        wanted = "".join(self.header.split("\n"))
        for name in sorted(names)[:20]:
            found = [" ".join(v.split()) for v in parser.parsebytes(
                (self.sink.directory / name).read_bytes()).get_all(_HEADER, [])]
            if not variant.header:
                ok = not found
            elif variant.name == "cold":
                ok = len(found) == 1 and "status=dane" in found[0]
            else:
                ok = found == [" ".join(wanted.split())]
            if not ok:
                raise SystemExit(f"{variant.name}: message {name} has {_HEADER} {found}, "
                                 f"expected {[wanted] if variant.header else []}")


def measure(messages: int, recipients: int, sessions: int, rounds: int, cold: bool = False
            ) -> tuple[list[Figure], list[str]]:
    bench = Bench(messages, recipients, sessions, rounds, cold)
    try:
        bench.start()
        instances = bench.instances
        plain = instances["none"]

        def warm(name: str) -> Variant:
            port = instances[name].port
            return Variant(name, instances[name],
                           lambda r: bench.smtp_source(port, bench.warm_domain),
                           header=name != "none", pid=bench.pid(name))

        def cold_domains(r: int) -> list[str]:
            return bench.cold_domains[r * messages : (r + 1) * messages]

        variants = [warm(name) for name in instances]
        if cold:
            dane = instances["danemilter asyncio tcp"]
            variants += [
                Variant("none (per-domain)", plain,
                        lambda r: bench.per_domain(plain.port, cold_domains(r)), header=False),
                Variant("cold", dane, lambda r: bench.per_domain(dane.port, cold_domains(r)),
                        pid=bench.pid("danemilter asyncio tcp")),
            ]
        # Warm up every path (Postfix's smtpd pool grows to SESSIONS processes, the
        # milters' threads, the warm domain's cache entry) with unmeasured runs: the
        # first run against a fresh instance was up to 40 % slower in trials.
        warmup = max(messages // 2, 4 * sessions)
        for instance in instances.values():
            argv = bench.smtp_source(instance.port, bench.warm_domain)
            argv[argv.index("-m") + 1] = str(warmup)
            subprocess.run(argv, check=True, capture_output=True)
        total = len(instances) * warmup
        if cold:
            for instance in (plain, instances["danemilter asyncio tcp"]):
                subprocess.run(bench.per_domain(instance.port, bench.warmup_domains),
                               check=True, capture_output=True)
            total += 2 * len(bench.warmup_domains)
        wait_for(lambda: bench.sink_files() >= total, _DRAIN_TIMEOUT, "warm-up messages",
                 interval=0.01)
        for r in range(rounds):
            # Rotate the order so that no variant always runs first or last.
            order = variants[r % len(variants):] + variants[: r % len(variants)]
            for variant in order:
                bench.run(variant, r)
    finally:
        bench.stop()
    return figures_of({v.name: v for v in variants}, messages, bench.served), [
        *table(variants, messages, recipients, sessions, rounds), *bench.refused]


def table(variants: Sequence[Variant], messages: int, recipients: int, sessions: int,
          rounds: int) -> list[str]:
    lines = [f"Postfix throughput, {messages} messages x {recipients} recipients, "
             f"{sessions} sessions, {rounds} rounds (median), messages/s",
             f"{'variant':<26} {'smtp-source':>12} {'delivered':>10} {'milter CPU':>11}"
             "  runs (s)"]
    for v in variants:
        runs = ", ".join(f"{r.seconds:.2f}" for r in v.runs)
        lines.append(f"{v.name:<26} {v.rate(messages):>12.0f} "
                     f"{v.delivered_rate(messages):>10.0f} {v.cpu_per_message(messages):>11}"
                     f"  {runs}")
    lines.append("milter CPU: ms of the milter process's CPU time per message (median run)")
    lines.append("ratios: the median over the rounds of the ratio of two variants' rates "
                 "within one round")
    return lines


def figures_of(by_name: dict[str, Variant], messages: int,
               served: Sequence[tuple[str, str]]) -> list[Figure]:
    def figure(name: str, baseline: str, target: bool = False) -> Figure:
        ratio = by_name[name].ratio(by_name[baseline])
        return Figure("1 throughput", f"{name} / {baseline}",
                      f"{by_name[name].rate(messages):.0f} msg/s",
                      f"{by_name[baseline].rate(messages):.0f} msg/s", ratio,
                      f">= {_TARGET}" if target else "", ratio >= _TARGET if target else None)

    figures = [figure(f"danemilter {transport} {kind}", f"noop-asyncio {kind}",
                      target=transport == "asyncio")
               for kind in SOCKET_KINDS for transport in TRANSPORTS
               if (transport, kind) in served]
    figures.append(figure("noop-pymilter unix", "noop-asyncio unix"))
    figures += [figure(name, "none") for name in by_name
                if name not in ("none", "none (per-domain)", "cold")]
    if "cold" in by_name:
        figures.append(figure("cold", "none (per-domain)"))
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--recipients", type=int, default=5)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cold", action="store_true",
                        help="also cold domains, one smtp-source per message (slow)")
    args = parser.parse_args(argv)
    figures, lines = measure(args.messages, args.recipients, args.sessions, args.rounds,
                             args.cold)
    print_report(figures, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
