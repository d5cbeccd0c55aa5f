"""What every ``invattn`` command shares: user errors as one line, Ctrl-C with a hint.

Used by the dispatcher (:mod:`invattn.cli`) and by the commands that parse their own
arguments (``invattn sweep``, ``invattn demo``), so none of them imports the dispatcher.
"""
from __future__ import annotations

import os
import sys

__all__ = ["run_guarded"]

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
