"""The daemon's log writer: callers only append; one thread writes, in order, a stream
handler's share of a batch in one write."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from danemilter.logwriter import BatchingWriter

pytestmark = pytest.mark.timeout(10)


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


class Collected(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def stop(writer: BatchingWriter, *handlers: logging.Handler) -> None:
    """stop() hands the handlers back to the root logger, as the daemon wants at exit;
    a test takes them away again."""
    writer.stop()
    for handler in handlers:
        logging.getLogger().removeHandler(handler)


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = logging.getLogger("danemilter.test.logwriter")
    log.setLevel(logging.DEBUG)
    log.propagate = False  # only the writer under test sees these records
    yield log
    log.propagate = True
    for handler in list(log.handlers):
        log.removeHandler(handler)


def test_a_batch_is_one_write_in_order_and_other_handlers_get_each_record(
        logger: logging.Logger) -> None:
    stream = CountingStream()
    text_handler = logging.StreamHandler(stream)
    text_handler.setLevel(logging.INFO)
    text_handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    other = Collected()
    # A long interval: nothing is written until stop() drains what came.
    writer = BatchingWriter([text_handler, other], interval=3600)
    logger.addHandler(writer.collector)
    writer._thread.start()
    for n in range(300):
        logger.info("message %d", n)
    logger.debug("not for the stream")
    logger.warning("last")
    assert stream.getvalue() == ""  # callers never write
    stop(writer, text_handler, other)
    lines = stream.getvalue().splitlines()
    assert lines == [f"INFO message {n}" for n in range(300)] + ["WARNING last"]
    assert stream.writes == 1
    assert other.messages == ["last"]


def record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("danemilter.test", logging.INFO, __file__, 1, message, args, None)


def test_a_record_that_cannot_be_formatted_does_not_lose_the_others(
        capsys: pytest.CaptureFixture[str]) -> None:
    stream = CountingStream()
    handler = logging.StreamHandler(stream)
    writer = BatchingWriter([handler], interval=3600)
    writer._thread.start()
    # Straight to the collector, as the root logger hands records to it in the daemon.
    for item in (record("before"), record("%d broken", "not a number"), record("after")):
        writer.collector.handle(item)
    stop(writer, handler)
    assert stream.getvalue().splitlines() == ["before", "after"]
    assert "TypeError" in capsys.readouterr().err  # logging's own report of the bad one
