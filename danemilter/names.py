"""Domain names and mail addresses as they arrive from users and MTAs.

Everything downstream works on one canonical form: lower-case A-labels
(IDNA 2008, UTS #46 mapping), no trailing dot, validated lengths.
"""

from __future__ import annotations

import idna

from danemilter.errors import InputError

_MAX_NAME = 253
_MAX_LABEL = 63
_LDH = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def normalize_domain(text: str) -> str:
    """Return the canonical A-label form of a domain, or raise InputError."""
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
    for label in ascii_name.split("."):
        if not label or len(label) > _MAX_LABEL:
            raise InputError(f"invalid label length in domain name {text!r}")
        if not set(label) <= _LDH or label.startswith("-") or label.endswith("-"):
            raise InputError(f"invalid character in domain name {text!r}")
    return ascii_name


def domain_of_address(address: str) -> str:
    """The canonical recipient domain of an envelope address such as ``<user@example.org>``.

    Raises InputError for addresses without a DNS domain: no ``@``, an address
    literal, or a malformed domain.
    """
    addr = address.strip()
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1].strip()
    # A source route (<@a,@b:user@d>) is obsolete but legal; the domain is after the colon.
    if addr.startswith("@") and ":" in addr:
        addr = addr.split(":", 1)[1]
    at = addr.rfind("@")
    if at <= 0:
        raise InputError(f"address has no domain: {address!r}")
    return normalize_domain(addr[at + 1 :])
