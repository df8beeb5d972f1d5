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


def test_native_exports_for_every_subject_and_session(sample_run):
    """Each sample subject/session's anat/ folder holds every navigator file; the T1w target
    sits where the known rigid MNI->T1w transform puts the planted truth."""
    from tmstarget.navigation import ALL_FORMATS

    out, res, _, _ = sample_run
    assert res.returncode == 0
    truth = pd.read_csv(SAMPLE / "truth.tsv", sep="\t", dtype={"session_id": str},
                        keep_default_na=False)
    for _, t in truth.iterrows():
        ses = None if t.session_id == "n/a" else t.session_id
        stem = t.participant_id + (f"_{ses}" if ses else "") + "_task-rest_space-T1w_desc-target"
        folder = out / t.participant_id / (ses or "") / "anat"
        d = json.loads((folder / f"{stem}_coords.json").read_text())
        for suffix in ALL_FORMATS.values():
            assert (folder / f"{stem}{suffix}").is_file(), (stem, suffix)
        assert {e["key"] for e in d["exports"]} == set(ALL_FORMATS)
        assert all((out / e["file"]).is_file() for e in d["exports"])
        assert d["space"] == "T1w" and d["t1w"]["name"].endswith("_desc-preproc_T1w.nii.gz")
        t1w = SAMPLE / t.participant_id / "anat" / d["t1w"]["name"]
        assert hashlib.sha256(t1w.read_bytes()).hexdigest() == d["t1w"]["sha256"]
        m = d["primary_method"]
        tg = d["targets"][m]
        d_t1w = float(np.linalg.norm(np.array(tg["t1w_mm"]) - [t.t1w_x, t.t1w_y, t.t1w_z]))
        d_mni = float(np.linalg.norm(np.array(tg["mni_mm"]) - [t.x, t.y, t.z]))
        assert d_t1w <= 4.0, (stem, m, d_t1w)
        assert abs(d_t1w - d_mni) < 0.05  # rigid transform: the MNI error carries over unchanged
        assert 5.0 < tg["scalp_to_target_mm"] < 40.0 and tg["scalp_to_cortex_mm"] > 5.0
        assert d["scalp_to_cortex_mm"]["hotspot"] is not None
        assert "not a prescription" in d["depth_advice"]
        # one unit (%MSO added to the resting motor threshold), printed numbers multiply out
        adj = d["depth_adjustment"]
        assert adj["mso_points"] == round(adj["mso_points_per_mm"] * adj["deeper_mm"], 1)
        assert f"= {abs(adj['mso_points']):.1f} %MSO" in d["depth_advice"]
        assert "% of stimulator output" not in d["depth_advice"]
        # scalp rules on the participant's own (Colin27) scalp, with r from its own map
        sr = d["scalp_rules"]
        base = stem[: -len("_desc-target")]
        for m in ("beam_f3", "eeg_f3"):
            r = sr["rules"][m]
            assert r["hemisphere"] == "left" and r["in_left_dlpfc_search_region"], (stem, m)
            assert r["r"] is not None and -1 <= r["r"] <= 1
            assert {e["key"] for e in r["exports"]} == set(ALL_FORMATS)
            assert all((out / e["file"]).is_file() and "desc-scalp" in e["file"]
                       for e in r["exports"])
        assert sr["rules"]["5cm"]["status"].startswith("not computed")  # no hotspot given
        for f in ("desc-scalp_coords.tsv", "desc-head_mask.nii.gz", "desc-scalpmodel_qc.png",
                  "desc-landmarks_qc.png"):
            assert (folder / f"{base}_{f}").is_file(), (base, f)
        assert 500 < sr["measurements"]["head_circumference_mm"] < 650


def test_every_sample_unit_gets_a_report_and_the_cohort_report_links_them(sample_run):
    """Per-subject HTML + JSON twin for every unit (simulated banner, native section, exact
    coordinates, no external URL); cohort_report.html links every one of them."""
    import re

    out, res, _, _ = sample_run
    assert res.returncode == 0
    truth = pd.read_csv(SAMPLE / "truth.tsv", sep="\t", dtype={"session_id": str},
                        keep_default_na=False)
    cohort = (out / "cohort_report.html").read_text()
    links = set(re.findall(r'href="([^"]+)"', cohort))
    for _, t in truth.iterrows():
        ses = None if t.session_id == "n/a" else t.session_id
        unit = t.participant_id + (f"_{ses}" if ses else "")
        html_path = out / t.participant_id / (ses or "") / f"{unit}_report.html"
        html = html_path.read_text()
        twin = json.loads(html_path.with_suffix(".json").read_text())
        assert html_path.relative_to(out).as_posix() in links, unit
        assert "SIMULATED DATA" in html and twin["simulated"]
        assert "http://" not in html and "https://" not in html and "//cdn" not in html
        tj = json.loads(next((out / t.participant_id / (ses or "") / "func").glob(
            "*_desc-target_coords.json")).read_text())
        for m, tg in tj["targets"].items():
            row = re.search(rf'<tr[^>]*data-method="{m}">(.*?)</tr>', html, re.DOTALL).group(1)
            for ax in ("x", "y", "z"):
                assert re.search(rf'coord-{ax}">([^<]*)<', row).group(1) == f"{tg[ax]:.2f}"
                assert twin["targets"][m][ax] == tg[ax]
        assert twin["native"]["available"] and "native" in twin["figures"], unit
        # the card says left in words (a left target's T1w x can be > 0 in the scanner frame)
        lat = twin["summary"]["laterality"]
        assert lat["passed"] and lat["hemisphere_mni"] == "left", (unit, lat)
        assert lat["target_x_minus_brain_centre_x_mm"] < 0, (unit, lat)
        assert "laterality check</th><td>passed: target in the <strong>LEFT</strong>" in html
        # the laterality check beside the T1w figure, its sagittal panel labelled in words
        assert 'id="laterality-panel"' in html and "<strong>LEFT</strong> (from MNI)" in html
        assert twin["native"]["laterality"]["panel_label"].startswith("LEFT hemisphere (x = ")
        # methods paragraph from this run's configuration; sign-off block at the end
        methods = " ".join(twin["methods_text"]["paragraphs"])
        assert "above 0.5 mm" in methods and "SIMULATED" in methods
        assert html.index('id="methods"') < html.index('id="signoff"')
        assert twin["primary_method"] == twin["summary"]["method"]
        assert "reproducibility" in twin and twin["reproducibility"]["methods"]
    assert "http://" not in cohort and "https://" not in cohort


