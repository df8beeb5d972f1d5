"""Native (T1w) space step: MNI -> T1w mapping, scalp geometry, coil pose, exports, refusals.

Synthetic fixtures are small ellipsoid heads (2 mm voxels) with a brain ellipsoid inside, stored
RAS, LAS, LPS and oblique; every export is read back with the independent readers in
``tmstarget.navreaders`` (and ``slicerio`` for Slicer).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest
from conftest import storage_affine, tiny_file

from tmstarget import itk
from tmstarget import navreaders as rd
from tmstarget.discover import discover_anat
from tmstarget.errors import InputError
from tmstarget.native import (
    HOTSPOT_MNI_MM,
    build_head_model,
    load_point_transform,
    native_step,
    scalp_geometry,
)
from tmstarget.navigation import ALL_FORMATS
from tmstarget.simulate import rigid_matrix

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data_sample"

LEFT_DLPFC_MNI = np.array([-40.0, 30.0, 35.0])
SHAPE = (97, 113, 97)
RAS_BASE = np.array([[2.0, 0, 0, -96.0], [0, 2.0, 0, -120.0], [0, 0, 2.0, -72.0], [0, 0, 0, 1]])
HEAD_C = np.array([0.0, -10.0, 20.0])
HEAD_AX = np.array([75.0, 95.0, 80.0])
BRAIN_AX = np.array([60.0, 80.0, 65.0])


def affine_for(orient: str) -> np.ndarray:
    return storage_affine(orient, RAS_BASE, SHAPE, oblique_deg=(12.0, -8.0))


def make_subject(folder: Path, orient: str = "RAS", world: np.ndarray | None = None,
                 sform: np.ndarray | None = None) -> dict[str, Path]:
    """Ellipsoid head + brain. ``world`` (4x4) moves the head: T1w world = world @ MNI world."""
    folder.mkdir(parents=True, exist_ok=True)
    w = np.eye(4) if world is None else world
    aff = w @ affine_for(orient)
    ijk = np.indices(SHAPE).reshape(3, -1).T.astype(float)
    mni = ijk @ affine_for(orient)[:3, :3].T + affine_for(orient)[:3, 3]  # content in MNI frame
    r_head = np.sum(((mni - HEAD_C) / HEAD_AX) ** 2, axis=1)
    r_brain = np.sum(((mni - HEAD_C) / BRAIN_AX) ** 2, axis=1)
    data = np.where(r_brain <= 1, 150, np.where(r_head <= 1, 100, 0)).reshape(SHAPE)
    paths = {"t1w": folder / "sub-01_desc-preproc_T1w.nii.gz",
             "mask": folder / "sub-01_desc-brain_mask.nii.gz"}
    for key, arr in (("t1w", data.astype(np.int16)), ("mask", (r_brain <= 1).reshape(SHAPE))):
        img = nb.Nifti1Image(arr.astype(np.uint8 if key == "mask" else np.int16), aff)
        img.set_qform(aff, code=1)
        img.set_sform(aff if (sform is None or key == "mask") else sform, code=1)
        nb.save(img, str(paths[key]))
    # ITK pull maps: from-T1w_to-MNI maps MNI points -> T1w points (= w).
    paths["fwd"] = itk.write_itk_txt_affine(
        folder / "sub-01_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.txt", w)
    paths["inv"] = itk.write_itk_txt_affine(
        folder / "sub-01_from-MNI152NLin2009cAsym_to-T1w_mode-image_xfm.txt", np.linalg.inv(w))
    return paths


def target_json(folder: Path, xyz=LEFT_DLPFC_MNI) -> Path:
    p = folder / "sub-01_task-rest_space-MNI152NLin2009cAsym_desc-target_coords.json"
    p.write_text(json.dumps({
        "participant_id": "sub-01", "session_id": None, "space": "MNI152NLin2009cAsym",
        "targets": {"cluster": {"x": float(xyz[0]), "y": float(xyz[1]), "z": float(xyz[2])},
                    "classic": {"x": float(xyz[0]) + 2, "y": float(xyz[1]), "z": float(xyz[2])}}}))
    return p


def run(tmp: Path, paths: dict[str, Path], tj: Path, **cfg) -> tuple[dict, Path]:
    out = tmp / "out" / "sub-01" / "anat" / "sub-01_task-rest_space-T1w_desc-target_coords.json"
    rec = native_step(tj, paths["t1w"], paths["mask"], paths["fwd"], paths["inv"],
                      {"native": cfg}, out, output_root=tmp / "out",
                      check_mirror=False)  # ellipsoid heads: no anatomy to tell a mirror by
    return rec, out


def read_all_positions(rec: dict, root: Path, exports: list | None = None
                       ) -> dict[str, np.ndarray]:
    """Target positions (RAS mm) of every export, read with independent parsers."""
    import slicerio

    f = {e["key"]: root / e["file"] for e in (rec["exports"] if exports is None else exports)}
    found = {
        "brainsight": rd.read_brainsight(f["brainsight"]).targets[0].matrix[:3, 3],
        "brainsight_v12": rd.read_brainsight(f["brainsight_v12"]).targets[0].matrix[:3, 3],
        "brainsight_cortical": rd.read_brainsight(f["brainsight"]).targets[1].matrix[:3, 3],
        "localite_im": rd.read_localite_instrument_markers(
            f["localite_instrument_markers"]).markers[0].matrix[:3, 3],
        "localite_target": rd.read_localite_entry_target(f["localite_entry_target"])[0][0].target,
        "ant": rd.read_ant_mrk(f["ant_mrk"]).markers[0].matrix[:3, 3],
        "slicer": rd.read_slicer_markups_json(f["slicer_mrk_json"])[0].position,
        "slicerio_fcsv": np.array(slicerio.read_markups_fcsv(str(f["fcsv"]))["markups"][0]
                                  ["controlPoints"][0]["position"]),
        "fcsv": rd.read_fcsv(f["fcsv"]).points[0].position,
        "json": np.array(json.loads(f["json"].read_text())["target_mm"]),
    }
    with open(f["csv"], newline="", encoding="utf-8") as fh:
        row = next(csv.DictReader(fh))
    found["csv"] = np.array([float(row[f"target_{a}"]) for a in "xyz"])
    sph = nb.load(str(f["nifti_sphere"]))
    ijk = np.argwhere(np.asarray(sph.dataobj) > 0).astype(float)
    found["sphere_centroid"] = (ijk @ sph.affine[:3, :3].T + sph.affine[:3, 3]).mean(axis=0)
    return found


# ------------------------------------------------------------------------------------------
# laterality canaries
# ------------------------------------------------------------------------------------------


def test_laterality_canaries_every_orientation_every_format(tmp_path: Path) -> None:
    coil_centres, targets = {}, {}
    for orient in ("RAS", "LAS", "LPS", "oblique"):
        d = tmp_path / orient
        paths = make_subject(d / "anat", orient)
        if orient in ("LAS", "LPS"):
            assert "".join(nb.aff2axcodes(nb.load(str(paths["t1w"])).affine)) == orient
        rec, _ = run(d, paths, target_json(d))
        # Brainsight/Localite/ANT carry the coil pose: their position is the coil centre.
        centre = np.array(rec["coil"]["center_mm"])
        t1 = np.array(rec["targets"]["cluster"]["t1w_mm"])
        assert np.linalg.norm(t1 - LEFT_DLPFC_MNI) < 1e-3  # identity transform
        found = read_all_positions(rec, d / "out")
        for key, pos in found.items():
            want = centre if key in ("brainsight", "brainsight_v12", "localite_im", "ant") else t1
            tol = 0.5 if key != "sphere_centroid" else 0.6
            assert np.linalg.norm(pos - want) < tol, (orient, key, pos, want)
            assert pos[0] < 0, (orient, key, pos)  # left stays left, in every format
        assert centre[0] < t1[0] < 0  # the coil sits lateral to a left target
        assert np.array(rec["coil"]["normal_out"])[0] < 0  # outward normal points left
        coil_centres[orient], targets[orient] = centre, t1
        assert {e["key"] for e in rec["exports"]} == set(ALL_FORMATS)
        assert all((d / "out" / e["file"]).is_file() and e["space"] == "T1w"
                   for e in rec["exports"])
    for orient in ("LAS", "LPS", "oblique"):
        assert np.linalg.norm(targets[orient] - targets["RAS"]) <= 0.5
        # same voxel centres for RAS/LAS/LPS; the oblique grid samples the scalp differently
        tol = 0.5 if orient != "oblique" else 3.0
        assert np.linalg.norm(coil_centres[orient] - coil_centres["RAS"]) <= tol, orient


def ellipsoid_point(el: float, az: float) -> np.ndarray:
    """A point on the phantom's scalp (az 0 = anterior, 90 = left; el from the centre plane)."""
    e, a = math.radians(el), math.radians(az)
    return HEAD_C + HEAD_AX * np.array([-math.cos(e) * math.sin(a), math.cos(e) * math.cos(a),
                                        math.sin(e)])


