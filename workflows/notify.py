"""The retrain run's webhook: one JSON POST saying how the run ended.

Kept apart from the steps so that what a notification may do is plain: it is tried once, with
a short timeout, and a failure is logged and reported, never raised, since a chat channel
being down must not turn a finished run into a failed one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("turnout.workflows")

#: Seconds a webhook may take before notify gives up on it.
WEBHOOK_TIMEOUT_S = 5.0

#: ``httpx.post`` or a stand-in with its signature (tests).
Post = Callable[..., Any]


def post_webhook(url: str, body: dict[str, Any], post: Post | None = None) -> str:
    """POST ``body`` to ``url``: "sent", or "failed: <why>" (logged as a warning)."""
    import httpx

    try:
        response = (post or httpx.post)(url, json=body, timeout=WEBHOOK_TIMEOUT_S)
        response.raise_for_status()
    except Exception as exc:
        log.warning("notify: webhook %s failed: %s", url, exc)
        return f"failed: {type(exc).__name__}: {exc}"
    return "sent"
