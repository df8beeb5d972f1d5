"""End to end: the README's pipeline command on data_sample/ (simulated data, planted truth)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data_sample"

pytestmark = pytest.mark.e2e


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def tmstarget(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tmstarget.cli", *args], capture_output=True,
                          text=True, cwd=REPO)


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "results"
    before = tree_digest(SAMPLE)
    res = tmstarget(str(SAMPLE), str(out), "participant", "--cores", "2")
    after = tree_digest(SAMPLE)
    return out, res, before, after


def test_run_succeeds_and_reports_progress(sample_run):
    out, res, _, _ = sample_run
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    text = res.stdout + res.stderr
    truth = pd.read_csv(SAMPLE / "truth.tsv", sep="\t")
    for pid in truth["participant_id"].unique():
        assert f"[tmstarget] {pid}" in text, f"no progress line for {pid}"


def test_targets_within_4mm_of_planted_truth(sample_run):
    out, res, _, _ = sample_run
    assert res.returncode == 0
    truth = pd.read_csv(SAMPLE / "truth.tsv", sep="\t", dtype={"session_id": str},
                        keep_default_na=False)
    targets = pd.read_csv(out / "targets.tsv", sep="\t", dtype={"session_id": str},
                          keep_default_na=False)
    assert len(truth) >= 4  # 3 participants, one with two sessions
    for _, t in truth.iterrows():
        rows = targets[(targets.participant_id == t.participant_id)
                       & (targets.session_id == t.session_id)]
        assert set(rows.method) >= {"classic", "cluster"}, (t.participant_id, t.session_id)
        for method in ("classic", "cluster"):
            row = rows[rows.method == method].iloc[0]
            d = float(np.linalg.norm([row.x - t.x, row.y - t.y, row.z - t.z]))
            assert d <= 4.0, f"{t.participant_id} {t.session_id} {method}: {d:.1f} mm from truth"
            assert row.x < 0 and row.r < 0


def test_targets_tsv_columns_and_na(sample_run):
    out, _, _, _ = sample_run
    df = pd.read_csv(out / "targets.tsv", sep="\t", keep_default_na=False)
    assert list(df.columns[:7]) == ["participant_id", "session_id", "method", "x", "y", "z", "r"]
    assert (df.loc[df.participant_id == "sub-01", "session_id"] == "n/a").all()
    assert set(df.loc[df.participant_id == "sub-03", "session_id"]) == {"ses-1", "ses-2"}
    assert (df.space == "MNI152NLin2009cAsym").all()


def test_derivative_layout_and_provenance(sample_run):
    out, _, _, _ = sample_run
    dd = json.loads((out / "dataset_description.json").read_text())
    assert dd["DatasetType"] == "derivative" and dd["GeneratedBy"][0]["Name"] == "tmstarget"
    j = out / "sub-03/ses-2/func/sub-03_ses-2_task-rest_space-MNI152NLin2009cAsym_desc-target_coords.json"
    d = json.loads(j.read_text())
    assert d["space"] == "MNI152NLin2009cAsym" and "RAS" in d["convention"]
    rmap = out / d["reference_image"]["path"]
    assert rmap.name.endswith("_desc-sgacc_stat-r_boldmap.nii.gz")
    assert hashlib.sha256(rmap.read_bytes()).hexdigest() == d["reference_image"]["sha256"]
    for name, tg in d["targets"].items():
        assert tg["space"] == "MNI152NLin2009cAsym"
        assert tg["reference_image_sha256"] == d["reference_image"]["sha256"]
        assert {"x", "y", "z", "r", "method", "snapped"} <= set(tg)
    assert d["denoising"]["strategy"]["name"] == "fox2012"
    assert d["retained_volumes"] > 0
    assert all(len(i["sha256"]) == 64 for i in d["inputs"])
    assert d["software"]["tmstarget"]
    assert (rmap.with_name(rmap.name.replace(".nii.gz", ".json"))).is_file()


def test_input_tree_untouched(sample_run):
    _, _, before, after = sample_run
    assert before == after


def test_rerun_does_nothing(sample_run):
    out, res, _, _ = sample_run
    assert res.returncode == 0
    again = tmstarget(str(SAMPLE), str(out), "participant", "--cores", "1")
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr
