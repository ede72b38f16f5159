"""The milter behind a real Sendmail, configured with the shipped .mc line.

Sendmail 8.17 (Debian's packages, unpacked: they conflict with postfix) reads a .cf made
from packaging/sendmail/danemilter.mc with only its S= replaced, and talks to
``danemilter run`` over a unix socket and over TCP, through each milter transport.
Accepted mail is relayed to smtp-sink; the policy is require/defer over the DNSSEC bed.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count

import pytest

from tests.support.dnsbed import DnssecTestBed
from tests.support.milterproc import InetMilterProcess, MilterProcess
from tests.support.postfix import SmtpSink, wait_for
from tests.support.sendmail import (
    SHIPPED_MC,
    PrivateSendmail,
    SendmailError,
    SendmailInstall,
    sendmail_install,
    shipped_filter,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

HEADER = "X-DANE-Status"
DANE, PLAIN = "a@ee.secure.test", "b@plain.insecure.test"
_ids = count(1)


@dataclass
class Stack:
    milter: MilterProcess
    sendmail: PrivateSendmail
    sink: SmtpSink


def milter_process(kind: str, config: str) -> MilterProcess:
    return InetMilterProcess(config) if kind == "inet" else MilterProcess(config)


def message() -> tuple[str, str]:
    marker = f"<s{next(_ids)}.{time.monotonic_ns()}@client.test>"
    return marker, (f"Message-ID: {marker}\nFrom: alice@client.test\nTo: b@example.test\n"
                    "Subject: danemilter through sendmail\n\nhello\n")


@pytest.fixture(scope="module")
def install() -> SendmailInstall:
    try:
        return sendmail_install()
    except SendmailError as exc:
        pytest.fail(f"Sendmail could not be unpacked: {exc}", pytrace=False)


@pytest.fixture(scope="module")
def sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()


@pytest.fixture(
    scope="module",
    # libmilter only on a unix socket: the configuration refuses it on TCP (issue 16).
    params=[("libmilter", "unix"), ("asyncio", "unix"), ("asyncio", "inet")],
    ids="-".join,
)
def stack(request: pytest.FixtureRequest, dns_bed: DnssecTestBed, install: SendmailInstall,
          sink: SmtpSink) -> Iterator[Stack]:
    transport, kind = request.param
    milter = milter_process(kind, (
        f"transport: {transport}\n"
        f"resolver: {{address: 127.0.0.1, port: {dns_bed.resolver_port}, timeout: 1}}\n"
        "deadline: 5\non_error: tempfail\n"
        "policy:\n  default: {dane: require, on_fail: defer}\n"))
    sendmail = PrivateSendmail(shipped_filter(milter.listen), sink.port)
    try:
        milter.start()
        wait_for(lambda: "listening on" in milter.log(), 10, "the milter's listening line")
        named = re.search(r"listening on .*\(transport (\w+)", milter.log())
        # Older builds did not name the transport (and served libmilter whatever it said).
        assert named is None or named[1] == transport, milter.log()
        sendmail.start()
        yield Stack(milter, sendmail, sink)
    finally:
        sendmail.stop()
        code = milter.stop()
        assert code == 0, "the milter must exit cleanly on SIGTERM"


def test_the_cf_carries_the_shipped_filter_line(stack: Stack) -> None:
    cf = stack.sendmail.cf()
    shipped = re.search(r"^INPUT_MAIL_FILTER\(`(\w+)', `([^']*)'\)", SHIPPED_MC.read_text(),
                        re.MULTILINE)
    assert shipped is not None
    name, equates = shipped.groups()
    spec = f"S={stack.milter.listen}"
    assert [line for line in cf.splitlines() if line.startswith("X")] == [
        f"X{name}, " + re.sub(r"S=[^,]+", spec, equates)]
    # Sendmail refuses (exit 70, SYSERR) an X line with an unknown equate or timeout.
    assert "SYSERR" not in stack.sendmail.log()
    # The shipped lines leave Sendmail's macro lists to other milters as they were.
    macros = dict(re.findall(r"^O Milter\.macros\.(\w+)=(.*)$", cf, re.MULTILINE))
    assert macros["envrcpt"] == "{rcpt_mailer}, {rcpt_host}, {rcpt_addr}"


def submit_and_check(stack: Stack, sendmail: PrivateSendmail) -> None:
    """RCPT to a DANE and a non-DANE domain under require/defer, then DATA."""
    marker, text = message()
    session = sendmail.submit([DANE, PLAIN], text)
    assert session.mail[0] == 250
    accepted, deferred = session.replies
    assert accepted.code == 250, accepted
    assert deferred.code == 450, deferred
    # Sendmail puts "<address>... " in front of the milter's text: the domain must be
    # named by the milter's own reply, after that prefix.
    assert deferred.text.startswith(f"4.7.4 <{PLAIN}>... "), deferred
    assert "plain.insecure.test" in deferred.text.split("... ", 1)[1], deferred
    assert session.data is not None and session.data[0] == 250, session
    delivered = stack.sink.wait_for_message(marker)
    assert delivered.get_all(HEADER) == [
        "ee.secure.test; status=dane; usage=8; ocsp=off; action=accept"]
    assert [args.split()[0] for args in delivered.get_all("X-Rcpt-Args", [])] == [f"<{DANE}>"]
    # The queue id (macro i) reached the milter at RCPT and at end of message.
    queue_id = session.queue_id
    log = stack.milter.log()
    assert (f"{queue_id}: rcpt=<{PLAIN}> domain=plain.insecure.test status=none usage=0 "
            "ocsp=off action=defer") in log, log[-2000:]
    assert (f"{queue_id}: rcpt=<{DANE}> domain=ee.secure.test status=dane usage=8 "
            "ocsp=off action=accept") in log, log[-2000:]


def test_each_recipient_gets_its_reply_and_the_message_its_header(stack: Stack) -> None:
    submit_and_check(stack, stack.sendmail)


def test_the_milter_gets_its_macros_whatever_the_site_lists(stack: Stack) -> None:
    # Lists without i or {auth_authen}: the milter's own request (SETSYMLIST) applies.
    site = "".join(f"define(`confMILTER_MACROS_{stage}', `{{{name}}}')dnl\n" for stage, name in
                   [("ENVFROM", "mail_addr"), ("ENVRCPT", "rcpt_addr"), ("EOM", "msg_id")])
    sendmail = PrivateSendmail(shipped_filter(stack.milter.listen) + site, stack.sink.port)
    try:
        sendmail.start()
        assert "O Milter.macros.envrcpt={rcpt_addr}\n" in sendmail.cf()
        submit_and_check(stack, sendmail)
    finally:
        sendmail.stop()


REFUSED = "error connecting to filter: Connection refused"


@pytest.mark.parametrize(("kind", "logged"), [
    pytest.param("unix-absent", "unsafe", id="unix-absent"),  # the path check fails first
    pytest.param("unix-stale", REFUSED, id="unix-stale"),  # a socket left by a crash
    pytest.param("inet", REFUSED, id="inet"),
])
def test_milter_down_tempfails_at_mail(install: SendmailInstall, sink: SmtpSink, kind: str,
                                       logged: str) -> None:
    # A milter spec nobody serves: a socket path in a fresh directory, or a fresh port.
    absent = milter_process(kind.partition("-")[0], "")
    try:
        if kind == "unix-stale":
            with socket.socket(socket.AF_UNIX) as stale:
                stale.bind(str(absent.socket))
        sendmail = PrivateSendmail(shipped_filter(absent.listen), sink.port)
        try:
            sendmail.start()
            session = sendmail.submit([DANE])
            log = sendmail.log()
        finally:
            sendmail.stop()
    finally:
        absent.stop()
    assert session.mail == (451, "4.3.2 Please try again later"), session
    assert session.replies[0].code == 503, session
    assert logged in log, log[-2000:]
    assert "Milter: initialization failed, temp failing commands" in log, log[-2000:]
