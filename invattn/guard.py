"""What every ``invattn`` command shares: user errors as one line, Ctrl-C with a hint.

Used by the dispatcher (:mod:`invattn.cli`) and by the commands that parse their own
arguments (``invattn sweep``, ``invattn demo``), so none of them imports the dispatcher.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

__all__ = ["run_guarded", "interrupt_between_steps"]

# What an interrupted command leaves behind and how to continue (printed after Ctrl-C).
ON_INTERRUPT = {
    "train": "the last checkpoint is kept; run the same command again to resume",
    "preprocess-qm9": "finished shards are kept; run the same command again to resume",
    "sweep": "run it again with resume=true to continue the sweep",
}


def run_guarded(name: str, body) -> int:
    """Run a command body; user errors become one clear line on stderr and exit code 2.

    Set ``INVATTN_DEBUG=1`` to get the full traceback instead.
    """
    debug = os.environ.get("INVATTN_DEBUG") == "1"
    try:
        return int(body() or 0)
    # ValueError includes ConfigError; OSError: files, connections, timeouts.
    except (ValueError, KeyError, OSError) as exc:
        if debug:
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"invattn {name}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = f" ({ON_INTERRUPT[name]})" if name in ON_INTERRUPT else ""
        print(f"invattn {name}: interrupted{hint}", file=sys.stderr)
        return 130


@contextmanager
def interrupt_between_steps() -> Iterator[Callable[[], None]]:
    """Let Ctrl-C stop a loop between its steps; yields ``check()``, to call after each step.

    Python raises KeyboardInterrupt wherever the interpreter happens to be; in a garbage
    collection callback (h5py and NumPy objects die at every block of ``invattn simulate``) it
    is printed as "Exception ignored" and lost, and the command went on to the end.  Here the
    first Ctrl-C only sets a flag that ``check()`` (or leaving the block) turns into
    KeyboardInterrupt; a second one raises at once. Outside the main thread it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    pressed: list[int] = []

    def on_sigint(signum, frame):
        if pressed:  # pressed again: do not wait for the step to end
            raise KeyboardInterrupt
        pressed.append(signum)

    def check() -> None:
        if pressed:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield check
    finally:
        signal.signal(signal.SIGINT, previous)
    check()  # pressed after the last step
