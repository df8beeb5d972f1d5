"""Runs Snakemake for the ``tmstarget`` command, as the leader of the run's process group.

    python -m tmstarget._runner PARENT_PID -- snakemake-command ...

Snakemake and its jobs share this process group. On ``SIGINT``, ``SIGTERM`` or ``SIGHUP``
received here, Snakemake gets one ``SIGINT`` (it stops scheduling, cancels its jobs, cluster jobs
included, and exits) and every other process of the group, i.e. each local job, a ``SIGTERM``,
so every job ends at once. (Given only ``SIGINT``, Snakemake waits for its local jobs; given
``SIGTERM`` it waits for every running job; a second ``SIGINT`` makes it print tracebacks.)
When the ``tmstarget`` process (``PARENT_PID``) disappears, even by ``SIGKILL``, the same is
done. The output folder's lock descriptor is
inherited from ``tmstarget`` and passed on to Snakemake (see :mod:`tmstarget.runlock`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import Any


def group_members(pgid: int) -> set[int] | None:
    """Pids of the living processes in process group ``pgid`` (None without ``/proc``)."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return None
    out = set()
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != b"Z" and int(fields[2]) == pgid:
            out.add(int(name))
    return out


def main(argv: list[str]) -> int:
    parent = int(argv[0])
    cmd = argv[argv.index("--") + 1:]
    sent: list[int] = []

    proc: subprocess.Popen | None = None

    def stop() -> None:
        # Snakemake gets SIGINT: it stops scheduling, cancels its jobs (cluster jobs too) and
        # exits without tracebacks; every other process of the group (the local jobs) gets
        # SIGTERM and ends at once (given SIGINT alone Snakemake would wait for them)
        assert proc is not None
        others = group_members(os.getpgrp())
        if others is None:  # no /proc: everyone gets SIGTERM (Snakemake exits gracefully)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgrp(), signal.SIGTERM)
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(proc.pid, signal.SIGINT)
        time.sleep(0.2)  # no new job after this: Snakemake has stopped scheduling
        for pid in (group_members(os.getpgrp()) or others) - {os.getpid(), proc.pid}:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)

    def to_group(signum: int, _frame: Any = None) -> None:
        if sent:
            return
        sent.append(signum)
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)  # the group includes this process
        if proc is not None:
            stop()

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, to_group)
    lock_fd = os.environ.get("TMSTARGET_LOCK_FD", "")
    keep = (int(lock_fd),) if lock_fd.isdigit() else ()
    if sent:  # stopped before Snakemake started
        return 128 + sent[0]
    proc = subprocess.Popen(cmd, pass_fds=keep)  # Snakemake holds the folder's lock too
    if sent:  # stopped while it started
        stop()
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
