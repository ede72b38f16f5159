"""What the policy socket answers (pure code): the TLS policy a delivery must use, and
the Exim RCPT line, from the same settings and domain status as the milter's verdict.

The delivery policy for a domain (socketmap ``dane`` map; docs/policy-socket.md argues
each line):

* ``dane: require``                  -> ``dane-only`` whatever the status (Postfix defers
  anything but DANE, which is what the rule promised at RCPT); no lookup needed;
* ``dane: try``, status ``dane``     -> ``dane-only``: the domain was DANE when the milter
  accepted the message, and RFC 7672 §2.2 makes authenticated TLS mandatory then; it
  also keeps an MTA whose own resolver cannot validate from quietly delivering it
  without DANE;
* ``dane: try``, any other status    -> ``dane`` (the MTA's own opportunistic DANE);
* ``dane: try``, status ``tempfail`` (the lookup failed or did not finish in time)
  -> ``TEMP``: the answer may have to be ``dane-only``, and a weaker one must not be
  guessed;
* ``dane: off``, a skipped domain, ``report_only``, a key that is no domain
  (``[host]:port``) -> ``NOTFOUND`` (the MTA's own default applies).

Parent-domain keys (``.example.org``, asked by Postfix after ``sub.example.org`` got
NOTFOUND) follow the suffix rules, except that they are NOTFOUND wherever a domain below
them is ``off`` or skipped: Postfix asks a parent only after NOTFOUND for the full
domain, and every domain this service governs answers in full, so the child that asked
is one whose policy is "the MTA's default"; a parent answer must not override that.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from danemilter.config.model import DaneMode, Rule, Settings
from danemilter.errors import InputError
from danemilter.mtasts import StsState, StsStatus
from danemilter.names import normalize_domain
from danemilter.policy import Decision, wants_sts
from danemilter.status import DomainState, DomainStatus

MAP_NAME = "dane"  # smtp_tls_policy_maps = socketmap:unix:PATH:dane


class TlsPolicy(StrEnum):
    """A delivery's TLS policy, in Postfix's words (``none``: NOTFOUND, ``temp``: TEMP)."""

    DANE_ONLY = "dane-only"
    DANE = "dane"
    NONE = "none"
    TEMP = "temp"


@dataclass(frozen=True, slots=True)
class NeedsStatus:
    """The answer depends on the domain's status: look it up, then :func:`for_status`."""

    domain: str
    rule: Rule


def for_key(settings: Settings, key: str) -> TlsPolicy | NeedsStatus:
    """The policy for a socketmap key, or what must be looked up to give it."""
    if settings.report_only:
        return TlsPolicy.NONE
    text = key.strip()
    parent = text.startswith(".")
    try:
        domain = normalize_domain(text[1:] if parent else text, underscore=True)
    except InputError:
        return TlsPolicy.NONE  # [host]:port, an address literal: no recipient domain
    if parent:
        return _for_parent(settings, domain)
    if settings.skips(domain):
        return TlsPolicy.NONE
    rule = settings.policy.rule_for(domain)
    if rule.dane is DaneMode.OFF:
        return TlsPolicy.NONE
    if rule.dane is DaneMode.REQUIRE:
        return TlsPolicy.DANE_ONLY
    return NeedsStatus(domain, rule)


def _for_parent(settings: Settings, parent: str) -> TlsPolicy:
    under = "." + parent
    exempt = [pattern for pattern, rule in settings.policy.domains.items()
              if rule.dane is DaneMode.OFF]
    exempt.extend(settings.skip_domains)
    for pattern in exempt:
        name = pattern.removeprefix(".")
        if name.endswith(under) or (pattern.startswith(".") and name == parent):
            return TlsPolicy.NONE
    if settings.skips("x" + under):
        return TlsPolicy.NONE
    # The rule of a subdomain that has none of its own: the suffix rules, then default.
    rule = settings.policy.rule_below(parent)
    if rule.dane is DaneMode.OFF:
        return TlsPolicy.NONE
    return TlsPolicy.DANE_ONLY if rule.dane is DaneMode.REQUIRE else TlsPolicy.DANE


@dataclass(frozen=True, slots=True)
class SecureMatch:
    """Postfix's ``secure`` level for an MTA-STS enforce domain without DANE (RFC 8461
    §4): PKIX, with the certificate naming an MX host the policy allows."""

    patterns: tuple[str, ...]

    def __str__(self) -> str:
        return "secure"

    def postfix(self) -> str:
        # Postfix's "match=.example.net" takes any subdomain; MTA-STS's "*.example.net"
        # only one label more: the MX names were checked at RCPT (policy.decide).
        names = [p.removeprefix("*") if p.startswith("*.") else p for p in self.patterns]
        return f"secure match={':'.join(names)} servername=hostname"

    def exim_ignore_hosts(self) -> str:
        """An Exim host list for a dnslookup router's ``ignore_target_hosts``: every MX
        host whose name the policy's patterns do not match is ignored (RFC 8461 §4.1).
        Exim matches a ``^`` item against the host name; the first item
        that matches decides, so each pattern's negation keeps its hosts and ``*``
        ignores the rest."""
        kept = [f"!{exim_host_regex(pattern)}" for pattern in self.patterns]
        return "<; " + " ; ".join([*kept, "*"])


