"""MTA-STS (RFC 8461) records and policies: parsing and MX matching, pure.

* ``_mta-sts.DOMAIN`` TXT (§3.1): ``v=STSv1; id=...``; records not starting with
  ``v=STSv1;`` are discarded, and more than one that does means no policy.
* The policy file (§3.2): ``key: value`` lines separated by LF or CRLF (erratum 6253);
  ``version: STSv1`` (anywhere: the ABNF fixes no order), ``mode``
  enforce|testing|none, ``max_age`` 0..31557600, one or more ``mx`` unless the mode is
  none; unknown keys are ignored (§3.2: "SHOULD be ignored"), a known key given twice
  (other than ``mx``) makes the policy invalid.
* MX patterns (§4.1): an exact name, or ``*.`` followed by a name, which matches exactly
  one further leftmost label.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from danemilter.errors import InputError

MAX_POLICY_OCTETS = 64 * 1024  # §3.3: senders may limit the policy's size; 64 KiB is usual
MAX_AGE_LIMIT = 31_557_600     # §3.2: one year
_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_FIELD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_MX_PATTERN = re.compile(rf"(?:\*\.)?(?:{_LABEL}\.)*{_LABEL}\.?")


class StsError(InputError):
    """An MTA-STS record or policy that does not parse; the message says why."""


class StsMode(StrEnum):
    ENFORCE = "enforce"
    TESTING = "testing"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class StsRecord:
    """The ``_mta-sts`` TXT record: only its policy id matters to a sender (§3.1)."""

    id: str


@dataclass(frozen=True, slots=True)
class StsPolicy:
    mode: StsMode
    max_age: int
    mx: tuple[str, ...]

    def matches(self, host: str) -> bool:
        """Whether MX ``host`` is one the policy names (§4.1)."""
        return any(mx_matches(pattern, host) for pattern in self.mx)

    def to_text(self) -> str:
        lines = ["version: STSv1", f"mode: {self.mode}", *(f"mx: {p}" for p in self.mx),
                 f"max_age: {self.max_age}"]
        return "\n".join(lines) + "\n"


def parse_record(strings: list[str]) -> StsRecord | None:
    """The one MTA-STS record among the TXT records of ``_mta-sts.DOMAIN`` (each given
    as its character strings joined), or None when there is none; StsError when the
    STSv1 record is malformed or there are several (§3.1: then no policy applies)."""
    candidates = [text for text in strings if text.startswith("v=STSv1;")]
    if not candidates:
        return None
    if len(candidates) > 1:
        raise StsError(f"{len(candidates)} TXT records start with v=STSv1")
    fields: dict[str, str] = {}
    for part in candidates[0].split(";"):
        term = part.strip(" \t")
        if not term:
            continue
        name, sep, value = term.partition("=")
        if not sep or not _FIELD_NAME.fullmatch(name):
            raise StsError(f"malformed TXT field {term[:40]!r}")
        fields.setdefault(name, value)
    record_id = fields.get("id")
    if record_id is None:
        raise StsError("TXT record has no id")
    if not _ID.fullmatch(record_id):
        raise StsError(f"TXT record id {record_id[:40]!r} is not 1-32 letters and digits")
    return StsRecord(record_id)


def parse_policy(text: str) -> StsPolicy:
    """The policy file's content (already decoded; see :func:`decode_policy`)."""
    lines = text.split("\n")
    values: dict[str, str] = {}
    mx: list[str] = []
    for raw in lines:
        line = raw[:-1] if raw.endswith("\r") else raw
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep or not _FIELD_NAME.fullmatch(name):
            raise StsError(f"malformed policy line {line[:60]!r}")
        value = value.strip(" \t")
        if name == "mx":
            if not _MX_PATTERN.fullmatch(value):
                raise StsError(f"malformed mx pattern {value[:60]!r}")
            mx.append(value.rstrip(".").lower())
        elif name in ("version", "mode", "max_age"):
            if name in values:
                raise StsError(f"policy field {name!r} given twice")
            values[name] = value
    if values.get("version") != "STSv1":
        raise StsError("the policy has no 'version: STSv1'")
    try:
        mode = StsMode(values.get("mode", ""))
    except ValueError:
        raise StsError(f"policy mode {values.get('mode', '')[:20]!r} is not "
                       "enforce|testing|none") from None
    age = values.get("max_age", "")
    if not age.isdigit() or len(age) > 10 or int(age) > MAX_AGE_LIMIT:
        raise StsError(f"policy max_age {age[:20]!r} is not 0-{MAX_AGE_LIMIT}")
    if mode is not StsMode.NONE and not mx:
        raise StsError(f"a {mode} policy names no mx")
    return StsPolicy(mode, int(age), tuple(mx))


