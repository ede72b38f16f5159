"""``policy.exceptions`` applied by the milter session (pymilter's TestCtx, table lookups):
an exempted recipient is accepted and tagged, its header says so, and the use is logged."""

from __future__ import annotations

import logging

import Milter
import pytest

from danemilter.config import parse
from danemilter.milter.libmilter import DaneMilter, Runtime, RuntimeRef
from tests.component.test_milter_callbacks import Ctx, Lookups, TableService, deliver, headers

pytestmark = pytest.mark.timeout(10)


def test_an_active_exception_tags_instead_of_refusing(caplog: pytest.LogCaptureFixture
                                                      ) -> None:
    settings = parse("policy:\n  default: {dane: require, on_fail: reject}\n"
                     "  exceptions:\n"
                     "    plain.example: {until: 2999-01-01, reason: partner ticket 7}\n"
                     "    broken.example: {until: 2000-01-01, reason: long gone}\n", "t.yaml")
    DaneMilter.runtime_ref = RuntimeRef(Runtime(settings, TableService(Lookups())))
    Milter.factory = DaneMilter
    ctx = Ctx()
    ctx._connect()
    with caplog.at_level(logging.INFO, logger="danemilter"):
        replies, _ = deliver(ctx, "a@plain.example", "b@broken.example", "c@dane.example")
    assert replies == [Milter.CONTINUE, Milter.TEMPFAIL, Milter.CONTINUE]
    assert sorted(headers(ctx)) == [
        "dane.example; status=dane; usage=8; ocsp=off; action=accept",
        "plain.example; status=none; usage=0; ocsp=off; action=tag"]
    text = caplog.text
    assert "would reject, exempted by policy.exceptions plain.example" in text
    assert "broken.example expired on 2000-01-01" in text
    # Each use at info; an expired entry, ignored, is a warning.
    uses = {(r.levelname, "expired on" in r.getMessage()) for r in caplog.records
            if "policy.exceptions" in r.getMessage()}
    assert uses == {("INFO", False), ("WARNING", True)}, uses
