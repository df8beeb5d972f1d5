"""One run owns an output folder, for exactly as long as it runs.

The ``tmstarget`` command holds an exclusive :func:`fcntl.flock` on ``work/.tmstarget.lock``
and hands the open descriptor to the process that runs Snakemake, so the lock lives as long as
either of them does (a killed ``tmstarget`` no longer frees the folder while its Snakemake
works on). The lock file records the run (``tmstarget`` pid, a random token, the Snakemake
process group); every process of the run carries the token in its environment
(``TMSTARGET_RUN_TOKEN``). A new run in the same folder

* refuses while the lock is held (it waits up to :data:`WAIT_FOR_STOPPING_S` when the owning
  ``tmstarget`` is gone, i.e. an interrupted run is still stopping its jobs);
* refuses while any process with the previous run's token is alive (jobs orphaned by a
  ``SIGKILL`` of Snakemake itself), or any Snakemake process works in the folder (a run started
  by hand), naming them;
* only then removes a stale Snakemake lock (``.snakemake/locks``) and resumes.

Snakemake runs under :mod:`tmstarget._runner`, the leader of its own process group: ``SIGINT``
or ``SIGTERM`` of ``tmstarget`` is forwarded to that whole group (Snakemake and every job), and
the runner does the same by itself when ``tmstarget`` disappears (``SIGKILL``), so no job is
left running.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: Environment variable carrying the run's token into Snakemake and every job.
TOKEN_ENV = "TMSTARGET_RUN_TOKEN"
#: How long a new run waits for an interrupted run (its ``tmstarget`` gone) to stop its jobs.
WAIT_FOR_STOPPING_S = float(os.environ.get("TMSTARGET_LOCK_WAIT_S", "120"))

RESUME_HINT = ("run the same command again to resume (finished steps are kept, unfinished "
               "ones start again)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def processes_with_token(token: str) -> list[int]:
    """Pids of the living processes whose environment holds ``TMSTARGET_RUN_TOKEN=token``.

    Linux (``/proc``) only; elsewhere an empty list (the process-group check still applies).
    """
    needle = f"{TOKEN_ENV}={token}".encode()
    me = os.getpid()
    out = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return out
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as fh:
                env = fh.read()
            with open(f"/proc/{name}/stat", "rb") as fh:
                state = fh.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state != b"Z" and needle in env.split(b"\0"):
            out.append(int(name))
    return sorted(out)


def snakemake_processes_in(folder: Path) -> list[int]:
    """Pids of living Snakemake processes working in ``folder`` (their current directory).

    Snakemake changes into its ``--directory``, so this finds a run started by hand (without
    the ``tmstarget`` command, hence without its token). Linux (``/proc``) only.
    """
    want = os.path.realpath(folder)
    me = os.getpid()
    out = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return out
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            if os.path.realpath(f"/proc/{name}/cwd") != want:
                continue
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except OSError:
            continue
        if b"snakemake" in cmdline:
            out.append(int(name))
    return sorted(out)


def _group_alive(pgid: int | None) -> bool:
    if not pgid:
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """The exclusive lock of an output folder (see the module docstring).

    Parameters
    ----------
    out : Path
        The output folder.
    """

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.path = self.out / "work" / ".tmstarget.lock"
        self.fd: int | None = None
        self.token = uuid.uuid4().hex
        self.previous: dict[str, Any] = {}
        self.message: str = ""

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, record: Mapping[str, Any]) -> None:
        assert self.fd is not None
        data = (json.dumps(dict(record), sort_keys=True) + "\n").encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def acquire(self) -> bool:
        """Take the folder, or set :attr:`message` to why not and return False."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                rec = self._read()
                owner = rec.get("pid")
                if isinstance(owner, int) and not _alive(owner):
                    # its tmstarget was killed; its Snakemake is stopping the jobs: wait a bit
                    if deadline is None:
                        deadline = time.monotonic() + WAIT_FOR_STOPPING_S
                        print("[tmstarget] an interrupted run is still stopping its jobs in "
                              f"{self.out}; waiting for it (up to {WAIT_FOR_STOPPING_S:.0f} s)",
                              file=sys.stderr, flush=True)
                    if time.monotonic() < deadline:
                        time.sleep(0.5)
                        continue
                    pg = rec.get("pgid")
                    self.message = (
                        f"{self.out}: an interrupted tmstarget run is still running its jobs "
                        f"(Snakemake process group {pg}). What to do: wait for them to end, or "
                        f"stop them (kill -TERM -{pg}), then run the same command again.")
                else:
                    self.message = (
                        f"{self.out}: another tmstarget run is using this output folder. What "
                        "to do: wait for it to finish, or choose another output folder.")
                os.close(fd)
                return False
        self.fd = fd
        self.previous = self._read()
        tok = self.previous.get("token")
        alive = processes_with_token(tok) if isinstance(tok, str) and tok else []
        if not alive and _group_alive(self.previous.get("pgid")) and not Path("/proc").is_dir():
            alive = [int(self.previous["pgid"])]
        alive = sorted(set(alive) | set(snakemake_processes_in(self.out)))
        if alive:
            self.release()
            shown = ", ".join(map(str, alive[:8])) + (" ..." if len(alive) > 8 else "")
            self.message = (
                f"{self.out}: jobs of an earlier run in this folder are still running "
                f"(pid {shown}). What to do: wait for them to end, or stop them (kill {shown}), "
                "then run the same command again.")
            return False
        self._write({"pid": os.getpid(), "token": self.token, "pgid": None,
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        locks = self.out / ".snakemake" / "locks"
        if locks.is_dir() and any(locks.iterdir()):
            # nothing of the earlier run lives: its Snakemake lock is stale
            print("[tmstarget] an earlier run was interrupted; resuming where it stopped",
                  file=sys.stderr, flush=True)
            import shutil

            shutil.rmtree(locks, ignore_errors=True)
        return True

    def set_group(self, pgid: int) -> None:
        """Record the process group running Snakemake (for the next run's checks)."""
        rec = {"pid": os.getpid(), "token": self.token, "pgid": int(pgid),
               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        with contextlib.suppress(OSError):
            self._write(rec)

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class Interrupted(Exception):
    """The run was stopped by a signal (``signum``)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def run_owned(cmd: Sequence[str], env: Mapping[str, str], lock: RunLock) -> int:
    """Run ``cmd`` (Snakemake) as the owner of the folder; forward SIGINT/SIGTERM/SIGHUP.

    Returns
    -------
    int
        Its exit status.

    Raises
    ------
    Interrupted
        A signal stopped the run (every process of the run has ended when this is raised).
    """
    assert lock.fd is not None
    env = {**env, TOKEN_ENV: lock.token, "TMSTARGET_LOCK_FD": str(lock.fd)}
    runner = [sys.executable, "-m", "tmstarget._runner", str(os.getpid()), "--", *cmd]
    got: list[int] = []

    proc = subprocess.Popen(runner, env=env, pass_fds=(lock.fd,), process_group=0)
    lock.set_group(proc.pid)

    def forward(signum: int, _frame: Any) -> None:
        got.append(signum)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(proc.pid, signum)  # the runner passes it on to its whole group, once

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        while True:
            try:
                rc = proc.wait()
                break
            except KeyboardInterrupt:  # pragma: no cover - handler replaced above
                forward(signal.SIGINT, None)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    # the runner has ended: make sure nothing of its group lingers
    if _group_alive(proc.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        for _ in range(100):
            if not _group_alive(proc.pid):
                break
            time.sleep(0.1)
    if got:
        raise Interrupted(got[0])
    return rc
