"""TLSA records (RFC 6698, RFC 7218 names) and chain matching with SMTP semantics (RFC 7672).

Pure code: takes certificates, records, names and ``now``; performs no I/O.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import IntEnum

from danemilter.errors import InputError


class Usage(IntEnum):
    PKIX_TA = 0
    PKIX_EE = 1
    DANE_TA = 2
    DANE_EE = 3


class Selector(IntEnum):
    CERT = 0
    SPKI = 1


class MatchingType(IntEnum):
    FULL = 0
    SHA2_256 = 1
    SHA2_512 = 2


_DIGEST_LENGTH = {MatchingType.SHA2_256: 32, MatchingType.SHA2_512: 64}


@dataclass(frozen=True, slots=True)
class TLSARecord:
    """One TLSA record as published; any field values a zone may hold are representable.

    Whether the record can be used for SMTP is a property (``usable``), not a
    construction error: RFC 7672 §2.2 distinguishes "all records unusable"
    from "no records" and both must be reportable.
    """

    usage: int
    selector: int
    mtype: int
    data: bytes

    def __post_init__(self) -> None:
        for field, value in (("usage", self.usage), ("selector", self.selector),
                             ("matching type", self.mtype)):
            if not 0 <= value <= 255:
                raise InputError(f"TLSA {field} {value} out of range 0-255")
        if not self.data:
            raise InputError("TLSA record has empty certificate association data")

    @classmethod
    def from_text(cls, text: str) -> TLSARecord:
        """Parse presentation form ``"U S M HEX"`` (hex may contain spaces)."""
        fields = text.split()
        if len(fields) < 4:
            raise InputError(f"TLSA record needs 'usage selector mtype hex': {text!r}")
        try:
            usage, selector, mtype = (int(f, 10) for f in fields[:3])
        except ValueError:
            raise InputError(f"TLSA usage, selector and mtype must be numbers: {text!r}") from None
        try:
            data = bytes.fromhex("".join(fields[3:]))
        except ValueError:
            raise InputError(f"TLSA association data is not hex: {text!r}") from None
        return cls(usage, selector, mtype, data)

    def to_text(self) -> str:
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()}"

    @property
    def usable(self) -> bool:
        """Usable for SMTP per RFC 7672 §3.1: DANE-TA/DANE-EE, known selector and digest."""
        if self.usage not in (Usage.DANE_TA, Usage.DANE_EE):
            return False
        if self.selector not in (Selector.CERT, Selector.SPKI):
            return False
        if self.mtype == MatchingType.FULL:
            return True
        expected = _DIGEST_LENGTH.get(MatchingType(self.mtype)) if self.mtype in (1, 2) else None
        return expected is not None and len(self.data) == expected


def association_data(der: bytes, mtype: int) -> bytes:
    """Hash selected DER content as matching type ``mtype`` prescribes."""
    if mtype == MatchingType.FULL:
        return der
    if mtype == MatchingType.SHA2_256:
        return hashlib.sha256(der).digest()
    if mtype == MatchingType.SHA2_512:
        return hashlib.sha512(der).digest()
    raise InputError(f"unsupported TLSA matching type {mtype}")
