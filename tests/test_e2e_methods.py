"""End to end: every targeting method on the sample (simulated data, planted truth).

``classic``, ``cluster``, ``cluster_largest``, ``weighted``, ``snt`` (SAINT/SNT-style clustering)
and ``seedmap`` (leave-one-out group sgACC map, Fox 2013) each run for every participant and
session, appear in ``targets.tsv``, ``reproducibility.tsv``, the reports and the cohort report,
land near the planted target, and the leave-one-out group maps provably leave the participant
out.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data_sample"
METHODS = ["classic", "cluster", "cluster_largest", "weighted", "snt", "seedmap"]
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def all_methods(tmp_path_factory):
    base = tmp_path_factory.mktemp("methods")
    cfg = base / "config.yaml"
    cfg.write_text(f"target: {{methods: [{', '.join(METHODS)}]}}\n"
                   "native: {enabled: false}\nreproducibility: {bootstrap_resamples: 40}\n")
    out = base / "out"
    res = subprocess.run([sys.executable, "-m", "tmstarget.cli", str(SAMPLE), str(out),
                          "participant", "--cores", "2", "--configfile", str(cfg)],
                         capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return out


def test_every_method_for_every_unit_near_the_truth(all_methods):
    t = pd.read_csv(all_methods / "targets.tsv", sep="\t", keep_default_na=False)
    truth = pd.read_csv(SAMPLE / "truth.tsv", sep="\t", keep_default_na=False)
    for _, u in truth.iterrows():
        rows = t[(t.participant_id == u.participant_id) & (t.session_id == u.session_id)]
        assert sorted(rows.method) == sorted(METHODS), (u.participant_id, u.session_id)
        for _, r in rows.iterrows():
            d = float(np.linalg.norm([r.x - u.x, r.y - u.y, r.z - u.z]))
            assert d <= 6.0, f"{u.participant_id} {u.session_id} {r.method}: {d:.1f} mm"
            assert r.x < 0 and r.r < 0
    rep = pd.read_csv(all_methods / "reproducibility.tsv", sep="\t", keep_default_na=False)
    assert set(rep.method) == set(METHODS)
    for m in METHODS:
        v = pd.to_numeric(rep[rep.method == m].split_half_distance_mm, errors="coerce")
        assert v.notna().all(), m
        b = pd.to_numeric(rep[rep.method == m].bootstrap_radius95_mm, errors="coerce")
        assert b.notna().all(), m


def test_reports_and_cohort_report_show_every_method(all_methods):
    for js in all_methods.rglob("*_report.json"):
        d = json.loads(js.read_text())
        text = json.dumps(d)
        for m in METHODS:
            assert f'"{m}"' in text, (js.name, m)
    cohort = (all_methods / "cohort_report.html").read_text()
    for m in METHODS:
        assert m in cohort


def test_leave_one_out_group_maps_exclude_the_participant(all_methods):
    maps = sorted(all_methods.rglob("*_desc-groupsgacc_stat-r_boldmap.json"))
    assert len(maps) == 4  # one per participant/session
    for p in maps:
        side = json.loads(p.read_text())
        me = side["ForParticipant"]
        assert me not in side["ParticipantsUsed"] and len(side["ParticipantsUsed"]) == 2
        assert p.name.startswith(me)
    tj = json.loads(next(all_methods.rglob("sub-01*_desc-target_coords.json")).read_text())
    sm = tj["data_methods"]["seedmap"]
    assert sm["source"] == "cohort" and "desc-groupsgacc" in sm["file"]
    assert (Path(sm["map"])).is_file()
