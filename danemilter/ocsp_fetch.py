"""Fetching OCSP responses over HTTP and maintaining a staple file (the I/O half of OCSP).

Verification is ``danemilter.ocsp``; this module asks responders (RFC 6960 appendix A,
RFC 5019 style: GET for small requests, POST otherwise) and replaces a staple file the
way an MTA that reads it at any moment needs: never partially written, never worse
than what it replaces, never kept when its signer would expire first.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import logging
import os
import stat
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp as x509_ocsp

from danemilter.certs import load_der_certificate, ocsp_urls
from danemilter.errors import DanemilterError, InputError
from danemilter.ocsp import (
    TEMPORARY_RESPONDER_STATUSES,
    OCSPVerdict,
    StapleAction,
    choose_staple,
    verify_response,
    with_certificate,
)

logger = logging.getLogger(__name__)

# RFC 5019 §5: GET when the encoded request keeps the URL under 255 bytes.
_GET_LIMIT = 255
# A response is a few kilobytes; a responder sending more is broken or hostile.
MAX_RESPONSE_BYTES = 256 * 1024
_NEW_FILE_MODE = 0o644  # a staple is public data the MTA user must read


class TemporaryFetchError(DanemilterError):
    """The responder could not be asked or did not answer (retry later)."""

    exit_code = 3


class NoOCSPURLError(DanemilterError):
    """The certificate names no OCSP responder and none was given."""

    exit_code = 4


def build_request(cert: x509.Certificate, issuer: x509.Certificate) -> bytes:
    """A DER OCSPRequest for one certificate: SHA-1 CertID, no nonce.

    SHA-1 because that is the CertID every responder indexes by (RFC 5019 §2.1.1);
    no nonce so that responders and CDNs may answer from cache.
    """
    builder = x509_ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())
    return builder.build().public_bytes(serialization.Encoding.DER)


def fetch_response(url: str, request_der: bytes, *, timeout: float,
                   method: str = "auto") -> bytes:
    """Ask the responder at ``url``; return the body of its answer.

    ``method`` is ``get``, ``post`` or ``auto`` (GET when the request is small, falling
    back to POST when the responder refuses GET). Raises TemporaryFetchError when no
    answer could be had; the body itself is not judged here.
    """
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise InputError(f"OCSP URL {url!r} is not an http(s) URL")
    encoded = urllib.parse.quote(base64.b64encode(request_der).decode("ascii"), safe="")
    get_url = url.rstrip("/") + "/" + encoded
    use_get = method == "get" or (method == "auto" and len(get_url) <= _GET_LIMIT)
    if use_get:
        try:
            return _http(urllib.request.Request(get_url, method="GET"), timeout)
        except _HTTPRefused as refused:
            if method == "get":
                raise TemporaryFetchError(str(refused)) from refused
            logger.info("responder refused GET (%s); retrying with POST", refused)
    request = urllib.request.Request(
        url, data=request_der, method="POST",
        headers={"Content-Type": "application/ocsp-request"},
    )
    try:
        return _http(request, timeout)
    except _HTTPRefused as refused:
        raise TemporaryFetchError(str(refused)) from refused


class _HTTPRefused(Exception):
    """The responder answered with an HTTP error status."""


def _http(request: urllib.request.Request, timeout: float) -> bytes:
    request.add_header("Accept", "application/ocsp-response")
    request.add_header("User-Agent", "danemilter-ocsp-fetch")
    where = request.full_url if len(request.full_url) < 120 else request.full_url[:117] + "..."
    logger.debug("%s %s", request.get_method(), where)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            body: bytes = reply.read(MAX_RESPONSE_BYTES + 1)
            content_type = reply.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        raise _HTTPRefused(f"{request.get_method()} {where}: HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        # URLError wraps refused connections and DNS failures; socket timeouts and
        # junk that is not HTTP at all arrive as OSError / HTTPException.
        reason = getattr(exc, "reason", exc)
        raise TemporaryFetchError(f"{request.get_method()} {where}: {reason}") from exc
    if len(body) > MAX_RESPONSE_BYTES:
        # Judged like any other unusable body: the verifier will call it malformed.
        logger.warning("response from %s exceeds %d bytes; ignoring it", where,
                       MAX_RESPONSE_BYTES)
        return b""
    if content_type.split(";")[0].strip().lower() != "application/ocsp-response":
        logger.info("responder sent Content-Type %r", content_type)
    return body


# ----------------------------------------------------------------- staple file


def read_staple(path: Path) -> bytes | None:
    """The current staple, or None when there is none (a missing file is normal)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, whole.

    Temp file in the same directory (rename is atomic only within a filesystem),
    fsync before rename (so a crash cannot leave a renamed empty file), fsync of the
    directory after (so the rename itself survives a crash). Mode and owner of an
    existing file are kept: the MTA user must still be able to read it.
    """
    directory = path.parent
    try:
        old = path.stat()
    except FileNotFoundError:
        old = None
    except OSError as exc:
        raise InputError(f"cannot stat {path}: {exc.strerror}") from exc
    try:
        fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                         dir=directory)
    except OSError as exc:
        raise InputError(f"cannot create a file in {directory}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if old is not None:
                os.fchmod(handle.fileno(), stat.S_IMODE(old.st_mode))
                try:
                    os.fchown(handle.fileno(), old.st_uid, old.st_gid)
                except PermissionError:
                    logger.warning("cannot keep owner %d:%d of %s (not root); the new file "
                                   "is owned by this user", old.st_uid, old.st_gid, path)
            else:
                os.fchmod(handle.fileno(), _NEW_FILE_MODE)
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise InputError(f"cannot write {path}: {exc.strerror}") from exc
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class Outcome(StrEnum):
    REPLACED = "replaced"
    KEPT = "kept"  # the current staple is good and at least as good as the new answer
    REFUSED = "refused"  # the responder's answer is not a good, usable proof


@dataclass(frozen=True, slots=True)
class RefreshResult:
    outcome: Outcome
    message: str
    new: OCSPVerdict
    current: OCSPVerdict | None


def refresh_staple(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    out: Path,
    *,
    now: datetime,
    url: str | None = None,
    min_remaining: timedelta = timedelta(hours=1),
    timeout: float = 10.0,
    method: str = "auto",
    signer_certs: tuple[x509.Certificate, ...] = (),
) -> RefreshResult:
    """Fetch a response for ``cert`` and replace ``out`` with it when it is better.

    Raises NoOCSPURLError, TemporaryFetchError (responder down, or it answered
    tryLater/internalError), InputError (local files). A response refused for any
    other reason is a REFUSED result, never written.
    """
    urls = [url] if url is not None else ocsp_urls(cert)
    if not urls:
        raise NoOCSPURLError(
            f"certificate {cert.subject.rfc4514_string()} has no OCSP URL "
            "(no AIA OCSP entry); give --url, or do not staple for it")
    request_der = build_request(cert, issuer)
    body = fetch_response(urls[0], request_der, timeout=timeout, method=method)
    new = verify_response(body, cert, issuer, now, extra_certs=signer_certs)
    if new.reason == "responder-error" and new.responder_status in TEMPORARY_RESPONDER_STATUSES:
        raise TemporaryFetchError(f"responder {urls[0]} answered {new.responder_status}")

    current_der = read_staple(out)
    current = None
    if current_der is not None:
        current = verify_response(current_der, cert, issuer, now, extra_certs=signer_certs)
        logger.debug("current staple %s: %s (%s)", out, current.status, current.reason)

    if new.good and new.signer_delegated and not new.signer_included:
        # The responder relies on clients knowing its certificate; they do not.
        assert new.signer_der is not None
        signer = load_der_certificate(new.signer_der, "the delegated responder")
        body = with_certificate(body, signer)
        # The edit must not have changed what the response proves.
        new = verify_response(body, cert, issuer, now)
        logger.info("added the delegated responder's certificate to the response")

    choice = choose_staple(current, new, now, min_remaining,
                           identical=current_der is not None and current_der == body)
    if choice.action == StapleAction.REFUSE:
        return RefreshResult(Outcome.REFUSED, choice.why, new, current)
    if choice.action == StapleAction.KEEP:
        return RefreshResult(Outcome.KEPT, choice.why, new, current)
    write_atomically(out, body)
    return RefreshResult(Outcome.REPLACED, choice.why, new, current)

