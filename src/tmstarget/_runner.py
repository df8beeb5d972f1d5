"""Runs Snakemake for the ``tmstarget`` command, as the leader of the run's process group.

    python -m tmstarget._runner PARENT_PID -- snakemake-command ...

Snakemake and its jobs share this process group. A ``SIGINT``, ``SIGTERM`` or ``SIGHUP``
received here becomes a ``SIGTERM`` to the whole group, so every job ends at once and Snakemake
exits gracefully (given ``SIGINT``, Snakemake prints tracebacks and waits for its running jobs).
When the ``tmstarget`` process (``PARENT_PID``) disappears, even by ``SIGKILL``, the group gets
``SIGTERM`` too. The output folder's lock descriptor is
inherited from ``tmstarget`` and passed on to Snakemake (see :mod:`tmstarget.runlock`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from typing import Any


def main(argv: list[str]) -> int:
    parent = int(argv[0])
    cmd = argv[argv.index("--") + 1:]
    sent: list[int] = []

    def to_group(signum: int, _frame: Any = None) -> None:
        # SIGTERM for every signal: each job ends at once and Snakemake, which exits gracefully
        # on SIGTERM, then stops (given SIGINT it prints tracebacks and waits for its jobs)
        if sent:
            return
        sent.append(signum)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group includes this process
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(os.getpgrp(), signal.SIGTERM)

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, to_group)
    lock_fd = os.environ.get("TMSTARGET_LOCK_FD", "")
    keep = (int(lock_fd),) if lock_fd.isdigit() else ()
    proc = subprocess.Popen(cmd, pass_fds=keep)  # Snakemake holds the folder's lock too
    while True:
        try:
            rc = proc.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            if os.getppid() != parent and not sent:
                to_group(signal.SIGTERM)  # tmstarget is gone (killed): stop the whole run
    return rc if rc >= 0 else 128 - rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
