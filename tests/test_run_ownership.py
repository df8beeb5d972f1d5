"""One run owns an output folder: signals end every job, a restart never runs beside a live run.

The ``tmstarget`` command is run with a slow stand-in workflow (``--snakefile`` is passed on to
Snakemake, after the real one): one shell job that records its pid and sleeps. Everything else
(the lock, the runner process group, signal forwarding, the resume line) is the real code.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tmstarget.runlock import processes_with_token

REPO = Path(__file__).resolve().parents[1]

STAND_IN = """
rule all:
    input: "done.txt"

rule slow:
    output: "done.txt"
    shell: "echo $$ > job.pid; sleep $(cat {sleep}); echo ok > {{output}}"
"""


@pytest.fixture
def standin(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    sleep = tmp_path / "sleep_s"
    sleep.write_text("60")
    smk = tmp_path / "Snakefile"
    smk.write_text(STAND_IN.format(sleep=sleep))
    return src, tmp_path / "out", smk, sleep


def cmd(src: Path, out: Path, smk: Path) -> list[str]:
    return [sys.executable, "-m", "tmstarget.cli", str(src), str(out), "participant",
            "--cores", "1", "--snakefile", str(smk)]


def start(src, out, smk) -> subprocess.Popen:
    return subprocess.Popen(cmd(src, out, smk), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for_job(out: Path, timeout: float = 60) -> int:
    pid_file = out / "job.pid"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pid_file.is_file() and pid_file.read_text().strip():
            return int(pid_file.read_text())
        time.sleep(0.1)
    raise AssertionError("the stand-in job never started")


def record(out: Path) -> dict:
    return json.loads((out / "work" / ".tmstarget.lock").read_text())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    st = Path(f"/proc/{pid}/stat")
    return not (st.is_file() and st.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def wait_gone(pids, timeout: float = 15) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.1)
    return False


def lock_is_free(out: Path) -> bool:
    with open(out / "work" / ".tmstarget.lock") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        fcntl.flock(fh, fcntl.LOCK_UN)
        return True


needs_proc = pytest.mark.skipif(not Path("/proc/self/environ").is_file(),
                                reason="needs /proc (Linux) to see the run's processes")


@needs_proc
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_ends_every_job_and_says_how_to_resume(standin, sig):
    src, out, smk, sleep = standin
    proc = start(src, out, smk)
    job = wait_for_job(out)
    token = record(out)["token"]
    assert processes_with_token(token), "the job should carry the run's token"
    proc.send_signal(sig)  # to tmstarget only, as a terminal's Ctrl-C or `kill PID` would
    text, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig
    assert wait_gone([job]), "a job outlived the interrupted run"
    assert processes_with_token(token) == []
    hints = [ln for ln in text.splitlines() if "run the same command again to resume" in ln]
    assert len(hints) == 1 and hints[0].startswith("[tmstarget] interrupted"), text
    assert "Traceback" not in text, text
    assert lock_is_free(out)
    sleep.write_text("0")
    res = subprocess.run(cmd(src, out, smk), cwd=REPO, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert (out / "done.txt").read_text() == "ok\n"


@needs_proc
def test_sigkill_of_tmstarget_stops_the_jobs_and_an_immediate_rerun_resumes(standin):
    src, out, smk, sleep = standin
    proc = start(src, out, smk)
    job = wait_for_job(out)
    token = record(out)["token"]
    proc.kill()
    proc.wait(timeout=10)
    sleep.write_text("0")
    # immediately: it never runs beside the stopping run (it waits for it), then resumes
    res = subprocess.run(cmd(src, out, smk), cwd=REPO, capture_output=True, text=True, check=False)
    assert not alive(job) and processes_with_token(token) == []
    assert res.returncode == 0, res.stderr
    assert (out / "done.txt").read_text() == "ok\n"


@needs_proc
def test_orphaned_jobs_block_the_next_run_until_they_end(standin):
    """tmstarget, its runner and Snakemake all SIGKILLed at once: the job lives on, orphaned.
    The next run must refuse (naming it) and leave Snakemake's lock alone; once the job has
    ended, the same command resumes."""
    src, out, smk, sleep = standin
    proc = start(src, out, smk)
    job = wait_for_job(out)
    rec = record(out)
    runner = rec["pgid"]
    kids = [int(p) for p in Path(f"/proc/{runner}/task/{runner}/children").read_text().split()]
    for pid in (proc.pid, runner, *kids):
        os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert wait_gone([proc.pid, runner, *kids]) and alive(job)
    locks = sorted(p.name for p in (out / ".snakemake" / "locks").iterdir())
    try:
        res = subprocess.run(cmd(src, out, smk), cwd=REPO, capture_output=True, text=True, check=False,
                             timeout=120)
        assert res.returncode == 2
        err = [ln for ln in res.stderr.splitlines() if ln.startswith("tmstarget ERROR:")]
        assert len(err) == 1 and "still running" in err[0] and str(job) in err[0], res.stderr
        assert sorted(p.name for p in (out / ".snakemake" / "locks").iterdir()) == locks
    finally:
        for pid in processes_with_token(rec["token"]):
            os.kill(pid, signal.SIGKILL)
    assert wait_gone([job])
    sleep.write_text("0")
    res = subprocess.run(cmd(src, out, smk), cwd=REPO, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert "resuming" in res.stderr and (out / "done.txt").is_file()


@needs_proc
def test_second_run_refused_while_the_first_is_live_and_changes_nothing(standin):
    src, out, smk, _sleep = standin
    proc = start(src, out, smk)
    try:
        wait_for_job(out)
        override = (out / "work" / "tmstarget_cli_config.yaml").read_text()
        locks = sorted(p.name for p in (out / ".snakemake" / "locks").iterdir())
        res = subprocess.run([*cmd(src, out, smk), "--participant-label", "99"], cwd=REPO,
                             capture_output=True, text=True, timeout=60, check=False)
        assert res.returncode == 2
        assert "another tmstarget run is using this output folder" in res.stderr
        assert (out / "work" / "tmstarget_cli_config.yaml").read_text() == override
        assert sorted(p.name for p in (out / ".snakemake" / "locks").iterdir()) == locks
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)


@needs_proc
def test_snakemake_started_by_hand_in_the_folder_is_not_run_over(standin):
    """A live Snakemake without tmstarget (no token, no tmstarget lock): the command refuses
    instead of deleting its lock as stale."""
    src, out, smk, _sleep = standin
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "-s", str(smk), "--cores", "1",
                             "--directory", str(out)], cwd=out, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_job(out)
        res = subprocess.run(cmd(src, out, smk), cwd=REPO, capture_output=True, text=True, check=False,
                             timeout=60)
        assert res.returncode == 2 and "still running" in res.stderr, res.stderr
        assert any((out / ".snakemake" / "locks").iterdir())
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
