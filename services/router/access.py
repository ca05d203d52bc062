"""The router's access log: one JSON line per answered request, without ``logging``'s cost.

Through ``logging`` each line cost a LogRecord, a formatter pass, a lock and a flushed write: a
system call per request. The router's process prints the bare message on stdout (main.py), so
the fast path writes the very same lines to the handler's stream itself, buffered: at most
0.1 s late, at once past 64 KiB, and at exit. A logger disabled for INFO gets no lines, as
before; any other logging set-up (another format, a filter, a handler that is not a stream)
gets each record through ``logging``, as before.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import weakref
from typing import Any

import orjson

access = logging.getLogger("turnout.router.access")

#: Longest a line waits in the buffer, and the size at which it is written at once.
FLUSH_S = 0.1
FLUSH_BYTES = 64 * 1024

_open: weakref.WeakSet[AccessLog] = weakref.WeakSet()


class AccessLog:
    def __init__(self, logger: logging.Logger = access) -> None:
        self._logger = logger
        #: Whether lines are written at all (the logger is enabled for INFO).
        self.enabled = logger.isEnabledFor(logging.INFO)
        self._handler = _bare_stream_handler(logger) if self.enabled else None
        self._lines: list[bytes] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        _open.add(self)

    def write(self, record: dict[str, Any]) -> None:
        line = orjson.dumps(record)
        if self._handler is None:
            self._logger.info(line.decode())
            return
        self._lines.append(line)
        self._size += len(line) + 1
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_S, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines or self._handler is None:
            return
        text = b"\n".join(self._lines).decode() + self._handler.terminator
        self._lines, self._size = [], 0
        handler = self._handler
        handler.acquire()
        try:
            handler.stream.write(text)
            handler.flush()
        finally:
            handler.release()


def _bare_stream_handler(logger: logging.Logger) -> logging.StreamHandler[Any] | None:
    """The one handler a record of ``logger`` reaches, when it prints the bare message to a
    stream; None for anything else."""
    handlers: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        handlers += [h for h in current.handlers if h.level <= logging.INFO]
        current = current.parent if current.propagate else None
    if len(handlers) != 1:
        return None
    (handler,) = handlers
    fmt = handler.formatter._fmt if handler.formatter is not None else "%(message)s"
    if (
        not isinstance(handler, logging.StreamHandler)
        or handler.filters
        or fmt != "%(message)s"
        or getattr(handler, "stream", None) is None
    ):
        return None
    return handler


@atexit.register
def _flush_all() -> None:
    for log in list(_open):
        log.flush()