def phantom_landmarks(path: Path, world: np.ndarray | None = None) -> Path:
    """A user landmarks TSV on the phantom (T1w mm = world @ MNI), with a left motor hotspot."""
    w = np.eye(4) if world is None else world
    pts = {"nasion": (-10, 0), "inion": (-10, 180), "lpa": (-15, 90), "rpa": (-15, -90),
           "vertex": (88, 0), "hotspot": (62, 95)}
    rows = ["participant_id\tname\tx\ty\tz"]
    for k, (el, az) in pts.items():
        q = (w @ np.append(ellipsoid_point(el, az), 1.0))[:3]
        rows.append("sub-01\t" + k + "\t" + "\t".join(f"{v:.3f}" for v in q))
    path.write_text("\n".join(rows) + "\n")
    return path


def test_laterality_canaries_scalp_rules_every_orientation_every_format(tmp_path: Path) -> None:
    """Every scalp-rule target (Beam F3, EEG F3, 5 cm) in every export format, with the T1w
    stored RAS, LAS, LPS and oblique: left stays left, and the same world position results."""
    centres: dict[str, dict[str, np.ndarray]] = {}
    for orient in ("RAS", "LAS", "LPS", "oblique"):
        d = tmp_path / orient
        paths = make_subject(d / "anat", orient)
        lm = phantom_landmarks(d / "landmarks.tsv")
        rec, _ = run(d, paths, target_json(d),
                     scalp_rules={"landmarks_file": str(lm), "max_snap_mm": 40})
        sr = rec["scalp_rules"]
        assert set(sr["rules"]) == {"beam_f3", "eeg_f3", "5cm"}
        centres[orient] = {}
        for m, r in sr["rules"].items():
            assert r["hemisphere"] == "left" and r["laterality_check"]["passed"]
            assert {e["key"] for e in r["exports"]} == set(ALL_FORMATS)
            assert all("SCALP-RULE" in e["how_to_load"] for e in r["exports"])
            centre, cort = np.array(r["coil"]["center_mm"]), np.array(r["cortical_t1w_mm"])
            assert np.linalg.norm(centre - np.array(r["scalp_t1w_mm"])) < 1e-3
            found = read_all_positions(rec, d / "out", r["exports"])
            for key, pos in found.items():
                want = centre if key in ("brainsight", "brainsight_v12", "localite_im",
                                         "ant") else cort
                tol = 0.5 if key != "sphere_centroid" else 0.6
                assert np.linalg.norm(pos - want) < tol, (orient, m, key, pos, want)
                assert pos[0] < 0, (orient, m, key, pos)  # left stays left in every format
            assert centre[0] < cort[0] < 0  # the coil lateral to a left cortical point
            names = {json.loads((d / "out" / e["file"]).read_text())["name"]
                     for e in r["exports"] if e["key"] == "json"}
            assert names and all("scalp rule" in n and "not the connectivity target" in n
                                 for n in names)
            centres[orient][m] = centre
        # the connectivity target's own exports are untouched by the scalp rules
        assert {e["key"] for e in rec["exports"]} == set(ALL_FORMATS)
        assert all("desc-target_" in e["file"] for e in rec["exports"])
    for orient in ("LAS", "LPS", "oblique"):
        tol = 0.5 if orient != "oblique" else 3.0
        for m in centres["RAS"]:
            assert np.linalg.norm(centres[orient][m] - centres["RAS"][m]) <= tol, (orient, m)


