"""Domain names and mail addresses as they arrive from users and MTAs.

Everything downstream works on one canonical form: lower-case A-labels
(IDNA 2008, UTS #46 mapping), no trailing dot, validated lengths.

:func:`delivery_destination` says which domain an MTA will deliver a recipient to,
following the address rewriting Postfix does at its defaults (percent hack, bang
paths, dequoted local parts, a trailing ``@``, local domains stripped), so that a
policy cannot be bypassed by writing an address the MTA rewrites afterwards.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

import idna

from danemilter.errors import InputError

_MAX_NAME = 253
_MAX_LABEL = 63
_LDH = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
_LDH_UNDERSCORE = _LDH | {"_"}


def normalize_domain(text: str, *, underscore: bool = False) -> str:
    """Return the canonical A-label form of a domain, or raise InputError.

    ``underscore``: allow ``_`` in ASCII labels. A mail domain may hold one (DNS
    labels are any octets, RFC 2181 §11, and a wildcard answers for it): it must be
    looked up, not refused as "not a domain" and left unchecked.
    """
    name = text.strip()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise InputError(f"empty domain name in {text!r}")
    if name.startswith("[") or "@" in name:
        raise InputError(f"not a DNS domain name: {text!r}")
    try:
        if name.isascii():
            ascii_name = name.lower()
        else:
            ascii_name = idna.encode(name, uts46=True, transitional=False).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise InputError(f"invalid internationalized domain name {text!r}: {exc}") from None
    if len(ascii_name) > _MAX_NAME:
        raise InputError(f"domain name longer than {_MAX_NAME} octets: {text!r}")
    allowed = _LDH_UNDERSCORE if underscore else _LDH
    for label in ascii_name.split("."):
        if not label or len(label) > _MAX_LABEL:
            raise InputError(f"invalid label length in domain name {text!r}")
        if not set(label) <= allowed or label.startswith("-") or label.endswith("-"):
            raise InputError(f"invalid character in domain name {text!r}")
    return ascii_name


# --- where an MTA delivers a recipient ------------------------------------------------

# Tokens of an address: the routing operators outside quotes and brackets are one
# character each; everything else is a run of text (``"..."`` quoted strings and
# ``[...]`` literals kept whole, with their delimiters).
_OPERATORS = frozenset("@%!")
# Postfix's resolver stops rewriting after as many rounds; an address needing more is
# not one a real sender writes.
_MAX_REWRITES = 32
_CLOSING = {'"': '"', "[": "]"}
_POSTMASTER = "postmaster"


@dataclass(frozen=True, slots=True)
class Destination:
    """Where the MTA delivers one recipient.

    ``domain``: the canonical domain it is delivered to over SMTP; else ``local``
    (delivered by the MTA itself: a local domain or ``postmaster``); else neither,
    and ``reason`` says why the destination cannot be known here (a fixed phrase
    without any of the address: it goes into SMTP replies).
    """

    domain: str | None
    local: bool = False
    reason: str = ""


_SIMPLE_ADDRESS = re.compile(r"[A-Za-z0-9.+_=-]+@([A-Za-z0-9._-]+)")


@functools.lru_cache(maxsize=4096)
def _normalized_ascii(name: str) -> str:
    return normalize_domain(name, underscore=True)


def _tokens(text: str) -> list[str]:
    tokens: list[str] = []
    run: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in _OPERATORS:
            if run:
                tokens.append("".join(run))
                run = []
            tokens.append(ch)
            i += 1
            continue
        end = i + 1
        if ch == "\\":
            end = i + 2  # an escaped character is text, never an operator
        elif ch in _CLOSING:
            close = _CLOSING[ch]
            while end < len(text) and text[end] != close:
                end += 2 if text[end] == "\\" else 1
            end += 1
        run.append(text[i:end])
        i = end
    if run:
        tokens.append("".join(run))
    return tokens


def _dequote(token: str) -> str | None:
    """The content of a token that is one whole quoted string, else None."""
    if len(token) < 2 or not token.startswith('"') or not token.endswith('"'):
        return None
    body, out, i = token[1:-1], [], 0
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body):
            i += 1
        elif body[i] == '"':
            return None  # two quoted strings, or text between them
        out.append(body[i])
        i += 1
    return "".join(out)


def _last(tokens: list[str], operator: str) -> int:
    return max((i for i, t in enumerate(tokens) if t == operator), default=-1)


def delivery_destination(address: str, is_local: Callable[[str], bool]) -> Destination:
    """Where the MTA delivers the envelope recipient ``address`` (``<...>`` optional).

    Rewrites as Postfix's trivial-rewrite does at its defaults until the address is
    stable: the rightmost ``@`` names the domain; a local one (``is_local``) is
    stripped and what is left is rewritten again: ``site!user`` becomes
    ``user@site`` (``swap_bangpath``), then ``user%domain`` becomes ``user@domain``
    (``allow_percent_hack``), and a local part that is one quoted string holding an
    operator is unquoted (``resolve_dequoted_address``); a trailing ``@`` is dropped.
    An address without a domain gets the MTA's own ``myorigin``, which is not known
    here: such an address (``postmaster`` aside, RFC 5321 §4.5.1) has no known
    destination, nor has an address literal or a malformed domain.
    """
    text = address.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    simple = _SIMPLE_ADDRESS.fullmatch(text)
    if simple is not None:
        # Nearly every recipient: a plain local part (no operator, quote or escape)
        # and an ASCII domain, which no rewriting below would change.
        try:
            domain = _normalized_ascii(simple.group(1))
        except InputError:
            return Destination(None, reason="its domain is not a valid DNS name")
        return Destination(None, local=True) if is_local(domain) else Destination(domain)
    return rewrite(text, is_local)


def rewrite(text: str, is_local: Callable[[str], bool]) -> Destination:
    """:func:`delivery_destination` for any address text, rewriting it step by step."""
    # A source route (<@a,@b:user@d>) is obsolete and ignored (RFC 5321 §4.1.1.3,
    # Postfix strips it): the address is after the colon.
    if text.startswith("@") and ":" in text:
        text = text.split(":", 1)[1]
    tokens = _tokens(text)
    stripped_local = False
    for _ in range(_MAX_REWRITES):
        at = _last(tokens, "@")
        if at >= 0:
            domain_text = "".join(tokens[at + 1:])
            if domain_text:
                if domain_text.startswith("["):
                    return Destination(None, reason="addressed to an address literal")
                try:
                    domain = normalize_domain(domain_text, underscore=True)
                except InputError:
                    return Destination(None, reason="its domain is not a valid DNS name")
                if not is_local(domain):
                    return Destination(domain)
                stripped_local = True
            tokens = tokens[:at]
            continue
        bang = tokens.index("!") if "!" in tokens else -1
        if bang >= 0:
            tokens = [*tokens[bang + 1:], "@", *tokens[:bang]]
            continue
        percent = _last(tokens, "%")
        if percent >= 0:
            tokens = [*tokens[:percent], "@", *tokens[percent + 1:]]
            continue
        inner = _dequote(tokens[0]) if len(tokens) == 1 else None
        if inner is not None and any(op in inner for op in _OPERATORS):
            if stripped_local:
                tokens = _tokens(inner)
                continue
            return Destination(None, reason="no domain, and the MTA routes its quoted "
                               "local part after adding its own domain")
        if stripped_local:
            return Destination(None, local=True)
        if len(tokens) == 1 and tokens[0].lower() == _POSTMASTER:
            return Destination(None, local=True)
        return Destination(None, reason="no domain, and the MTA adds its own (myorigin)")
    return Destination(None, reason=f"more than {_MAX_REWRITES} address rewrites")


def domain_of_address(address: str) -> str:
    """The canonical domain of ``address`` when no domain is local (see
    :func:`delivery_destination`); InputError when it has none that is known."""
    destination = delivery_destination(address, lambda _domain: False)
    if destination.domain is None:
        raise InputError(f"cannot tell the domain of {address[:80]!r}: {destination.reason}")
    return destination.domain