def decode_policy(body: bytes, content_type: str | None) -> StsPolicy:
    """The policy from an HTTPS response body: ``text/plain`` (§3.3), UTF-8 or ASCII."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "text/plain":
        raise StsError(f"policy served as {media or 'no media type'!r}, not text/plain")
    if len(body) > MAX_POLICY_OCTETS:
        raise StsError(f"policy larger than {MAX_POLICY_OCTETS} octets")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise StsError("policy is not UTF-8 text") from None
    return parse_policy(text)


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 §4.1: ``*.example.net`` matches ``mx1.example.net`` but neither
    ``example.net`` nor ``a.b.example.net``; names compare without case and final dot."""
    host = host.rstrip(".").lower()
    pattern = pattern.rstrip(".").lower()
    if pattern.startswith("*."):
        first, dot, rest = host.partition(".")
        return bool(first) and bool(dot) and rest == pattern[2:]
    return host == pattern


class StsState(StrEnum):
    """A domain's MTA-STS side, as verdicts and headers show it (``sts=...``)."""

    ENFORCE = "enforce"
    TESTING = "testing"
    NONE = "none"
    ABSENT = "absent"
    INVALID = "invalid"
    TEMPFAIL = "tempfail"


@dataclass(frozen=True, slots=True)
class StsStatus:
    """What a sender knows of a domain's MTA-STS policy at one moment.

    ``policy`` is the policy in force (perhaps a cached one while a refresh fails, §5.1);
    ``state`` is its mode, or why there is none.
    """

    domain: str
    state: StsState
    policy: StsPolicy | None
    id: str | None
    reason: str

    @classmethod
    def of(cls, domain: str, policy: StsPolicy, policy_id: str | None, reason: str
           ) -> StsStatus:
        return cls(domain, StsState(policy.mode.value), policy, policy_id, reason)

    @property
    def enforced(self) -> bool:
        """Only ``enforce`` can satisfy a rule that requires authenticated TLS (§5)."""
        return self.state is StsState.ENFORCE

    def to_json(self) -> dict[str, object]:
        return {"state": str(self.state), "id": self.id, "reason": self.reason,
                "mode": None if self.policy is None else str(self.policy.mode),
                "mx": [] if self.policy is None else list(self.policy.mx),
                "max_age": None if self.policy is None else self.policy.max_age}


@dataclass(frozen=True, slots=True)
class CachedPolicy:
    """A policy a sender fetched: kept for its max_age (§5.1), under the TXT id it had."""

    policy: StsPolicy
    id: str
    fetched_at: float

    @property
    def expires_at(self) -> float:
        return self.fetched_at + self.policy.max_age

    def fresh(self, now: float) -> bool:
        return now < self.expires_at


# A cached policy is fetched again, in the background, once less than this part of its
# max_age is left (at most a day before it expires): a domain still mailed to keeps a
# policy in force without a recipient ever waiting for the fetch.
REFRESH_FRACTION = 0.25
REFRESH_AHEAD_LIMIT = 86_400.0


def refresh_due(cached: CachedPolicy, now: float) -> bool:
    """Whether a fresh cached policy is near enough its expiry to be fetched again."""
    ahead = min(cached.policy.max_age * REFRESH_FRACTION, REFRESH_AHEAD_LIMIT)
    return cached.fresh(now) and cached.expires_at - now < ahead


def needs_fetch(txt_id: str | None, cached: CachedPolicy | None, now: float) -> bool:
    """§3.3/§5.1: fetch when the TXT record names a policy id and no fresh cached
    policy has that id."""
    if txt_id is None:
        return False
    return cached is None or not cached.fresh(now) or cached.id != txt_id


def without_fetch(domain: str, absent: bool, reason: str, cached: CachedPolicy | None,
                  now: float, *, transient: bool) -> StsStatus:
    """The status when no new policy came: a fresh cached policy stays in force (§5.1:
    even when the TXT record is gone or the fetch failed), else absent, tempfail
    (``transient`` trouble) or invalid."""
    if cached is not None and cached.fresh(now):
        return StsStatus.of(domain, cached.policy, cached.id,
                            f"cached policy (id {cached.id}) in force: {reason}")
    if absent:
        return StsStatus(domain, StsState.ABSENT, None, None, reason)
    state = StsState.TEMPFAIL if transient else StsState.INVALID
    return StsStatus(domain, state, None, None, reason)