def test_scalp_rules_refuse_swapped_ears_and_write_nothing(tmp_path: Path) -> None:
    paths = make_subject(tmp_path / "anat", "LPS")
    lm = phantom_landmarks(tmp_path / "landmarks.tsv")
    txt = lm.read_text().replace("\tlpa\t", "\tTMP\t").replace("\trpa\t", "\tlpa\t")
    lm.write_text(txt.replace("\tTMP\t", "\trpa\t"))
    with pytest.raises(InputError, match="left and right are swapped"):
        run(tmp_path, paths, target_json(tmp_path),
            scalp_rules={"landmarks_file": str(lm), "max_snap_mm": 40})
    assert _nothing_written(tmp_path)


def test_f3_in_the_right_hemisphere_is_refused(tmp_path: Path, monkeypatch) -> None:
    """Second line of defence: landmarks mirrored past the swap check (here by patching it
    out) put F3 on the right; the scalp rules refuse and nothing is written."""
    from tmstarget import scalp

    real = scalp.find_landmarks

    def mirrored(*args, **kwargs):
        lm, warn = real(*args, **kwargs)
        lm["lpa"], lm["rpa"] = lm["rpa"], lm["lpa"]
        return lm, warn

    monkeypatch.setattr(scalp, "find_landmarks", mirrored)
    paths = make_subject(tmp_path / "anat", "RAS")
    lm = phantom_landmarks(tmp_path / "landmarks.tsv")
    with pytest.raises(InputError, match="RIGHT hemisphere"):
        run(tmp_path, paths, target_json(tmp_path),
            scalp_rules={"landmarks_file": str(lm), "max_snap_mm": 40})
    assert _nothing_written(tmp_path)


