"""An offline demonstration: DNSSEC-signed zones, a private Postfix and danemilter.

Brings up nsd + unbound serving zones signed on the spot, a private Postfix relaying to
smtp-sink, and ``danemilter run`` with a ``require`` policy; submits one message to a
DANE domain, a domain without DANE and a domain whose TLSA records are bogus; prints
what each recipient got. Run as root: ``make demo``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration import dns_cases
from tests.support.dnsbed import DnssecTestBed
from tests.support.milterproc import MilterProcess
from tests.support.postfix import PrivatePostfix, SmtpSink

RECIPIENTS = {
    "alice@ee.secure.test": "DANE-EE TLSA, all DNSSEC-signed",
    "bob@plain.insecure.test": "unsigned zone: no DANE",
    "carol@badtlsa.secure.test": "TLSA RRset altered after signing: bogus",
}
POLICY = """\
policy:
  default:
    dane: require       # every recipient domain must be reachable with DANE
    on_fail: defer      # 450 4.7.4 for those that are not
"""


def main() -> int:
    started = time.monotonic()
    bed = DnssecTestBed(dns_cases.ZONES)
    sink = SmtpSink()
    milter = MilterProcess(
        f"resolver: {{address: 127.0.0.1, port: 0, timeout: 1}}\n{POLICY}")
    postfix = None
    try:
        bed.start()
        milter.write_config(
            f"resolver: {{address: 127.0.0.1, port: {bed.resolver_port}, timeout: 1}}\n"
            f"{POLICY}")
        sink.start()
        milter.start()
        postfix = PrivatePostfix(milter.postfix_address, sink.port)
        postfix.start()
        print(f"up in {time.monotonic() - started:.1f} s: nsd + unbound on 127.0.0.1:"
              f"{bed.resolver_port}, Postfix on 127.0.0.1:{postfix.port}, "
              f"danemilter on {milter.listen}\n")
        print(POLICY)
        marker = f"<demo.{time.time_ns()}@client.test>"
        submission = postfix.submit(
            list(RECIPIENTS),
            f"Message-ID: {marker}\nFrom: demo@client.test\nSubject: danemilter demo\n\nhi\n")
        print(f"{'recipient':<28} {'what it is':<44} SMTP reply at RCPT")
        for reply in submission.replies:
            print(f"{reply.recipient:<28} {RECIPIENTS[reply.recipient]:<44} "
                  f"{reply.code} {reply.text}")
        delivered = sink.wait_for_message(marker)
        print("\ndelivered message (to the accepted recipients) carries:")
        for value in delivered.get_all("X-DANE-Status") or []:
            print(f"  X-DANE-Status: {value}")
        print("\nmilter log:")
        for line in milter.log().splitlines():
            if "rcpt=" in line and " DEBUG " not in line:
                print("  " + line)
        return 0
    finally:
        if postfix is not None:
            postfix.stop()
        milter.stop()
        sink.stop()
        bed.stop()


if __name__ == "__main__":
    sys.exit(main())
