"""Ctrl-C and SIGTERM: stop at the next step boundary, never in the middle of a compile, an evaluation or a write.

The first SIGINT or SIGTERM only sets a flag. Long-running loops call `check()` at their boundaries (between
training steps, between groups of a sweep, between documents while tokenizing), which raises `Interrupted` once the
flag is set; everything written up to that boundary is complete (evaluations are committed before the checkpoint
that covers them, and checkpoints are renamed into place only when whole), so re-running the same command resumes
bitwise. A second signal exits at once with the same status: that too is safe, because every write is atomic.

Why not Python's default KeyboardInterrupt: it is raised wherever the interpreter happens to be, including inside
XLA's compiler callbacks and orbax's writer threads, and the process then crashed (exit 139) while tearing down.

For tests, `JSCALE_SIGNAL_AT=POINT[:SIGNAL[:DELAY[:COUNT]]]` makes the process send itself SIGNAL (default SIGINT)
COUNT times (default once) when it reaches the named point (see `point`), DELAY seconds later from another thread,
so that the signal arrives while the main thread is inside the work that follows (compiling, evaluating, writing a
checkpoint).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from jscale.errors import JscaleError

_received: int | None = None


class Interrupted(JscaleError):
    """Raised at a step boundary after SIGINT or SIGTERM; the CLI exits with 128 + the signal number."""

    def __init__(self, signum: int):
        self.signum = signum
        self.exit_status = 128 + signum
        super().__init__(f"{signal.Signals(signum).name}: stopped cleanly; re-run the same command to resume")


def _handler(signum, frame) -> None:
    global _received
    if _received is not None:  # the second signal: leave now (every write is atomic, so nothing is corrupted)
        try:
            sys.stderr.write(f"jscale: {signal.Signals(signum).name} again: exiting now; re-run the same command "
                             f"to resume\n")
            sys.stderr.flush()
        finally:
            os._exit(128 + signum)
    _received = signum


def install() -> None:
    """Route SIGINT and SIGTERM to the flag (main thread only; a no-op elsewhere)."""
    global _received
    if threading.current_thread() is not threading.main_thread():
        return
    _received = None
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


def uninstall() -> None:
    global _received
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _received = None


def requested() -> bool:
    return _received is not None


def check() -> None:
    """Raise Interrupted if a signal has arrived: call this only where stopping leaves everything consistent."""
    if _received is not None:
        raise Interrupted(_received)


def point(name: str) -> None:
    """A named place in the work (compile, train, eval, checkpoint, tokenize, group): send the configured test
    signal here when JSCALE_SIGNAL_AT names it."""
    spec = os.environ.get("JSCALE_SIGNAL_AT")
    if not spec:
        return
    where, _, rest = spec.partition(":")
    if where != name:
        return
    signame, delay, count = (rest.split(":") + ["", "", ""])[:3]
    signum = getattr(signal, signame or "SIGINT")
    os.environ.pop("JSCALE_SIGNAL_AT")  # once per process

    def send():
        for _ in range(int(count or 1)):
            os.kill(os.getpid(), signum)
            time.sleep(0.2)

    timer = threading.Timer(float(delay or 0), send)
    timer.daemon = True
    timer.start()