def test_scalp_rules_follow_a_moved_head(tmp_path: Path) -> None:
    """A head moved by a known rigid map: the scalp-rule points move with it (T1w), and map
    back to the same MNI points."""
    a = rigid_matrix((8.0, -6.0, 10.0), (12.0, -20.0, 25.0))
    recs = {}
    for key, world in (("ref", None), ("moved", a)):
        d = tmp_path / key
        paths = make_subject(d / "anat", "LAS", world=world)
        lm = phantom_landmarks(d / "lm.tsv", world)
        recs[key], _ = run(d, paths, target_json(d),
                           scalp_rules={"landmarks_file": str(lm), "max_snap_mm": 40})
    for m, r in recs["ref"]["scalp_rules"]["rules"].items():
        moved = recs["moved"]["scalp_rules"]["rules"][m]
        want = (a @ np.append(r["scalp_t1w_mm"], 1.0))[:3]
        assert np.linalg.norm(np.array(moved["scalp_t1w_mm"]) - want) < 3.0, m
        assert np.linalg.norm(np.array(moved["cortical_mni_mm"])
                              - np.array(r["cortical_mni_mm"])) < 3.0, m


def test_scalp_geometry_on_a_sphere(tmp_path: Path) -> None:
    """On an ellipsoid the two entries are close, the normal is outward, depths are right."""
    paths = make_subject(tmp_path, "RAS")
    model = build_head_model(paths["t1w"], paths["mask"])
    geo = scalp_geometry(model, LEFT_DLPFC_MNI)
    n = geo["normal_out"]
    assert n @ (geo["entry_normal"] - LEFT_DLPFC_MNI) > 0
    assert geo["angle_between_entries_deg"] < 10
    # analytic scalp-to-brain distance along the ray: both ellipsoid surfaces
    def exit_t(ax):
        d = (LEFT_DLPFC_MNI - HEAD_C) / ax
        u = n / ax
        a, b, c = u @ u, 2 * d @ u, d @ d - 1
        return (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
    assert geo["scalp_to_target_normal_mm"] == pytest.approx(exit_t(HEAD_AX), abs=2.0)
    assert geo["scalp_to_cortex_mm"] == pytest.approx(exit_t(HEAD_AX) - exit_t(BRAIN_AX), abs=2.5)


# ------------------------------------------------------------------------------------------
# known transforms
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["h5", "txt"])
def test_known_rigid_transform(tmp_path: Path, fmt: str) -> None:
    """A head moved by a known rigid map (as in the sample data) gives the expected target."""
    a = rigid_matrix((8.0, -6.0, 10.0), (12.0, -20.0, 25.0))
    paths = make_subject(tmp_path / "anat", "LAS", world=a)
    if fmt == "h5":  # fMRIPrep-style composite: affine + (zero) displacement field
        paths["fwd"] = itk.write_itk_h5_composite(
            tmp_path / "anat" / "fwd.h5", a, warp_bbox_ras=itk.MNI_HEAD_BBOX_RAS,
            center_ras=(0.0, -17.5, 18.5))
    rec, _ = run(tmp_path, paths, target_json(tmp_path))
    want = (a @ np.append(LEFT_DLPFC_MNI, 1.0))[:3]
    got = np.array(rec["targets"]["cluster"]["t1w_mm"])
    assert np.linalg.norm(got - want) <= 1.0
    assert rec["transforms"]["roundtrip_error_mm"] < 0.01
    assert len(rec["transforms"]["mni_to_t1w_points"]["sha256"]) == 64
    assert len(rec["t1w"]["sha256"]) == 64
    # the whole geometry moves with the head: the entry maps back onto the identity case
    ref = make_subject(tmp_path / "ref", "LAS")
    rec0, _ = run(tmp_path / "r0", ref, target_json(tmp_path / "ref"))
    e0 = np.array(rec0["coil"]["center_mm"])
    assert np.linalg.norm((a @ np.append(e0, 1))[:3] - np.array(rec["coil"]["center_mm"])) < 3.0
    for r in rec["reference_targets"].values():
        assert np.linalg.norm(np.array(r["t1w_mm"]) - (a @ np.append(r["mni_mm"], 1))[:3]) < 1e-2


def test_sample_sub02_mni_to_t1w_matches_truth() -> None:
    truth = pd.read_csv(SAMPLE / "truth.tsv", sep="\t")
    t = truth[truth.participant_id == "sub-02"].iloc[0]
    anat, reason = discover_anat(SAMPLE, "02", None)
    assert reason is None and anat is not None
    got = load_point_transform(anat.xfm_mni_to_t1w_points).map([[t.x, t.y, t.z]])[0]
    assert np.linalg.norm(got - [t.t1w_x, t.t1w_y, t.t1w_z]) <= 1.0
    # the opposite-named file is the wrong direction for points (documents the pitfall)
    wrong = load_point_transform(anat.xfm_t1w_to_mni_points).map([[t.x, t.y, t.z]])[0]
    assert np.linalg.norm(wrong - [t.t1w_x, t.t1w_y, t.t1w_z]) > 10.0


