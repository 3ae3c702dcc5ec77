"""Small helpers every process of the service uses: die with the supervisor, say an error
in one line."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Have the kernel kill this process when its parent (the supervisor) dies, so a
    supervisor killed without a chance to clean up leaves no engine core or API server
    behind (Linux; elsewhere the children notice their closed pipes instead)."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before the call above took effect
        os._exit(1)


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line, for a log line or an exit message."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
