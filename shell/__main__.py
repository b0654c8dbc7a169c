"""The `rollguard` entry point (also `python -m rollguard_shell`).

Ctrl-C and SIGTERM are made to stop any command before anything heavy is imported, even one
started as a background job of a script (which inherits SIGINT ignored); either one while the
command is still importing ends it with one line and 130 or 143, like one at any later moment.
"""

from __future__ import annotations

import os
import signal
import sys


def _terminated(signum: int, frame: object) -> None:
    print("rollguard: terminated", file=sys.stderr)
    raise SystemExit(143)


def main() -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminated)  # the services' commands replace both while running
    try:
        from rollguard_shell.cli import main as cli_main
    except KeyboardInterrupt:
        # Straight out: nothing has started, and an interpreter interrupted while importing
        # may end its own shutdown by the signal (-2) instead of the code (1 run in 40).
        print("rollguard: interrupted", file=sys.stderr, flush=True)
        os._exit(130)
    cli_main()


if __name__ == "__main__":
    main()