def _unit_files(out: Path, pid: str) -> dict[str, Path]:
    """A participant's report (HTML + JSON), reproducibility stats and native JSON."""
    pats = ("*_report.html", "*_report.json", "*_desc-reproducibility_stats.json",
            "*_space-T1w_desc-target_coords.json")
    return {str(p.relative_to(out)): p for pat in pats for p in (out / pid).rglob(pat)}


def _comparable(path: Path, out: Path) -> str:
    """The file's text with the generation time and the output folder's own path masked."""
    import re

    text = path.read_text(encoding="utf-8")
    text = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", "<date>", text)
    return text.replace(str(out.resolve()), "<out>").replace(str(out), "<out>")


def test_a_participant_run_alone_gets_the_same_report_and_verdict(sample_run, tmp_path):
    """sub-03 alone (--participant-label 03) and sub-03 among the whole sample: the report,
    the verdict in the stats JSON and the native JSON are identical (dates aside), so adding
    participants to a folder cannot change a signed-off report."""
    full, res, _, _ = sample_run
    assert res.returncode == 0
    alone = tmp_path / "alone"
    r = tmstarget(str(SAMPLE), str(alone), "participant", "--participant-label", "03",
                  "--cores", "1")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    assert not (alone / "sub-01").exists()
    a, b = _unit_files(alone, "sub-03"), _unit_files(full, "sub-03")
    assert set(a) == set(b) and len(a) >= 4, (sorted(a), sorted(b))
    for rel in sorted(a):
        assert _comparable(a[rel], alone) == _comparable(b[rel], full), rel
    # the verdict is in the participant's files, with the words and reasons the report shows
    for rel, p in a.items():
        if rel.endswith("_desc-reproducibility_stats.json"):
            v = json.loads(p.read_text())["verdict"]
            assert {m["verdict"] for m in v["methods"].values()} <= {"reliable", "unreliable"}
            assert all(bool(m["reasons"]) == (m["verdict"] == "unreliable")
                       for m in v["methods"].values())
        if rel.endswith("_report.json"):
            # the native JSON of the same unit (sub-03/ses-N/anat/) and the report show the
            # same warnings (the report adds only header concerns of the files it reads)
            ses = rel.split("/")[1]
            (nat,) = [q for k, q in a.items() if k.startswith(f"sub-03/{ses}/")
                      and k.endswith("_space-T1w_desc-target_coords.json")]
            report_w = [w for w in json.loads(p.read_text())["warnings"]
                        if not w.startswith("qform/sform")]
            assert json.loads(nat.read_text())["warnings"] == report_w, rel
    # targets.tsv: the reliability column is the participant's own verdict, identical alone
    # and with others; the cohort comparison is in its own columns
    cols = ["participant_id", "session_id", "method", "reliability", "reliability_reason"]
    ta = pd.read_csv(alone / "targets.tsv", sep="\t", keep_default_na=False)
    tb = pd.read_csv(full / "targets.tsv", sep="\t", keep_default_na=False)
    tb = tb[tb.participant_id == "sub-03"]
    assert ta[cols].reset_index(drop=True).equals(tb[cols].reset_index(drop=True))
    assert {"cohort_reliability", "cohort_reliability_reason"} <= set(tb.columns)
    html = (full / "cohort_report.html").read_text()
    assert 'id="cohort-comparison"' in html
    # adding a participant to the folder plans sub-01's report, not a rewrite of sub-03's
    plan = tmstarget(str(SAMPLE), str(alone), "participant", "--participant-label", "01", "03",
                     "--cores", "1", "-n")
    assert plan.returncode == 0, plan.stderr[-3000:]
    text = plan.stdout + plan.stderr
    assert "participants: 1 (sub-01)" in text and " report 1" in text, text[-2000:]