# ------------------------------------------------------------------------------------------
# refusals: clear error, nothing written
# ------------------------------------------------------------------------------------------


def _nothing_written(tmp: Path) -> bool:
    d = tmp / "out"
    return not d.exists() or not any(p.is_file() for p in d.rglob("*"))


def test_refuse_qform_sform_disagree(tmp_path: Path) -> None:
    bad = affine_for("RAS").copy()
    bad[0, 3] += 5.0
    paths = make_subject(tmp_path / "anat", "RAS", sform=bad)
    with pytest.raises(InputError, match="qform and sform disagree"):
        run(tmp_path, paths, target_json(tmp_path))
    assert _nothing_written(tmp_path)


def test_refuse_target_outside_head(tmp_path: Path) -> None:
    paths = make_subject(tmp_path / "anat", "RAS")
    with pytest.raises(InputError, match="outside the head|outside the brain|field of view"):
        run(tmp_path, paths, target_json(tmp_path, (-40.0, 30.0, 98.0)))
    assert _nothing_written(tmp_path)


def test_refuse_too_deep(tmp_path: Path) -> None:
    paths = make_subject(tmp_path / "anat", "RAS")
    with pytest.raises(InputError, match="below the scalp"):
        run(tmp_path, paths, target_json(tmp_path, (-5.0, -10.0, 20.0)))
    assert _nothing_written(tmp_path)
    with pytest.raises(InputError, match="max_depth_mm = 10"):
        run(tmp_path, paths, target_json(tmp_path), max_depth_mm=10)
    assert _nothing_written(tmp_path)


def test_refuse_transform_that_does_not_match(tmp_path: Path) -> None:
    paths = make_subject(tmp_path / "anat", "RAS")
    paths["fwd"] = itk.write_itk_txt_affine(tmp_path / "far.txt", rigid_matrix((0, 0, 0),
                                                                               (0, 0, 300)))
    with pytest.raises(InputError):
        run(tmp_path, paths, target_json(tmp_path))
    assert _nothing_written(tmp_path)
    # two files that do not belong together fail the round trip
    paths = make_subject(tmp_path / "anat2", "RAS")
    paths["inv"] = itk.write_itk_txt_affine(tmp_path / "other.txt",
                                            rigid_matrix((0, 0, 20), (5, 0, 0)))
    with pytest.raises(InputError, match="do\\s+not belong together"):
        run(tmp_path, paths, target_json(tmp_path))
    assert _nothing_written(tmp_path)


# ------------------------------------------------------------------------------------------
# record content and discovery
# ------------------------------------------------------------------------------------------


def test_record_content(tmp_path: Path) -> None:
    paths = make_subject(tmp_path / "anat", "RAS")
    _, out = run(tmp_path, paths, target_json(tmp_path), handle_angle_deg=45)
    saved = json.loads(out.read_text())
    assert saved["primary_method"] == "cluster" and saved["space"] == "T1w"
    for m in ("cluster", "classic"):
        t = saved["targets"][m]
        assert {"mni_mm", "t1w_mm", "entry_nearest_mm", "entry_along_normal_mm",
                "angle_between_entries_deg", "normal_out", "scalp_to_cortex_mm"} <= set(t)
    m = np.array(saved["coil"]["matrix"])
    assert np.linalg.det(m[:3, :3]) == pytest.approx(1.0, abs=1e-9)
    h = np.array(saved["coil"]["handle"])
    assert h[1] < 0 and h[0] < 0  # backwards and to the left (left target)
    assert math.degrees(math.acos(abs(h[1]) / np.linalg.norm(h[:2]))) == pytest.approx(45, abs=12)
    assert saved["hotspot"]["mni_mm"] == list(HOTSPOT_MNI_MM)
    assert "not a prescription" in saved["depth_advice"]
    assert set(saved["reference_targets"]) >= {"F3", "BA9", "BA46", "5cm"}
    assert all(e["file"].startswith("sub-01/anat/sub-01_task-rest_space-T1w_desc-target_")
               and e["how_to_load"] for e in saved["exports"])
    assert sum(e.get("primary", False) for e in saved["exports"]) == 1


def test_discover_anat_missing_reports_reason(tmp_path: Path) -> None:
    anat = tmp_path / "sub-01" / "anat"
    anat.mkdir(parents=True)
    tiny_file(anat / "sub-01_desc-preproc_T1w.nii.gz")
    tiny_file(anat / "sub-01_desc-brain_mask.nii.gz")
    tiny_file(anat / "sub-01_space-MNI152NLin2009cAsym_desc-preproc_T1w.nii.gz")  # ignored
    got, reason = discover_anat(tmp_path, "01", None)
    assert got is None and "from-T1w_to-MNI152NLin2009cAsym" in reason
    assert "MNI targets still computed" in reason
    for n in ("from-T1w_to-MNI152NLin2009cAsym", "from-MNI152NLin2009cAsym_to-T1w"):
        (anat / f"sub-01_{n}_mode-image_xfm.h5").touch()
    got, reason = discover_anat(tmp_path, "01", "1")  # session falls back to subject anat/
    assert reason is None and got.t1w.endswith("sub-01_desc-preproc_T1w.nii.gz")


