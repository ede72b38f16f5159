"""Probe results in the cache (danemilter.cache.probes) and when the milter wants them.

A cached probe only stands for the DNS data, port and staple request it was taken
under; incomplete probes live only for the retry interval; corrupt entries are misses.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from danemilter.cache import CacheSettings, MemoryBackend, ProbeCache, probe_key, probe_lifetime
from danemilter.cache.codec import CodecError, decode_probes, encode_probes
from danemilter.config import DaneMode, OcspMode, ProbeMode, Rule
from danemilter.dane import DomainState, DomainStatus, HostState, HostStatus
from danemilter.judge import PkixVerdict
from danemilter.policy import staple_request, wants_probe
from danemilter.probe import DomainProbe, OcspRequest, ProbeResult
from danemilter.tlsa import TLSARecord

EE = TLSARecord.from_text("3 1 1 " + "ab" * 32)
OTHER = TLSARecord.from_text("3 1 1 " + "cd" * 32)
NOW = 1_800_000_000.0
SETTINGS = CacheSettings(backend="memory", tempfail_ttl=30, max_ttl=7200)


def dane_status(records: tuple[TLSARecord, ...] = (EE,), address: str = "192.0.2.1",
                state: DomainState = DomainState.DANE) -> DomainStatus:
    host = HostStatus("mx.example.org", 10, (address,), True, HostState.DANE,
                      "mx.example.org", records, "DANE", 300)
    return DomainStatus("example.org", state, 8, True, (host,), "dane", 300)


def result(dane: str = "verified", failed_at: str | None = None,
           ocsp: str = "not-requested") -> ProbeResult:
    return ProbeResult(address="192.0.2.1", port=25, starttls=failed_at is None,
                       tls_version=None if failed_at else "TLSv1.3", dane=dane,  # type: ignore[arg-type]
                       depth=None if failed_at else 0, ocsp=ocsp,  # type: ignore[arg-type]
                       reason="why", ocsp_reason="", ocsp_url="http://ocsp.example/",
                       must_staple=False, failed_at=failed_at, seconds=0.25)  # type: ignore[arg-type]


def probe_of(*results: ProbeResult) -> DomainProbe:
    return DomainProbe(dane_status(), (tuple(results),))


def cache() -> ProbeCache:
    return ProbeCache(MemoryBackend(100), SETTINGS)


def test_codec_round_trip() -> None:
    judged = replace(result("not-applicable"), pkix=PkixVerdict.FAILED,
                     pkix_reason="certificate has expired (depth 0)")
    probes = ((result(), result("failed", "connect"), judged),)
    data = encode_probes(probes, port=2525, ocsp="always", fingerprint="f" * 64, stored_at=NOW,
                         trust="/etc/ssl/roots.pem")
    entry = decode_probes(data)
    assert entry.probes == probes
    assert (entry.port, entry.ocsp, entry.fingerprint, entry.stored_at, entry.trust) == (
        2525, "always", "f" * 64, NOW, "/etc/ssl/roots.pem")


@pytest.mark.parametrize(("why", "mangle"), [
    ("not JSON", lambda d: b"\xff" + d),
    ("unknown verdict", lambda d: d.replace(b'"verified"', b'"trusted"')),
    ("unknown stage", lambda d: d.replace(b'"connect"', b'"dns"')),
    ("extra key", lambda d: d.replace(b'{"address"', b'{"x":1,"address"', 1)),
    ("negative depth", lambda d: d.replace(b'"depth":0', b'"depth":-1')),
    ("version 2, before the PKIX verdict", lambda d: d.replace(b'"v":3', b'"v":2')),
    ("unknown pkix verdict", lambda d: d.replace(b'"pkix":"not-checked"', b'"pkix":"ok"')),
    ("port as text", lambda d: d.replace(b'"port":25,"starttls"', b'"port":"25","starttls"')),
])
def test_codec_rejects_what_is_not_an_entry(why: str, mangle: object) -> None:
    data = encode_probes(((result(), result("failed", "connect")),), port=25, ocsp="auto",
                         fingerprint="f" * 64, stored_at=NOW)
    with pytest.raises(CodecError):
        decode_probes(mangle(data))  # type: ignore[operator]


def test_a_hit_is_judged_again_for_the_current_status() -> None:
    probes = cache()
    mismatch = probe_of(result("mismatch"))
    assert probes.put(dane_status(), mismatch, 25, "auto", ttl=600, now=NOW)
    hit = probes.get(dane_status(), 25, "auto", NOW + 1)
    assert hit is not None
    assert hit.status.status is DomainState.DANE_MISMATCH
    assert hit.probes == mismatch.probes


@pytest.mark.parametrize(("why", "status", "port", "ocsp"), [
    ("new TLSA record", dane_status(records=(EE, OTHER)), 25, "auto"),
    ("new address", dane_status(address="192.0.2.9"), 25, "auto"),
    ("other port", dane_status(), 2525, "auto"),
    ("other staple request", dane_status(), 25, "always"),
])
def test_a_probe_taken_under_other_conditions_is_a_miss(
    why: str, status: DomainStatus, port: int, ocsp: str
) -> None:
    probes = cache()
    probes.put(dane_status(), probe_of(result()), 25, "auto", ttl=600, now=NOW)
    assert probes.get(status, port, ocsp, NOW + 1) is None  # type: ignore[arg-type]
    assert probes.get(dane_status(), 25, "auto", NOW + 1) is not None


def test_lifetimes_and_expiry() -> None:
    complete, incomplete = probe_of(result()), probe_of(result("failed", "connect"))
    assert probe_lifetime(complete, 600, SETTINGS) == 600
    assert probe_lifetime(complete, 86_400, SETTINGS) == 7200  # max_ttl bounds everything
    assert probe_lifetime(incomplete, 600, SETTINGS) == 30  # retried soon
    assert probe_lifetime(probe_of(result("failed", "not-probed")), 600, SETTINGS) == 600
    assert probe_lifetime(complete, 0, SETTINGS) == 0
    probes = cache()
    assert not probes.put(dane_status(), complete, 25, "auto", ttl=0, now=NOW)
    probes.put(dane_status(), incomplete, 25, "auto", ttl=600, now=NOW)
    assert probes.get(dane_status(), 25, "auto", NOW + 29) is not None
    assert probes.get(dane_status(), 25, "auto", NOW + 30) is None


def test_backend_entries_survive_a_new_process_and_corrupt_ones_are_dropped() -> None:
    backend = MemoryBackend(100)
    ProbeCache(backend, SETTINGS).put(dane_status(), probe_of(result()), 25, "auto",
                                      ttl=600, now=NOW)
    assert ProbeCache(backend, SETTINGS).get(dane_status(), 25, "auto", NOW + 1) is not None
    backend.put(probe_key("example.org"), b'{"v":1}', NOW + 600)
    assert ProbeCache(backend, SETTINGS).get(dane_status(), 25, "auto", NOW + 1) is None
    assert backend.get(probe_key("example.org")) is None


def test_the_entry_is_json_with_its_conditions() -> None:
    backend = MemoryBackend(100)
    ProbeCache(backend, SETTINGS).put(dane_status(), probe_of(result()), 25, "auto",
                                      ttl=600, now=NOW)
    found = backend.get(probe_key("example.org"))
    assert found is not None
    document = json.loads(found[0])
    assert (document["port"], document["ocsp"], len(document["fingerprint"])) == (25, "auto", 64)
    assert found[1] == NOW + 600


TRY = Rule(DaneMode.TRY, probe=ProbeMode.INLINE)


@pytest.mark.parametrize(("state", "rule", "wanted"), [
    (DomainState.DANE, TRY, True),
    (DomainState.PARTIAL, TRY, True),
    (DomainState.DANE, replace(TRY, probe=ProbeMode.OFF), False),
    (DomainState.NONE, TRY, False),  # nothing a probe could change
    (DomainState.NONE, replace(TRY, ocsp=OcspMode.REQUIRE), True),
    (DomainState.UNUSABLE_TLSA, replace(TRY, ocsp=OcspMode.AUTO), True),
    (DomainState.TEMPFAIL, replace(TRY, ocsp=OcspMode.STRICT), False),
    (DomainState.NULLMX, TRY, False),
    (DomainState.NXDOMAIN, TRY, False),
])
def test_when_the_milter_probes(state: DomainState, rule: Rule, wanted: bool) -> None:
    assert wants_probe(dane_status(state=state), rule) is wanted


@pytest.mark.parametrize(("ocsp", "request_"), [
    (OcspMode.OFF, "auto"), (OcspMode.AUTO, "auto"),
    (OcspMode.REQUIRE, "always"), (OcspMode.STRICT, "always"),
])
def test_staple_requests_follow_the_rule(ocsp: OcspMode, request_: str) -> None:
    assert staple_request(replace(TRY, ocsp=ocsp)) == request_


@pytest.mark.parametrize(("inspect", "kept"), [(False, False), (True, True)])
def test_an_entry_from_before_the_pkix_verdict_is_a_quiet_miss(
        caplog: pytest.LogCaptureFixture, inspect: bool, kept: bool) -> None:
    backend = MemoryBackend(100)
    probes = ProbeCache(backend, SETTINGS, inspect=inspect)
    current = encode_probes(((result(),),), port=25, ocsp="auto",
                            fingerprint="f" * 64, stored_at=NOW)
    older = json.loads(current)
    older["v"] = 2  # the format before issue 14: no pkix keys
    for probe in older["probes"][0]:
        del probe["pkix"], probe["pkix_reason"]
    backend.put(probe_key("example.org"), json.dumps(older).encode(), NOW + 600)
    with caplog.at_level("INFO"):
        assert probes.get(dane_status(), 25, OcspRequest.AUTO, NOW) is None
    assert "in another format: unsupported entry version 2" in caplog.text
    assert all(record.levelname == "INFO" for record in caplog.records)
    assert (backend.get(probe_key("example.org")) is not None) is kept


def test_a_probe_judged_against_another_trust_store_is_a_miss() -> None:
    # Another CA file, or the same one rewritten, changes every PKIX verdict: the old
    # ones must not be used.
    probes = cache()
    assert probes.put(dane_status(), probe_of(result()), 25, OcspRequest.AUTO, ttl=600,
                      now=NOW, trust="/etc/danemilter/roots.pem@sha256:00aa")
    assert probes.get(dane_status(), 25, OcspRequest.AUTO, NOW + 1,
                      trust="/etc/danemilter/roots.pem@sha256:00aa") is not None
    assert probes.get(dane_status(), 25, OcspRequest.AUTO, NOW + 1) is None
    assert probes.get(dane_status(), 25, OcspRequest.AUTO, NOW + 1,
                      trust="/etc/danemilter/roots.pem@sha256:11bb") is None
    stored = probes.stored("example.org", NOW + 1)
    assert stored is not None and stored[0].trust == "/etc/danemilter/roots.pem@sha256:00aa"


def test_a_probe_written_before_a_step_back_is_stale_and_said_so(
        caplog: pytest.LogCaptureFixture) -> None:
    backend = MemoryBackend(100)
    ProbeCache(backend, SETTINGS).put(dane_status(), probe_of(result()), 25, "auto",
                                      ttl=3600, now=NOW)
    with caplog.at_level("INFO", logger="danemilter.cache"):
        # A fresh reader (nothing in its LRU) whose clock is ten minutes behind.
        assert ProbeCache(backend, SETTINGS).get(dane_status(), 25, "auto", NOW - 600) is None
    (line,) = [r for r in caplog.records if "in the future" in r.getMessage()]
    assert line.levelname == "INFO" and "cached probe of example.org" in line.getMessage()
    assert ProbeCache(backend, SETTINGS).get(dane_status(), 25, "auto", NOW + 1) is not None
