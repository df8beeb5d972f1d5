"""Faults: a killed run resumes with the same command to byte-identical outputs; reruns are
reproducible; the input tree is never touched."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import copy_sample_participant

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data_sample"

pytestmark = pytest.mark.e2e


def digest(root: Path, skip: tuple[str, ...] = ("logs", ".snakemake", "work")) -> dict[str, str]:
    """SHA-256 of every derivative file. HTML/JSON reports are left out: they carry a labelled
    generation date (the only timestamps tmstarget writes)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] not in skip
            and not p.name.endswith(("_report.html", "_report.json"))}


def command(src: Path, out: Path, cfg: Path) -> list[str]:
    return [sys.executable, "-m", "tmstarget.cli", str(src), str(out), "participant",
            "--cores", "1", "--configfile", str(cfg)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    src = copy_sample_participant(root / "fmriprep")
    cfg = root / "cfg.yaml"
    cfg.write_text("target:\n  methods: [classic, cluster, weighted]\n")
    return root, src, cfg


@pytest.fixture(scope="module")
def reference(dataset):
    root, src, cfg = dataset
    before = digest(src, skip=())
    out = root / "out"
    res = subprocess.run(command(src, out, cfg), capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr[-4000:]
    ref = digest(out)
    assert digest(src, skip=()) == before, "the input tree changed"
    assert any(k.endswith("desc-target_coords.json") for k in ref)
    return out, ref


def test_second_run_from_scratch_is_byte_identical(dataset, reference):
    root, src, cfg = dataset
    out, ref = reference
    shutil.rmtree(out)
    res = subprocess.run(command(src, out, cfg), capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr[-4000:]
    assert digest(out) == ref


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes_to_identical_outputs(dataset, reference, sig):
    root, src, cfg = dataset
    out_ref, ref = reference
    out = out_ref  # same folder: outputs name their own paths
    shutil.rmtree(out)
    proc = subprocess.Popen(command(src, out, cfg), cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # kill everything while the bootstrap (the longest step) is running
    deadline = time.time() + 600
    while time.time() < deadline and not list(out.rglob("*_desc-target_coords.json")):
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    os.killpg(proc.pid, sig)
    proc.wait(timeout=60)
    assert digest(out) != ref  # really interrupted
    res = subprocess.run(command(src, out, cfg), capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr[-4000:]
    assert digest(out) == ref
    again = subprocess.run(command(src, out, cfg), capture_output=True, text=True, cwd=REPO)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_concurrent_run_on_same_output_refused(dataset, reference, tmp_path):
    root, src, cfg = dataset
    out = tmp_path / "busy"
    import fcntl

    (out / "work").mkdir(parents=True)
    with open(out / "work" / ".tmstarget.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        res = subprocess.run(command(src, out, cfg), capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 2
    assert "another tmstarget run is using this output folder" in res.stderr
