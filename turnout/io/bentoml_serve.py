"""`bentoml serve`, with workers that die with it.

BentoML starts its workers through circus, which puts each in a session of its own (setsid).
A SIGKILL of the `bentoml serve` process (the OOM killer, a crashed supervisor's cleanup, an
operator's `kill -9`) therefore left the workers serving on the port: a version the local
controller counted as gone went on answering whoever held its URL. Started through this
module, each worker asks the kernel for SIGKILL when its parent dies (PR_SET_PDEATHSIG), so the
port goes quiet at once. A normal stop is unchanged: the parent stops its workers first.

``python -m turnout.io.bentoml_serve serve TARGET ...`` takes exactly `bentoml`'s arguments;
turnout.io.processes.serve_command builds that line for the supervisor, `turnout serve` and
the tests. In a container the same holds without help: the server is PID 1 there, and its
end ends the container.
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable
from typing import Any

import circus.process
import psutil

_PR_SET_PDEATHSIG = 1
#: Looked up before any fork: loading a library between fork and exec can deadlock.
_prctl = ctypes.CDLL(None, use_errno=True).prctl


class _DiesWithParent(psutil.Popen):  # type: ignore[misc]
    """circus' Popen, with the worker bound to the life of the process that forked it."""

    def __init__(self, *args: Any, preexec_fn: Callable[[], None] | None = None, **kw: Any) -> None:
        parent = os.getpid()

        def preexec() -> None:
            if preexec_fn is not None:
                preexec_fn()  # circus' own: setsid, rlimits, user
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent:  # the parent died before the request took hold
                os._exit(1)

        super().__init__(*args, preexec_fn=preexec, **kw)


def main() -> None:
    # circus' worker processes are forked by the arbiter's loop on the main thread, and the
    # kernel sends PDEATHSIG when the forking *thread* ends: here, only with the process.
    circus.process.Popen = _DiesWithParent
    from bentoml_cli.cli import cli

    cli()


if __name__ == "__main__":
    main()