def test_plan_lists_anat_units_and_native_skips(tmp_path: Path) -> None:
    from tmstarget.plan import build_plan

    plan = build_plan({"fmriprep_dir": str(SAMPLE), "output_dir": str(tmp_path / "o"),
                       "task": "rest"})
    assert sorted(plan.anat_units) == [
        "sub-01/anat/sub-01_task-rest", "sub-02/anat/sub-02_task-rest",
        "sub-03/ses-1/anat/sub-03_ses-1_task-rest", "sub-03/ses-2/anat/sub-03_ses-2_task-rest"]
    assert plan.anat_units["sub-03/ses-2/anat/sub-03_ses-2_task-rest"] == (
        "sub-03/ses-2/func/sub-03_ses-2_task-rest")
    assert not plan.native_skipped
    off = build_plan({"fmriprep_dir": str(SAMPLE), "output_dir": str(tmp_path / "o"),
                      "task": "rest", "native": {"enabled": False}})
    assert not off.anat_units and not off.native_skipped and len(off.units) == 4


def test_refuse_zero_xform_code(tmp_path: Path) -> None:
    paths = make_subject(tmp_path / "anat", "LPS")
    img = nb.load(str(paths["t1w"]))
    img = nb.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header)
    img.set_sform(img.affine, code=0)
    nb.save(img, str(paths["t1w"]))
    with pytest.raises(InputError, match="sform_code 0"):
        run(tmp_path, paths, target_json(tmp_path))
    assert _nothing_written(tmp_path)


def test_refuse_mirrored_transform_or_t1w(tmp_path: Path) -> None:
    """A left/right-mirrored T1w+transform (det < 0) and a transform that turns the head
    around (det > 0, but the target lands on the other side of the brain) are both refused."""
    mirror = np.diag([-1.0, 1.0, 1.0, 1.0])
    paths = make_subject(tmp_path / "anat", "RAS", world=mirror)
    with pytest.raises(InputError, match="mirrors the image"):
        run(tmp_path, paths, target_json(tmp_path))
    assert _nothing_written(tmp_path)
    turned = rigid_matrix((0, 0, 180), (0, 0, 0))
    paths = make_subject(tmp_path / "anat2", "RAS")
    paths["fwd"] = itk.write_itk_txt_affine(tmp_path / "turned.txt", turned)
    paths["inv"] = itk.write_itk_txt_affine(tmp_path / "turned_inv.txt", np.linalg.inv(turned))
    with pytest.raises(InputError, match="left hemisphere in MNI space but\\s+lands"):
        run(tmp_path, paths, target_json(tmp_path))
    assert _nothing_written(tmp_path)


def test_laterality_recorded_on_a_good_subject(tmp_path: Path) -> None:
    paths = make_subject(tmp_path / "anat", "LPS", world=rigid_matrix((5, -8, 12), (20, 28, -12)))
    rec, _ = run(tmp_path, paths, target_json(tmp_path))
    lat = rec["laterality_check"]
    assert lat["passed"] and lat["hemisphere_mni"] == "left"
    assert lat["jacobian_determinant"] == pytest.approx(1.0, abs=1e-3)
    assert lat["target_x_minus_brain_centre_x_mm"] < -10


def test_field_of_view_is_checked_for_every_component(tmp_path: Path) -> None:
    """A composite (field, then affine) must check each field as the point reaches it.

    Regression: only the first component was checked. Also pins the nitransforms behaviour the
    margin guards against: a zero displacement field mapped 3 mm of a 10 mm grid from its edge
    moves the point by > 1 mm.
    """
    import warnings

    from tmstarget.itk import write_itk_h5_composite
    from tmstarget.native import FIELD_EDGE_MARGIN_VOXELS, load_point_transform

    warnings.simplefilter("ignore")
    xfm = load_point_transform(write_itk_h5_composite(
        tmp_path / "x.h5", np.eye(4), warp_shape=(21, 21, 21), warp_spacing=10.0))
    field = xfm.xfm.transforms[0]
    assert abs(field.map([[-97.0, 0, 0]])[0, 0] + 97.0) > 1.0  # the upstream inaccuracy
    assert np.allclose(xfm.map([[-60.0, 5, 5]]), [[-60.0, 5, 5]], atol=1e-6)
    for bad in ([-97.0, 0, 0], [0, 0, -100.0 + 10 * FIELD_EDGE_MARGIN_VOXELS - 1]):
        with pytest.raises(InputError, match="edge of the transform's displacement field"):
            xfm.map([bad])
    with pytest.raises(InputError, match="outside the field of view"):
        xfm.map([[0, 0, 130.0]])
    # a second field component, reached only after the first moved the point, is checked too
    from nitransforms.manip import TransformChain

    chain = TransformChain(transforms=[field, field])
    moved = type(xfm)(xfm.path, xfm.sha256, chain)
    assert np.allclose(moved.map([[-60.0, 0, 0]]), [[-60.0, 0, 0]], atol=1e-6)
    from nitransforms.linear import Affine

    shift = np.eye(4)
    shift[0, 3] = 45.0
    moved = type(xfm)(xfm.path, xfm.sha256, TransformChain(transforms=[field, Affine(shift),
                                                                      field]))
    with pytest.raises(InputError, match="component 3 of 3"):
        moved.map([[60.0, 0, 0]])  # inside field 1, pushed to x = 105 before field 3


