"""Reading requests and writing replies in raw ASGI, for the router's handlers.

The router runs no framework in its hot path; these few helpers are all it needs, shared by
dispatch (routing and errors), forward (inference) and feedback.
"""

from __future__ import annotations

from collections.abc import Mapping

from turnout_sdk import protocol as oip
from turnout_sdk.http import Receive, Scope, Send


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def respond(send: Send, status: int, body: bytes, headers: Mapping[str, str]) -> None:
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def error(send: Send, status: int, message: str) -> None:
    """An error in the inference protocol's shape: ``{"error": message}``."""
    await respond(send, status, oip.error_body(message), {"content-type": "application/json"})
