"""Throughput of a real private Postfix with and without milters, driven by smtp-source.

Three Postfix instances relay to one smtp-sink: one without a milter, one with the
no-op pymilter (bench/noop_milter.py, same negotiation as danemilter), one with
danemilter (``dane: try``; unix sockets for both milters). Variants, alternated in
every round so that drift of the machine hits all of them alike:

* none, noop, warm: ``smtp-source -s SESSIONS -m MESSAGES -r RCPTS -t rcpt@DOMAIN``; for
  "warm" the domain was evaluated before the round, so every RCPT is a cache hit.
* cold, and its own baseline "none (per-domain)": smtp-source names one recipient
  domain per run, so distinct domains take one ``smtp-source -m 1`` per message, run
  by SESSIONS shell loops in parallel; every message goes to a fixture domain nobody
  has asked about (the resolver's cache is cold for it too). The same driver against
  the instance without a milter is the baseline, since process start-up per message
  is part of this driver's cost.

Every run is checked: smtp-source exits 0 (it stops at the first refused recipient),
the Postfix log has one ``status=sent`` per recipient and no reject, the sink got one
file per message, and messages through danemilter carry its header with
``status=dane``. The rate is messages per second from smtp-source's start to its end
(what the milter slows down: smtpd's answers); the delivered rate (to the last
message at the sink) is printed beside it.

    python bench/throughput.py [--messages 2000] [--recipients 5] [--sessions 20]
                               [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common import Figure, bench_domains, bench_zone, print_report

from tests.support.dnsbed import DnssecTestBed
from tests.support.milterproc import MilterProcess
from tests.support.ports import unix_socket_accepts
from tests.support.postfix import PrivatePostfix, SmtpSink, wait_for

_DRAIN_TIMEOUT = 300.0


class NoopMilterProcess:
    """bench/noop_milter.py on a unix socket, ready when the socket accepts."""

    def __init__(self, header: str | None = None) -> None:
        self.header = header
        self.root = Path(tempfile.mkdtemp(prefix="dm-noop-"))
        self.root.chmod(0o755)  # smtpd (user postfix) must reach the socket
        self.socket = self.root / "noop.sock"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def postfix_address(self) -> str:
        return f"unix:{self.socket}"

    def start(self) -> None:
        script = Path(__file__).with_name("noop_milter.py")
        extra = [] if self.header is None else ["--add-header", self.header]
        self.process = subprocess.Popen([sys.executable, str(script), "--socket",
                                         str(self.socket), *extra])
        wait_for(self._accepting, 20, "the no-op milter socket")

    def _accepting(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"no-op milter exited with {self.process.returncode}")
        return unix_socket_accepts(self.socket)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=20)
            self.process = None


@dataclass
class Run:
    seconds: float
    delivered_seconds: float


@dataclass
class Variant:
    name: str
    postfix: PrivatePostfix
    drive: Callable[[int], list[str]]  # round → argv of the driver
    runs: list[Run] = field(default_factory=list)

    def rate(self, messages: int) -> float:
        return messages / statistics.median(r.seconds for r in self.runs)

    def delivered_rate(self, messages: int) -> float:
        return messages / statistics.median(r.delivered_seconds for r in self.runs)


class Bench:
    def __init__(self, messages: int, recipients: int, sessions: int, rounds: int) -> None:
        self.messages = messages
        self.recipients = recipients
        self.sessions = sessions
        self.rounds = rounds
        self.cold_domains = bench_domains(messages * rounds)
        # Unmeasured warm-up of the per-domain driver and the cold path: own domains.
        self.warmup_domains = bench_domains(sessions * 5, start=len(self.cold_domains))
        self.warm_domain = self.warmup_domains[-1]
        self.bed = DnssecTestBed([bench_zone(len(self.cold_domains) + len(self.warmup_domains))])
        self.sink = SmtpSink()
        self.noop = NoopMilterProcess()
        # The no-op milter inserting the header danemilter inserts for the warm domain:
        # Postfix's cost of a header edit (cleanup rewrites the queue file) without any
        # of danemilter's own work.
        self.noop_header = NoopMilterProcess(
            f"{self.warm_domain}; status=dane; usage=8; ocsp=off; action=accept")
        self.milter = MilterProcess("", log_level="info")
        # Diagnostic: the same milter logging only warnings (no line per RCPT); the
        # profile of the warm run showed threads queueing for the logging handler's lock.
        self.quiet = MilterProcess("", log_level="warning")
        self.instances: list[PrivatePostfix] = []
        self.scripts: list[Path] = []

    def start(self) -> None:
        self.bed.start()
        self.sink.start()
        self.noop.start()
        self.noop_header.start()
        # log_level info is danemilter's default: one log line per RCPT is part of its cost.
        for process in (self.milter, self.quiet):
            process.write_config(
                f"resolver: {{address: 127.0.0.1, port: {self.bed.resolver_port}, "
                "timeout: 2}\npolicy:\n  default: {dane: try}\n")
            process.start()
        for address in ("", self.noop.postfix_address, self.milter.postfix_address,
                        self.quiet.postfix_address, self.noop_header.postfix_address):
            instance = PrivatePostfix(address, self.sink.port)
            self.instances.append(instance)
            instance.start()

    def stop(self) -> None:
        for instance in self.instances:
            instance.stop()
        self.milter.stop()
        self.quiet.stop()
        self.noop.stop()
        self.noop_header.stop()
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
        variant.runs.append(Run(seconds, delivered))

    def check_header(self, variant: Variant, names: set[str]) -> None:
        """Messages through danemilter carry its verdict (the milter really was asked);
        messages through the other instances do not."""
        wanted = variant.postfix in self.instances[2:]
        for name in sorted(names)[:20]:
            raw = (self.sink.directory / name).read_bytes()
            if (b"X-DANE-Status:" in raw and b"status=dane" in raw) != wanted:
                raise SystemExit(f"{variant.name}: message {name} "
                                 f"{'lacks' if wanted else 'has'} X-DANE-Status status=dane")


def measure(messages: int, recipients: int, sessions: int, rounds: int
            ) -> tuple[list[Figure], list[str]]:
    bench = Bench(messages, recipients, sessions, rounds)
    try:
        bench.start()
        plain, noop, dane, quiet, noop_header = bench.instances

        def cold_domains(r: int) -> list[str]:
            return bench.cold_domains[r * messages : (r + 1) * messages]

        variants = [
            Variant("none", plain, lambda r: bench.smtp_source(plain.port, bench.warm_domain)),
            Variant("noop", noop, lambda r: bench.smtp_source(noop.port, bench.warm_domain)),
            Variant("warm", dane, lambda r: bench.smtp_source(dane.port, bench.warm_domain)),
            Variant("warm, log_level warning", quiet,
                    lambda r: bench.smtp_source(quiet.port, bench.warm_domain)),
            Variant("noop + header", noop_header,
                    lambda r: bench.smtp_source(noop_header.port, bench.warm_domain)),
            Variant("none (per-domain)", plain,
                    lambda r: bench.per_domain(plain.port, cold_domains(r))),
            Variant("cold", dane, lambda r: bench.per_domain(dane.port, cold_domains(r))),
        ]
        # Warm up every path (Postfix's smtpd pool grows to SESSIONS processes, the
        # milters' threads, the warm domain's cache entry) with unmeasured runs: the
        # first run against a fresh instance was up to 40 % slower in trials.
        warmup = max(messages // 2, 4 * sessions)
        for instance in bench.instances:
            argv = bench.smtp_source(instance.port, bench.warm_domain)
            argv[argv.index("-m") + 1] = str(warmup)
            subprocess.run(argv, check=True, capture_output=True)
        for instance in (plain, dane):
            subprocess.run(bench.per_domain(instance.port, bench.warmup_domains), check=True,
                           capture_output=True)
        total = len(bench.instances) * warmup + 2 * len(bench.warmup_domains)
        wait_for(lambda: bench.sink_files() >= total, _DRAIN_TIMEOUT, "warm-up messages",
                 interval=0.01)
        for r in range(rounds):
            # Rotate the order so that no variant always runs first or last.
            order = variants[r % len(variants):] + variants[: r % len(variants)]
            for variant in order:
                bench.run(variant, r)
    finally:
        bench.stop()

    rates = {v.name: v.rate(messages) for v in variants}
    lines = [f"Postfix throughput, {messages} messages x {recipients} recipients, "
             f"{sessions} sessions, {rounds} rounds (median), messages/s",
             f"{'variant':<24} {'smtp-source':>12} {'delivered':>10} {'runs (s)':>30}"]
    for v in variants:
        runs = ", ".join(f"{r.seconds:.2f}" for r in v.runs)
        lines.append(f"{v.name:<24} {v.rate(messages):>12.0f} "
                     f"{v.delivered_rate(messages):>10.0f} {runs:>30}")
    base, noop_rate = rates["none"], rates["noop"]
    figures = [
        Figure("1 throughput", "no-op pymilter / no milter", f"{noop_rate:.0f} msg/s",
               f"{base:.0f} msg/s", noop_rate / base),
        Figure("1 throughput", "danemilter warm / no milter", f"{rates['warm']:.0f} msg/s",
               f"{base:.0f} msg/s", rates["warm"] / base, ">= 0.90",
               rates["warm"] / base >= 0.90),
        Figure("1 throughput", "danemilter warm / no-op milter",
               f"{rates['warm']:.0f} msg/s", f"{noop_rate:.0f} msg/s",
               rates["warm"] / noop_rate, ">= 0.97", rates["warm"] / noop_rate >= 0.97),
        Figure("1 throughput", "danemilter warm / no-op milter inserting the same header",
               f"{rates['warm']:.0f} msg/s", f"{rates['noop + header']:.0f} msg/s",
               rates["warm"] / rates["noop + header"]),
        Figure("1 throughput", "danemilter warm, log_level warning / no-op milter",
               f"{rates['warm, log_level warning']:.0f} msg/s", f"{noop_rate:.0f} msg/s",
               rates["warm, log_level warning"] / noop_rate),
        Figure("1 throughput", "danemilter cold / no milter (per-domain driver)",
               f"{rates['cold']:.0f} msg/s", f"{rates['none (per-domain)']:.0f} msg/s",
               rates["cold"] / rates["none (per-domain)"]),
    ]
    return figures, lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--recipients", type=int, default=5)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    figures, lines = measure(args.messages, args.recipients, args.sessions, args.rounds)
    print_report(figures, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
