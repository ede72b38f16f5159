"""A private Postfix instance (smtpd → milter → relay to smtp-sink) for integration tests.

Everything lives under one temporary directory and listens on fresh loopback ports;
the system's /etc/postfix is only read for its shipped meta files. See
../shared/notes/test-infra.md for the recipe and its traps.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import json
import shutil
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.ports import free_port

_START_TIMEOUT = 20.0


class PostfixError(RuntimeError):
    pass


def wait_for(condition: Callable[[], bool], timeout: float, what: str,
              interval: float = 0.02) -> None:
    """Poll ``condition`` until true; raise after ``timeout`` seconds (readiness, not sleep)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise PostfixError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class RcptReply:
    recipient: str
    code: int
    text: str


@dataclass(frozen=True)
class Submission:
    replies: tuple[RcptReply, ...]
    data_code: int | None
    queue_id: str | None


class SmtpSink:
    """smtp-sink saving every delivered message as one file."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="dm-sink-"))
        self.root.chmod(0o755)  # smtp-sink writes as nobody
        self.directory = self.root / "messages"
        self.directory.mkdir()
        shutil.chown(self.directory, "nobody")
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["smtp-sink", "-u", "nobody", "-d", f"{self.directory}/%H%M%S.",
             f"127.0.0.1:{self.port}", "256"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: _accepts(self.port), _START_TIMEOUT, "smtp-sink")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None
        shutil.rmtree(self.root, ignore_errors=True)

    def messages(self) -> list[email.message.EmailMessage]:
        found = []
        for path in sorted(self.directory.iterdir()):
            raw = path.read_bytes()
            # smtp-sink dumps the transaction: envelope lines, then the message after a
            # blank line following the DATA command's records.
            found.append(_parse_dump(raw))
        return found

    def wait_for_message(self, marker: str, timeout: float = 20.0
                         ) -> email.message.EmailMessage:
        holder: list[email.message.EmailMessage] = []

        def arrived() -> bool:
            for message in self.messages():
                if message.get("Message-ID", "") == marker:
                    holder.append(message)
                    return True
            return False

        wait_for(arrived, timeout, f"delivery of {marker}", interval=0.05)
        return holder[0]


def _parse_dump(raw: bytes) -> email.message.EmailMessage:
    text = raw.decode("utf-8", "replace").replace("\r\n", "\n")
    # The dump starts with "X-Client-Addr: ...", "X-Client-Proto: ...", "X-Helo-Args",
    # "X-Mail-Args", "X-Rcpt-Args" records and then the message itself; all of it parses
    # as one header block followed by the body, so the records simply become headers.
    return email.message_from_string(text, policy=email.policy.default)


def _accepts(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as conn:
            conn.settimeout(2)
            return conn.recv(3) == b"220"
    except OSError:
        return False


class PrivatePostfix:
    """``postfix -c DIR start-fg`` with smtpd on a fresh port and a milter in front."""

    def __init__(self, milter: str, sink_port: int, extra: Sequence[str] = ()) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="dm-postfix-"))
        # Postfix daemons run as the postfix user and must reach data/ and queue/.
        self.root.chmod(0o755)
        self.config = self.root / "conf"
        self.config.mkdir()
        self.port = free_port()
        self.milter = milter
        self.sink_port = sink_port
        self.extra = tuple(extra)
        self.process: subprocess.Popen[bytes] | None = None
        self.log = self.root / "postfix.log"

    def _postconf(self, *args: str) -> None:
        subprocess.run(["postconf", "-c", str(self.config), *args], check=True,
                       capture_output=True)

    def configure(self) -> None:
        (self.config / "main.cf").write_text("")
        shutil.copy("/etc/postfix/master.cf", self.config / "master.cf")
        queue = self.root / "queue"
        data = self.root / "data"
        queue.mkdir()
        data.mkdir()
        shutil.chown(data, "postfix")
        settings = [
            "compatibility_level=3.6",
            f"queue_directory={queue}",
            f"data_directory={data}",
            "meta_directory=/etc/postfix",
            f"maillog_file={self.log}",
            f"maillog_file_prefixes={self.root}",
            "inet_interfaces=127.0.0.1",
            "inet_protocols=ipv4",
            "myhostname=mta.danemilter.test",
            "mydestination=",
            "mynetworks=127.0.0.0/8",
            "smtpd_relay_restrictions=permit_mynetworks,reject",
            f"relayhost=[127.0.0.1]:{self.sink_port}",
            "smtp_dns_support_level=disabled",
            f"smtpd_milters={self.milter}",
            "milter_default_action=tempfail",
            "milter_protocol=6",
            "milter_rcpt_macros=i {rcpt_addr}",
            "milter_connect_timeout=5s",
            "milter_command_timeout=30s",
            "smtpd_delay_reject=yes",
            "smtpd_error_sleep_time=0",
            "smtpd_soft_error_limit=100",
            "smtpd_hard_error_limit=200",
            "smtpd_client_connection_rate_limit=0",
            "anvil_rate_time_unit=60s",
            "alias_maps=",
            "alias_database=",
            "local_recipient_maps=",
            *self.extra,
        ]
        self._postconf("-e", *settings)
        # smtpd on our port only, nothing chrooted (the queue is not a chroot jail).
        self._postconf("-M#", "smtp/inet")
        self._postconf("-M", "-e", f"{self.port}/inet={self.port} inet n - n - - smtpd")
        services = subprocess.run(["postconf", "-c", str(self.config), "-M"],
                                  check=True, capture_output=True, text=True).stdout
        for line in services.splitlines():
            fields = line.split()
            if len(fields) >= 5 and fields[4] != "n":
                self._postconf("-F", "-e", f"{fields[0]}/{fields[1]}/chroot=n")

    def start(self) -> None:
        self.configure()
        self.process = subprocess.Popen(
            ["postfix", "-c", str(self.config), "start-fg"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: _accepts(self.port), _START_TIMEOUT, "postfix smtpd")

    def stop(self) -> None:
        if self.process is not None:
            subprocess.run(["postfix", "-c", str(self.config), "stop"], check=False,
                           capture_output=True)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        shutil.rmtree(self.root, ignore_errors=True)

    def reload(self) -> None:
        subprocess.run(["postfix", "-c", str(self.config), "reload"], check=True,
                       capture_output=True)

    def queue(self) -> list[dict[str, object]]:
        out = subprocess.run(["postqueue", "-c", str(self.config), "-j"], check=True,
                             capture_output=True, text=True).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def submit(self, recipients: Sequence[str], message: str, sender: str = "alice@client.test",
               timeout: float = 40.0) -> Submission:
        """One SMTP transaction; every RCPT's reply is recorded, DATA sent if any was accepted."""
        with smtplib.SMTP("127.0.0.1", self.port, timeout=timeout) as client:
            client.ehlo("client.test")
            code, mail_reply = client.mail(sender)
            if code != 250:
                raise PostfixError(f"MAIL FROM refused: {code} {mail_reply!r}")
            replies = []
            for rcpt in recipients:
                code, reply = client.rcpt(rcpt)
                replies.append(RcptReply(rcpt, code, reply.decode("utf-8", "replace")))
            if not any(r.code == 250 for r in replies):
                return Submission(tuple(replies), None, None)
            code, reply = client.data(message.encode())
            text = reply.decode("utf-8", "replace")
            queue_id = text.rsplit(" ", 1)[-1] if code == 250 else None
            return Submission(tuple(replies), code, queue_id)