# ------------------------------------------------------------------------------------------
# the verdict travels with the exports (issue 16)
# ------------------------------------------------------------------------------------------


def _stats(folder: Path, cluster_split_half_mm: float) -> Path:
    """A reproducibility stats JSON without a verdict: the native step judges the numbers."""
    p = folder / "stats.json"
    p.write_text(json.dumps({
        "split_half": {"methods": {"cluster": {"distance_mm": cluster_split_half_mm,
                                               "map_r": 0.6},
                                   "classic": {"distance_mm": 1.0, "map_r": 0.6}}},
        "bootstrap": {"methods": {"cluster": {"radius95_mm": 4.0},
                                  "classic": {"radius95_mm": 4.0}}}}))
    return p


def test_an_unreliable_primary_target_is_marked_in_every_export(tmp_path: Path) -> None:
    import xml.etree.ElementTree as ET

    import slicerio

    paths = make_subject(tmp_path / "anat", "RAS")
    tj = target_json(tmp_path)
    out = tmp_path / "out" / "sub-01" / "anat" / "sub-01_task-rest_space-T1w_desc-target_coords.json"
    qc = tmp_path / "qc.json"  # 10 min retained, quiet: no data-quality warning
    qc.write_text(json.dumps({"retained_volumes": 300, "retained_seconds": 600.0, "runs": [
        {"inputs": [{"path": "run1_bold.nii.gz"}], "n_volumes": 300, "n_censored": 0,
         "fd_mean": 0.1}]}))

    def go(split_half_mm: float) -> dict:
        return native_step(tj, paths["t1w"], paths["mask"], paths["fwd"], paths["inv"],
                           {"native": {}}, out, output_root=tmp_path / "out",
                           check_mirror=False, repro_json=_stats(tmp_path, split_half_mm),
                           qc_path=qc, warn_cfg={})

    # 9.1 mm > the 6.5 mm default: the exported cluster target is unreliable
    rec = go(9.1)
    f = {e["key"]: tmp_path / "out" / e["file"] for e in rec["exports"]}
    marker = out.parent / "sub-01_task-rest_space-T1w_desc-target_UNRELIABLE.txt"
    assert marker.is_file() and "9.1 mm exceeds 6.5 mm" in marker.read_text()
    saved = json.loads(out.read_text())
    assert saved["verdict"]["primary_method"] == "cluster"
    assert saved["verdict"]["primary_verdict"] == saved["verdict"]["status"] == "unreliable"
    assert saved["verdict"]["methods"]["classic"]["verdict"] == "reliable"
    assert any(w.startswith("The cluster target is unreliable") for w in saved["warnings"])
    # Brainsight: the coil pose (first row, as before) and the cortical target (a trajectory
    # target with the coil's orientation), both named and marked
    bs, bs_cortex = rd.read_brainsight(f["brainsight"]).targets
    assert bs.name == "sub-01 cluster coil on scalp UNRELIABLE"
    assert bs_cortex.name == "sub-01 cluster cortical target UNRELIABLE"
    assert np.allclose(bs_cortex.matrix[:3, :3], bs.matrix[:3, :3])
    assert np.allclose(bs_cortex.matrix[:3, 3], rec["targets"]["cluster"]["t1w_mm"], atol=1e-4)
    assert "UNRELIABLE" in rd.read_brainsight(f["brainsight"]).header["Notes"]
    assert rd.read_ant_mrk(f["ant_mrk"]).markers[0].name.endswith("UNRELIABLE")
    # two-entry formats: the cortical target and the scalp entry are separate named entries
    root = ET.parse(f["localite_entry_target"]).getroot()
    desc = {tag: root.find(f".//{tag}/Marker").get("description") for tag in ("Target", "Entry")}
    assert desc == {"Target": "sub-01 cluster cortical target UNRELIABLE",
                    "Entry": "sub-01 cluster coil on scalp UNRELIABLE"}
    _, comments = rd.read_localite_entry_target(f["localite_entry_target"])
    assert any("UNRELIABLE: verdict unreliable (cluster)" in c for c in comments)
    cps = json.loads(f["slicer_mrk_json"].read_text())["markups"][0]["controlPoints"]
    assert [c["label"] for c in cps] == ["sub-01 cluster cortical target UNRELIABLE",
                                         "sub-01 cluster coil on scalp UNRELIABLE"]
    ref = slicerio.read_markups_fcsv(str(f["fcsv"]))["markups"][0]["controlPoints"]
    assert [c["label"] for c in ref] == ["sub-01 cluster cortical target UNRELIABLE",
                                         "sub-01 cluster coil on scalp UNRELIABLE"]
    with open(f["csv"], newline="", encoding="utf-8") as fh:
        row = next(csv.DictReader(fh))
    assert row["status"].startswith("UNRELIABLE") and "coil on scalp" in row["name"]
    assert row["target_label"] == "sub-01 cluster cortical target UNRELIABLE"
    # the positions are unchanged by the labels: left stays left
    for key, pos in read_all_positions(rec, tmp_path / "out").items():
        assert pos[0] < 0, key

    # the same participant with a 3.0 mm split half: reliable, the marker is gone
    rec = go(3.0)
    assert not marker.exists()
    assert not list(out.parent.glob("*_UNRELIABLE.txt")) and not list(
        out.parent.glob("*_WARNINGS.txt"))
    bs, bs_cortex = rd.read_brainsight(f["brainsight"]).targets
    assert (bs.name, bs_cortex.name) == ("sub-01 cluster coil on scalp",
                                         "sub-01 cluster cortical target")
    assert json.loads(out.read_text())["verdict"]["primary_verdict"] == "reliable"