_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def exim_host_regex(pattern: str) -> str:
    """An anchored, caseless PCRE for one MTA-STS ``mx`` pattern: ``*.example.net`` ->
    ``^(?i:[^.]+\\.example\\.net)$`` (the wildcard is exactly one leftmost label),
    ``mx.example.com`` -> ``^(?i:mx\\.example\\.com)$``. Caseless by itself, as
    mtasts.mx_matches is: DNS keeps an MX name's case, and Exim's ``${if match}`` (where
    an operator may reuse the list) is case-sensitive."""
    name = pattern.rstrip(".").lower()
    wildcard = name.startswith("*.")
    labels = name[2:].split(".") if wildcard else name.split(".")
    # Policies are parsed to letters, digits and hyphens; anything else becomes a \xHH
    # escape, so no character of a pattern can end the regex or the list (";", space).
    escaped = ["".join(c if c in _HOST_CHARS else _escape(c) for c in label)
               for label in labels]
    return "^(?i:" + ("[^.]+\\." if wildcard else "") + "\\.".join(escaped) + ")$"


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\x{{{code:x}}}"


TlsAnswer = TlsPolicy | SecureMatch


def for_status(status: DomainStatus, rule: Rule | None = None,
               sts: StsStatus | None = None) -> TlsAnswer:
    """A ``try`` domain's policy from its status (and, under ``tls: authenticated``,
    its MTA-STS side: never a weaker policy than the rule asked for at RCPT)."""
    if status.status is DomainState.DANE:
        return TlsPolicy.DANE_ONLY
    if status.status is DomainState.TEMPFAIL:
        return TlsPolicy.TEMP
    if rule is not None and wants_sts(status, rule):
        if sts is None or sts.state is StsState.TEMPFAIL:
            return TlsPolicy.TEMP
        if sts.enforced and sts.policy is not None:
            return SecureMatch(sts.policy.mx)
        return TlsPolicy.DANE_ONLY  # neither DANE nor enforce: delivery must wait
    return TlsPolicy.DANE


def socketmap_reply(policy: TlsAnswer, why: str = "") -> bytes:
    """The socketmap_table(5) reply text (before netstring framing)."""
    if isinstance(policy, SecureMatch):
        return b"OK " + policy.postfix().encode()
    if policy is TlsPolicy.NONE:
        return b"NOTFOUND "
    if policy is TlsPolicy.TEMP:
        return b"TEMP " + (why or "DANE status not known yet").encode()
    return b"OK " + policy.value.encode()


# --- Exim's RCPT line --------------------------------------------------------------

def _quoted(value: str) -> str:
    """A double-quoted value for Exim's ${extract{KEY}{LINE}} (backslash escapes)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True, slots=True)
class RcptLine:
    """One answer to ``rcpt DOMAIN``: ``KEY=VALUE`` fields Exim reads with
    ``${extract{action}{$acl_m_dane}}``; ``code``, ``xcode`` and ``text`` only when the
    recipient is refused, ``header`` only when a header is due.
    """

    action: str  # accept | tag | hold | defer | reject
    status: str
    tls: TlsAnswer
    code: int | None = None
    xcode: str | None = None
    text: str | None = None
    header_name: str | None = None
    header: str | None = None

    def encode(self) -> bytes:
        fields = [f"action={self.action}", f"status={self.status}", f"tls={self.tls}"]
        if isinstance(self.tls, SecureMatch):
            # Exim's delivery routes the domain only to hosts the policy names
            # (packaging/exim/routers.conf).
            fields.append(f"sts_ignore_hosts={_quoted(self.tls.exim_ignore_hosts())}")
        if self.code is not None and self.xcode is not None and self.text is not None:
            fields += [f"code={self.code}", f"xcode={self.xcode}",
                       f"text={_quoted(self.text)}"]
        if self.header is not None and self.header_name is not None:
            fields += [f"header_name={self.header_name}", f"header={_quoted(self.header)}"]
        return (" ".join(fields) + "\n").encode()


def rcpt_line(settings: Settings, decision: Decision | None, tls: TlsAnswer) -> RcptLine:
    """``decision`` None: the domain is not checked (off, skipped)."""
    if decision is None:
        return RcptLine("accept", "skipped", tls)
    if settings.report_only:
        return RcptLine("accept", decision.status, tls)
    reply = decision.reply
    if reply is not None and decision.refuses_recipient:
        return RcptLine(decision.action, decision.status, tls, reply.code, reply.xcode,
                        reply.text)
    return RcptLine(decision.action, decision.status, tls, header_name=settings.header,
                    header=decision.header_value())
