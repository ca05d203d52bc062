"""The router's access log writes the lines logging would have written, without logging."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from services.router.access import FLUSH_S, AccessLog

RECORD = {"request_id": "r1", "model": "fraud", "variant": "stable", "status": 200}


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A logger configured like the router's process: the bare message on a stream."""
    log = logging.getLogger("test.router.access")
    log.propagate = False
    log.setLevel(logging.INFO)
    yield log
    log.handlers.clear()


def stream_handler(log: logging.Logger, fmt: str = "%(message)s") -> io.StringIO:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter(fmt))
    log.handlers = [handler]  # the only one (pytest adds capturing handlers)
    return out


def test_lines_are_what_logging_printed_and_appear_within_the_flush_delay(logger) -> None:
    out = stream_handler(logger)
    records = [{**RECORD, "request_id": f"r{i}", "payload": "é"} for i in range(3)]

    async def main() -> None:
        log = AccessLog(logger)
        for record in records:
            log.write(record)
        assert out.getvalue() == ""  # buffered
        await asyncio.sleep(FLUSH_S * 2)

    asyncio.run(main())
    expected = io.StringIO()
    handler = logging.StreamHandler(expected)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.handlers = [handler]
    for record in records:
        logger.info(orjson.dumps(record).decode())
    assert out.getvalue() == expected.getvalue()


def test_a_logger_disabled_for_info_gets_no_lines(logger) -> None:
    out = stream_handler(logger)
    logger.setLevel(logging.WARNING)
    assert not AccessLog(logger).enabled
    assert out.getvalue() == ""


def test_another_format_still_goes_through_logging(logger) -> None:
    out = stream_handler(logger, "access %(levelname)s %(message)s")
    AccessLog(logger).write(RECORD)  # no event loop needed: written at once
    assert out.getvalue().startswith('access INFO {"request_id":"r1"')