def test_a_warned_target_is_marked_and_not_assessed_without_reproducibility(tmp_path) -> None:
    paths = make_subject(tmp_path / "anat", "RAS")
    out = tmp_path / "out" / "sub-01" / "anat" / "sub-01_task-rest_space-T1w_desc-target_coords.json"
    qc = tmp_path / "qc.json"  # 130 volumes x 2 s = 4.3 min < 5 min
    qc.write_text(json.dumps({"retained_volumes": 130, "retained_seconds": 260.0, "runs": []}))
    rec = native_step(target_json(tmp_path), paths["t1w"], paths["mask"], paths["fwd"],
                      paths["inv"], {"native": {}}, out, output_root=tmp_path / "out",
                      check_mirror=False, qc_path=qc, warn_cfg={})
    assert rec["verdict"]["primary_verdict"] == "not assessed"
    assert len(rec["warnings"]) == 1 and "4.3 min" in rec["warnings"][0]
    marker = out.parent / "sub-01_task-rest_space-T1w_desc-target_WARNINGS.txt"
    assert marker.is_file() and "4.3 min" in marker.read_text()
    f = {e["key"]: tmp_path / "out" / e["file"] for e in rec["exports"]}
    assert rd.read_brainsight(f["brainsight"]).targets[0].name.endswith("WARNINGS")


def test_depth_advice_one_unit_and_exact_rounding():
    """The depth advice speaks of one unit only (percentage points of maximum stimulator output
    added to the resting motor threshold) and its printed numbers multiply out: 1.5 mm deeper
    is 3 x 1.5 = 4.5 %MSO, not '4' (issue 16)."""
    from tmstarget.native import STOKES_PERCENT_PER_MM, _depth_advice, depth_adjustment

    adj = depth_adjustment(14.5, 13.0)
    assert adj["deeper_mm"] == 1.5 and adj["mso_points"] == 4.5
    assert adj["mso_points"] == round(STOKES_PERCENT_PER_MM * adj["deeper_mm"], 1)
    text = _depth_advice(14.5, 13.0)
    assert "3 x 1.5 mm = 4.5 %MSO" in text and "50.0 %MSO -> 54.5 %MSO" in text
    assert "resting motor threshold" in text and "not a percentage of the RMT" in text
    assert "% of stimulator output" not in text and "percentage points relative" not in text
    assert "not a prescription" in text
    # the printed distances, not the unrounded ones, give the difference (14.24 - 12.76)
    adj = depth_adjustment(14.24, 12.76)
    assert (adj["target_mm"], adj["hotspot_mm"], adj["deeper_mm"]) == (14.2, 12.8, 1.4)
    assert "3 x 1.4 mm = 4.2 %MSO" in _depth_advice(14.24, 12.76)
    shallower = _depth_advice(12.0, 16.5)
    assert "4.5 mm shallower" in shallower and "minus 3 x 4.5 mm = 13.5 %MSO" in shallower
    assert depth_adjustment(None, 12.0) is None and "no depth advice" in _depth_advice(None, 1.0)
