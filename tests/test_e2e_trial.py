"""End to end: config/trial.example.yaml on the sample (about 2 min on 2 cores).

Every participant gets the same blinded file set under OUTPUT_DIR/blinded/, passing the
reveal-nothing scan; the key maps every participant to an arm; the unblinded records name the
arm's source export; a rerun reads the key (byte-identical) instead of redrawing it.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nb
import pytest

from tmstarget import trial

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data_sample"
pytestmark = pytest.mark.e2e


def _run(out: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "tmstarget.cli", str(SAMPLE), str(out),
                          "participant", "--cores", "2", "--configfile",
                          str(REPO / "config" / "trial.example.yaml")],
                         capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]


@pytest.fixture(scope="module")
def trial_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("trial") / "out"
    _run(out)
    return out


def test_key_maps_every_participant(trial_out: Path) -> None:
    with open(trial_out / "unblinded" / "trial_key.tsv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert sorted(r["participant_id"] for r in rows) == ["01", "02", "03"]
    assert {r["arm"] for r in rows} <= {"connectivity", "scalp"}
    for r in rows:
        bp = (f"sub-{r['participant_id']}/ses-1/sub-{r['participant_id']}_ses-1"
              if r["participant_id"] == "03" else f"sub-{r['participant_id']}/sub-"
              f"{r['participant_id']}")
        rec = json.loads((trial_out / "unblinded" / f"{bp}_desc-trial_record.json").read_text())
        assert rec["arm"] == r["arm"] and rec["allocation_code"] == r["code"]
        want = "scalpBeamF3" if r["arm"] == "scalp" else "desc-target_coilpose"
        assert want in rec["source_export"]
        src = json.loads((trial_out / rec["source_export"]).read_text())
        assert max(abs(a - b) for a, b in zip(src["target_mm"], rec["target_mm_blinded"])) <= 0.005


def test_blinded_exports_reveal_nothing(trial_out: Path) -> None:
    root = trial_out / "blinded"
    units = sorted({p.parent for p in root.rglob("*") if p.is_file()})
    assert [u.relative_to(root).as_posix() for u in units] == ["sub-01", "sub-02", "sub-03/ses-1"]
    for u in units:
        names = sorted(p.name.split("_desc-blinded")[1] for p in u.iterdir())
        assert names == sorted(trial.BLINDED_SUFFIXES)
        for p in u.iterdir():
            assert not trial.reveal_scan(p.read_bytes()), p
            assert not trial.reveal_scan(p.name.encode()), p
            if p.name.endswith(".nii.gz"):
                assert not trial.reveal_scan(nb.load(str(p)).header.binaryblock)


def test_rerun_reads_the_key(trial_out: Path) -> None:
    key = trial_out / "unblinded" / "trial_key.tsv"
    before = key.read_bytes()
    _run(trial_out)
    assert key.read_bytes() == before


def test_engagement_for_the_participant_with_both_sessions(trial_out: Path) -> None:
    """sub-03 (ses-1 pre, ses-2 post) gets the engagement table; sub-01/02 are skipped."""
    import numpy as np

    base = trial_out / "sub-03" / "func" / "sub-03_task-rest_desc-engagement_stat"
    with open(f"{base}.tsv", newline="") as fh:
        (row,) = list(csv.DictReader(fh, delimiter="\t"))
    assert tuple(row) == trial.ENGAGEMENT_COLUMNS
    assert (row["pre_session_id"], row["post_session_id"]) == ("ses-1", "ses-2")
    assert not list(trial_out.glob("sub-0[12]/func/*desc-engagement*"))
    # the target is the pre session's primary (cluster) target
    pre = json.loads((trial_out / "sub-03/ses-1/func/sub-03_ses-1_task-rest_space-"
                      "MNI152NLin2009cAsym_desc-target_coords.json").read_text())
    t = pre["targets"]["cluster"]
    assert [float(row[k]) for k in "xyz"] == pytest.approx([t["x"], t["y"], t["z"]], abs=1e-4)
    # r_post against a plain-numpy oracle: the post seed series written by the seed-map step
    # and the mean of the post session's denoised voxels within the radius of the target
    seed = np.loadtxt(trial_out / "sub-03/ses-2/func/sub-03_ses-2_task-rest_desc-sgacc_"
                      "timeseries.tsv", skiprows=1)
    z = np.load(trial_out / "work/sub-03/ses-2/func/sub-03_ses-2_task-rest_desc-denoised_"
                "timeseries.npz")
    xyz = np.c_[z["voxels"], np.ones(len(z["voxels"]))] @ z["affine"].T
    near = np.linalg.norm(xyz[:, :3] - [t["x"], t["y"], t["z"]], axis=1) <= 6.0
    assert int(row["n_voxels_post"]) == int(near.sum()) > 0
    oracle = np.corrcoef(seed, z["data"][:, near].astype(float).mean(axis=1))[0, 1]
    assert float(row["r_post"]) == pytest.approx(oracle, abs=1e-3)
    # the sample plants the same target in both sessions: anticorrelated in both
    assert float(row["r_pre"]) < 0 and float(row["r_post"]) < 0
    side = json.loads(Path(f"{base}.json").read_text())
    assert side["Target"]["space"] == "MNI152NLin2009cAsym"
    assert side["Maps"]["post"]["path"].startswith("sub-03/ses-2/")
    # cohort table: codes only (trial.unblind false); skipped participants noted
    with open(trial_out / "unblinded" / "trial_engagement.tsv", newline="") as fh:
        cohort = list(csv.DictReader(fh, delimiter="\t"))
    with open(trial_out / "unblinded" / "trial_key.tsv", newline="") as fh:
        key = {r["participant_id"]: r for r in csv.DictReader(fh, delimiter="\t")}
    assert [(r["participant_id"], r["arm"]) for r in cohort] == [("sub-03", key["03"]["code"])]
    cs = json.loads((trial_out / "unblinded" / "trial_engagement.json").read_text())
    assert cs["Blinded"] is True
    assert sorted(s["participant_id"] for s in cs["Skipped"]) == ["sub-01", "sub-02"]
    print("sub-03 engagement:", {k: row[k] for k in ("r_pre", "r_post", "delta_r", "delta_z",
                                                     "delta_z_noise", "delta_z_over_noise")})
