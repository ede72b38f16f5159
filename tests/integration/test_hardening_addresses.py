"""Issue 16 item 1: a recipient is judged by the domain Postfix delivers it to.

A real Postfix (``allow_percent_hack``, ``swap_bangpath``, ``resolve_dequoted_address``
at their defaults; ``local.test`` and ``$myhostname`` local) in front of ``danemilter
run``. Under ``try`` every form is accepted and delivered: the sink shows where Postfix
sent each one, and the milter's header must name that same domain. Under ``require``
none of the forms that Postfix routes to the domain without DANE may get through.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count

import pytest

from tests.support.dnsbed import DnssecTestBed
from tests.support.hostile_zones import DANE_DOMAIN, PLAIN_DOMAIN, WILDCARD_PARENT, zones
from tests.support.milterproc import MilterProcess
from tests.support.postfix import PrivatePostfix, SmtpSink

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

HEADER = "X-DANE-Status"
LOCAL = "local.test"
WILD = f"_x.{WILDCARD_PARENT}"
_ids = count(1)

# (the address as the client writes it, the domain Postfix delivers it to)
FORMS = [
    (f"<u%{PLAIN_DOMAIN}>", PLAIN_DOMAIN),                       # percent hack
    (f"<{PLAIN_DOMAIN}!u>", PLAIN_DOMAIN),                       # bang path
    (f'<"u@{PLAIN_DOMAIN}">', PLAIN_DOMAIN),                     # quoted, no domain
    (f"<u@{PLAIN_DOMAIN}@>", PLAIN_DOMAIN),                      # trailing @
    (f"<u@{WILD}>", WILD),                                       # underscore label
    (f"<u%{PLAIN_DOMAIN}@{LOCAL}>", PLAIN_DOMAIN),               # percent via local
    (f'<"u@{PLAIN_DOMAIN}"@{LOCAL}>', PLAIN_DOMAIN),             # quoted via local
    (f"<{PLAIN_DOMAIN}!u@{LOCAL}>", PLAIN_DOMAIN),               # bang via local
    (f"<u@{PLAIN_DOMAIN}@{LOCAL}>", PLAIN_DOMAIN),               # @ via local
    (f"<@relay.test:u@{PLAIN_DOMAIN}>", PLAIN_DOMAIN),           # source route
    (f"<u@{PLAIN_DOMAIN.upper()}.>", PLAIN_DOMAIN),              # case, trailing dot
]
# The milter cannot know Postfix's myorigin: it judges this form "undetermined".
UNDETERMINED = {f'<"u@{PLAIN_DOMAIN}">'}


@dataclass
class Stack:
    bed: DnssecTestBed
    milter: MilterProcess
    postfix: PrivatePostfix
    sink: SmtpSink

    def use(self, rule: str) -> None:
        self.milter.reload(
            f"resolver: {{address: 127.0.0.1, port: {self.bed.resolver_port}, timeout: 1}}\n"
            f"deadline: 5\nskip_domains: [{LOCAL}]\npolicy:\n  default: {rule}\n")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with DnssecTestBed(zones(many_mx=0)) as bed:
        sink = SmtpSink()
        sink.start()
        milter = MilterProcess(f"resolver: {{address: 127.0.0.1, port: {bed.resolver_port}}}\n")
        milter.start()
        postfix = PrivatePostfix(milter.postfix_address, sink.port, extra=[
            f"mydestination={LOCAL},$myhostname", "local_transport=discard:local",
            # Postfix's defaults, spelled out: the test is about them.
            "allow_percent_hack=yes", "swap_bangpath=yes", "resolve_dequoted_address=yes",
        ])
        try:
            postfix.start()
            yield Stack(bed, milter, postfix, sink)
        finally:
            postfix.stop()
            milter.stop()
            sink.stop()


def _message(marker: str) -> str:
    return (f"Message-ID: {marker}\nFrom: alice@client.test\nTo: x@example.test\n"
            f"Subject: rewriting\n\nhello\n")


def _delivered_domains(message: object) -> set[str]:
    args = str(message["X-Rcpt-Args"] or "")  # type: ignore[index]
    # "<u@p.plain.test> ORCPT=rfc822;..." per recipient: the address is the <...> part.
    return {part.rsplit("@", 1)[-1].rstrip(">").lower() for part in args.split()
            if part.startswith("<")}


@pytest.mark.parametrize(("address", "domain"), FORMS)
def test_the_milter_judges_the_domain_postfix_delivers_to(
        stack: Stack, address: str, domain: str) -> None:
    stack.use("{dane: try}")
    marker = f"<a{next(_ids)}.{time.monotonic_ns()}@client.test>"
    sub = stack.postfix.submit([address], _message(marker))
    assert [r.code for r in sub.replies] == [250], sub.replies
    delivered = stack.sink.wait_for_message(marker)
    assert _delivered_domains(delivered) == {domain}, delivered["X-Rcpt-Args"]
    judged = [h.split(";")[0] for h in delivered.get_all(HEADER) or []]
    assert judged == ([] if address in UNDETERMINED else [domain])


@pytest.mark.parametrize(("on_fail", "code"), [("defer", 450), ("reject", 550)])
def test_no_rewritten_form_passes_require(stack: Stack, on_fail: str, code: int) -> None:
    stack.use(f"{{dane: require, on_fail: {on_fail}}}")
    marker = f"<r{next(_ids)}.{time.monotonic_ns()}@client.test>"
    control = [f"<u%{DANE_DOMAIN}@{LOCAL}>", f"<u@{DANE_DOMAIN}>", f"<u@{LOCAL}>",
               "<postmaster>"]
    sub = stack.postfix.submit([address for address, _ in FORMS] + control, _message(marker))
    got = {r.recipient: r for r in sub.replies}
    for address, _ in FORMS:
        assert got[address].code == code, got[address]
        assert got[address].text[1:5] == ".7.4", got[address]
    for address in UNDETERMINED:
        assert "Cannot tell which domain" in got[address].text
    assert [got[address].code for address in control] == [250] * len(control)
    delivered = stack.sink.wait_for_message(marker)
    assert _delivered_domains(delivered) == {DANE_DOMAIN}, delivered["X-Rcpt-Args"]
