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
import threading
import time
from typing import Any

from tmstarget.terminal import LogFilter


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
    log_file = os.environ.get("TMSTARGET_LOG_FILE") or None
    if log_file is None:  # everything on the terminal, as Snakemake prints it
        proc = subprocess.Popen(cmd, pass_fds=keep)  # Snakemake holds the folder's lock too
        reader = None
    else:  # the full output to the log file, the lines a person reads to the terminal
        proc = subprocess.Popen(cmd, pass_fds=keep, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace",
                                bufsize=1)
        filt = LogFilter()
        reader = threading.Thread(target=_pump, args=(proc, filt, log_file), daemon=True)
        reader.start()
    if sent:  # stopped while it started
        stop()
    while True:
        try:
            rc = proc.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            if os.getppid() != parent and not sent:
                to_group(signal.SIGTERM)  # tmstarget is gone (killed): stop the whole run
    rc = rc if rc >= 0 else 128 - rc
    if reader is not None:
        reader.join(timeout=10)
        for line in filt.closing(log_file, rc):
            print(line, file=sys.stderr, flush=True)
        if rc != 0 and not filt.seen_error and not filt.failed and not sent:
            # an error we do not recognise: show the end of Snakemake's own output
            for line in filt.tail:
                print(line, file=sys.stderr, flush=True)
    return rc


def _pump(proc: subprocess.Popen, filt: LogFilter, log_file: str) -> None:
    """Copy Snakemake's output to ``log_file`` and its readable lines to the terminal."""
    assert proc.stdout is not None
    with open(log_file, "a", encoding="utf-8") as log:
        for line in proc.stdout:
            log.write(line)
            log.flush()
            for shown in filt.feed(line):
                print(shown, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
