"""Route table from a YAML or JSON file, re-read within a second of a change.

A file that does not parse or validate is rejected with a logged reason; the last good table
keeps serving.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import yaml

from turnout.core.spec import RouteTable, SpecError, parse_route_table
from turnout_sdk.periodic import Periodic

log = logging.getLogger("turnout.router")


def load(path: Path) -> RouteTable:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        doc = yaml.safe_load(text)  # JSON is YAML too
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML/JSON: {exc}") from None
    try:
        return parse_route_table(doc)
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None


class FileRouteSource:
    def __init__(
        self,
        path: Path,
        *,
        on_table: Callable[[RouteTable], None],
        on_error: Callable[[str], None],
        interval: float = 0.2,
    ) -> None:
        self.path = path
        self._on_table = on_table
        self._on_error = on_error
        self._seen: object = object()  # nothing seen yet
        self._poller = Periodic(self.poll, interval)

    def poll(self) -> None:
        """Load the file if its content changed since the last look.

        Content, not mtime: two writes within one filesystem timestamp tick look unchanged by
        mtime and size. A route file is small, so reading it five times a second is cheap.
        """
        stamp: bytes | None
        try:
            stamp = self.path.read_bytes()
        except OSError:
            stamp = None
        if stamp == self._seen:
            return
        self._seen = stamp
        try:
            table = load(self.path)
        except SpecError as exc:
            log.error("route table rejected, keeping the previous one: %s", exc)
            self._on_error(str(exc))
            return
        self._on_table(table)

    def start(self) -> None:
        self._poller.start()

    async def stop(self) -> None:
        await self._poller.stop()
